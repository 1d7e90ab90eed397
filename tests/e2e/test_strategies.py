"""Every mode under the Lightning Trainer's scaling options, on CPU: 2-process DDP (gloo), mixed precision, FSDP2.

DDP: each rank writes what it ended with (``strategy_helpers.RankRecorder``); the main process checks that the ranks
trained on different shards yet hold identical trainable weights (student, adapters, peers, exit heads), that DDP
synchronises exactly the trainable parameters (never a frozen teacher or a temporal teacher's copy), that the frozen
teacher is bit-identical to its file, and that ``val/acc`` is reduced over both ranks' samples. The whole mode matrix
runs with ``ddp_fork`` (same ``DDPStrategy`` and gloo, children forked: about 1 s a fit here instead of about 20 s
for spawned children that import torch and Lightning again) on a pickled copy of each module, what a spawned child
gets; ``ddp_spawn`` itself runs for two modes, and a real ``strategy=ddp`` run goes through the ``kd-lightning``
command in a subprocess.

Precision: ``bf16-mixed`` runs every mode in one process. On CPU Lightning 2.6 does not refuse ``16-mixed``: it warns
and falls back to ``bf16-mixed``, which the tests pin down.

FSDP: Lightning's ``FSDPStrategy`` (FSDP1) refuses a CPU accelerator, and torch's FSDP1 itself needs an accelerator
device (``benchmarks/gpu_fsdp_check.py`` checks it on a GPU). ``ModelParallelStrategy`` (FSDP2, ``fully_shard``)
runs on CPU with gloo: a script fits ``OfflineDistillation`` with a sharded student beside the whole frozen teacher,
with sanity validation, and with the frozen teacher sharded too.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import CONFIGS, ROOT, TEACHER_WEIGHTS
from lightning.pytorch.strategies import FSDPStrategy
from safetensors.torch import load_file
from strategy_helpers import (
    BATCH_SIZE,
    EPOCHS,
    MODES,
    TRAIN_BATCHES,
    TRAINED_BESIDE_STUDENT,
    InfiniteOnRankOne,
    RankRecorder,
    clone_state,
    datamodule,
    frozen_teacher,
    same,
    trainer_kwargs,
)

pytestmark = pytest.mark.slow  # spawns processes (DDP workers, killed runs, kernels)

STEPS = EPOCHS * TRAIN_BATCHES
SGD = functools.partial(torch.optim.SGD, lr=0.1)  # no weight decay or momentum: a weight moves only by its gradient
FP16_ON_CPU = r"AMP with fp16 is not supported on CPU\. Using `precision='bf16-mixed'` instead\."
SPAWNED = ["fitnets", "self_pskd"]  # a lazy adapter built in the spawned child; per-sample state gathered over ranks
TEACHER_PREFIXES = ("teacher.",)  # the frozen teacher (offline) or the temporal teacher's copy (EMA, snapshot)


def build(mode: str) -> L.LightningModule:
    """The mode's tiny module with a fixed initialisation, trained by plain SGD."""
    torch.manual_seed(0)
    module = MODES[mode]()
    module.optimizer_factory = SGD
    return module


def fit(
    mode: str, tmp_path: Path, pickled: bool = False, **trainer_overrides
) -> tuple[L.LightningModule, L.Trainer, dict[str, torch.Tensor]]:
    """Fit a fresh module of ``mode`` with a :class:`RankRecorder`; returns it, the trainer and its initial state.

    ``pickled``: fit a pickled and unpickled copy, what a ``ddp_spawn`` child receives.
    """
    module = build(mode)
    if pickled:
        module = pickle.loads(pickle.dumps(module))
    before = clone_state(module)
    trainer = L.Trainer(**trainer_kwargs(tmp_path, **trainer_overrides), callbacks=[RankRecorder(tmp_path)])
    trainer.fit(module, datamodule=datamodule(mode))
    return module, trainer, before


def read_ranks(tmp_path: Path, world_size: int) -> list[dict]:
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]


def teacher_file_state() -> dict[str, torch.Tensor]:
    return {f"teacher.network.{key}": value for key, value in load_file(TEACHER_WEIGHTS).items()}


def assert_teacher_matches_file(state: dict[str, torch.Tensor]) -> None:
    expected = teacher_file_state()
    teacher = {key: value for key, value in state.items() if key.startswith("teacher.")}
    assert teacher.keys() == expected.keys()
    changed = [key for key in expected if not torch.equal(teacher[key], expected[key])]
    assert not changed, f"the frozen teacher changed: {changed}"


def assert_ranks_agree(mode: str, ranks: list[dict], before: dict[str, torch.Tensor]) -> None:
    """The checks of a 2-process DDP fit; ``before`` is the module's state before the fit."""
    first, second = ranks
    assert first["backend"] == second["backend"] == "gloo"
    assert first["global_step"] == second["global_step"] == STEPS
    assert first["train_inputs"] != second["train_inputs"], "both ranks trained on the same batches"
    assert all(math.isfinite(loss) for rank in ranks for loss in rank["losses"])

    trainable = first["trainable"]
    assert trainable == second["trainable"]
    assert any(name.startswith("student.") for name in trainable)
    beside = TRAINED_BESIDE_STUDENT.get(mode)
    assert beside is None or any(name.startswith(beside) for name in trainable), f"nothing under {beside} is trained"
    assert first["ddp_names"] == second["ddp_names"] == trainable, "DDP must synchronise exactly the trainable weights"
    assert not any(name.startswith(TEACHER_PREFIXES) for name in trainable)

    parameters = first["parameters"]
    assert parameters.keys() == second["parameters"].keys()
    differ = [name for name in parameters if not torch.equal(parameters[name], second["parameters"][name])]
    assert not differ, f"weights differ between the ranks after the fit: {differ}"
    # buffers too (BN statistics, temporal teachers' copies and stored predictions): DDP broadcasts rank 0's buffers
    # at every forward, and the fit ends with a validation pass
    state = first["state"]
    assert state.keys() == second["state"].keys()
    differ = [key for key in state if not same(state[key], second["state"][key])]
    assert not differ, f"state differs between the ranks after the fit: {differ}"
    unchanged = [name for name in trainable if name in before and torch.equal(parameters[name], before[name])]
    assert not unchanged, f"weights the fit did not train: {unchanged}"

    if mode == "self_pskd":  # both ranks' predictions were gathered: more samples than one rank trained on
        assert int(state["teacher._extra_state"]["seen"].sum()) > STEPS * BATCH_SIZE
    if mode == "self_born_again":
        assert state["teacher._extra_state"] == {"generation": EPOCHS}

    if first["teacher_training"] is not None:
        assert_teacher_matches_file(first["state"])
        assert_teacher_matches_file(second["state"])
        assert not any(first["teacher_training"] + second["teacher_training"]), "the teacher left eval mode"

    pooled = (first["local_correct"] + second["local_correct"]) / (first["local_total"] + second["local_total"])
    assert first["local_total"] == second["local_total"] > 0
    assert first["val_acc"] == second["val_acc"] == pytest.approx(pooled, abs=1e-6), "val/acc is not reduced"


# ----------------------------------------------------------------- DDP, two CPU processes
@pytest.mark.parametrize("mode", list(MODES))
def test_ddp_fork_two_processes_agree(mode, tmp_path):
    _, _, before = fit(mode, tmp_path, pickled=True, strategy="ddp_fork", devices=2)
    assert_ranks_agree(mode, read_ranks(tmp_path, 2), before)


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_non_finite_loss_on_one_process_zeroes_the_step_on_every_process(policy, tmp_path):
    torch.manual_seed(0)
    module = InfiniteOnRankOne(
        student=MODES["offline_kd"]().student,
        teacher=MODES["offline_kd"]().teacher.network,
        teacher_weights=TEACHER_WEIGHTS,
        on_nonfinite=policy,
    )
    module.optimizer_factory = SGD
    trainer = L.Trainer(
        **trainer_kwargs(tmp_path, strategy="ddp_fork", devices=2, log_every_n_steps=1),
        callbacks=[RankRecorder(tmp_path)],
    )
    if policy == "stop":  # both processes stop at the same logging step (one alone would leave the other waiting)
        stop = r"non-finite training loss at epoch 0, optimizer step 1, batch 1: ce \(1 step"
        with pytest.raises(Exception, match=stop):
            trainer.fit(module, datamodule=datamodule("offline_kd"))
        return
    trainer.fit(module, datamodule=datamodule("offline_kd"))
    first, second = read_ranks(tmp_path, 2)
    assert first["skipped_steps"] == second["skipped_steps"] == 1
    assert math.isinf(second["losses"][1]) and all(math.isfinite(loss) for loss in first["losses"])
    parameters = first["parameters"]
    differ = [name for name in parameters if not torch.equal(parameters[name], second["parameters"][name])]
    assert not differ, f"the processes' weights parted: {differ}"


@pytest.mark.parametrize("mode", SPAWNED)
def test_ddp_spawn_two_processes_agree(mode, tmp_path):
    module, _, before = fit(mode, tmp_path, strategy="ddp_spawn", devices=2)
    ranks = read_ranks(tmp_path, 2)
    assert_ranks_agree(mode, ranks, before)
    final = module.state_dict()  # Lightning loads rank 0's weights back into the main process's module
    assert all(torch.equal(final[name], ranks[0]["parameters"][name]) for name in ranks[0]["trainable"])


def test_cli_fit_with_real_ddp_in_two_processes(in_project_copy):
    command = [sys.executable, "-m", "kd_lightning.cli", "fit", "--config", str(CONFIGS / "digits/offline_kd.yaml")]
    command += ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.max_epochs=1"]
    command += ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]
    command += ["--trainer.enable_progress_bar=false", "--data.init_args.batch_size=16"]
    env = {**os.environ, "COLUMNS": "120"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output and "distributed_backend=gloo" in output
    assert "kd_lightning report" in result.stdout  # the test after fit ran, on the best checkpoint
    (last,) = in_project_copy.glob("runs/digits/offline_kd/**/last.ckpt")
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 2
    assert any(key.startswith("student.") for key in saved["state_dict"])
    assert not any(key.startswith("teacher.") for key in saved["state_dict"])


# ----------------------------------------------------------------- mixed precision, one process
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("mode", list(MODES))
def test_mixed_precision_fit(mode, precision, tmp_path, one_torch_thread):
    if precision == "16-mixed":
        with pytest.warns(UserWarning, match=FP16_ON_CPU):
            module, trainer, before = fit(mode, tmp_path, precision=precision)
    else:
        module, trainer, before = fit(mode, tmp_path, precision=precision)
    assert trainer.precision == "bf16-mixed"
    (record,) = read_ranks(tmp_path, 1)
    assert record["output_dtypes"] == ["torch.bfloat16"], "the student did not run under bf16 autocast"
    assert len(record["losses"]) == STEPS and all(math.isfinite(loss) for loss in record["losses"])
    trainable = dict(module.named_parameters())
    assert all(trainable[name].dtype == torch.float32 for name in record["trainable"]), "weights must stay float32"
    beside = TRAINED_BESIDE_STUDENT.get(mode)
    assert beside is None or any(name.startswith(beside) for name in record["trainable"])
    unchanged = [name for name in record["trainable"] if name in before and torch.equal(trainable[name], before[name])]
    assert not unchanged, f"weights the fit did not train: {unchanged}"
    assert math.isfinite(record["val_acc"])
    if frozen_teacher(module) is not None:
        assert_teacher_matches_file(module.state_dict())


# ----------------------------------------------------------------- FSDP
@pytest.mark.parametrize("strategy", [lambda: "fsdp", FSDPStrategy], ids=["name", "instance"])
def test_fsdp1_strategy_refuses_the_cpu_accelerator(strategy):
    """Lightning's FSDPStrategy is GPU-only; a subclass slips past this check, then torch's FSDP1 itself raises
    "FSDP needs a non-CPU accelerator device" (torch/distributed/fsdp/_init_utils.py) when it wraps the module."""
    message = r"The strategy `fsdp` requires a GPU accelerator, but received `accelerator='cpu'`"
    with pytest.raises(ValueError, match=message):
        L.Trainer(accelerator="cpu", devices=2, strategy=strategy(), logger=False)


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory) -> Path:
    """One script, two CPU processes under ModelParallelStrategy, every run of ``strategy_helpers.FSDP2_RUNS``."""
    out = tmp_path_factory.mktemp("fsdp2")
    command = [sys.executable, str(ROOT / "tests" / "strategy_helpers.py"), "fsdp2", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=out)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return out


def fsdp2_ranks(out: Path, prefix: str) -> list[dict]:
    """Both ranks' records of one FSDP2 run (an assertion error with rank 0's error when the fit raised)."""
    error = out / f"{prefix}error_rank0.txt"
    if error.is_file():
        raise AssertionError(f"the FSDP2 fit {prefix!r} failed: {error.read_text()}")
    return [torch.load(out / f"{prefix}rank{rank}.pt", weights_only=False) for rank in range(2)]


def assert_fsdp2_contract(out: Path, prefix: str, sharded_prefixes: tuple[str, ...]) -> None:
    """Identical trained student on both ranks, the frozen teacher untouched, a teacher-less full checkpoint."""
    first, second = fsdp2_ranks(out, prefix)
    assert first["global_step"] == second["global_step"] == STEPS
    assert all(name.startswith("student.") for name in first["trainable"]) and first["trainable"]
    assert first["sharded"] == second["sharded"]
    assert {name.split(".")[0] + "." for name in first["sharded"]} == set(sharded_prefixes)
    for key in first["trainable"]:
        assert torch.equal(first["state"][key], second["state"][key]), f"{key} differs between the ranks"
        assert not torch.equal(first["state"][key], first["initial"][key]), f"{key} was not trained"
    for rank in (first, second):
        assert_teacher_matches_file(rank["state"])
        assert not any(rank["teacher_training"]) and not any(rank["teacher_requires_grad"])
    assert first["val_acc"] == second["val_acc"]
    saved = torch.load(out / f"{prefix}checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == STEPS
    assert not any(key.startswith("teacher.") for key in saved["state_dict"])
    assert all(torch.equal(saved["state_dict"][key], first["state"][key]) for key in first["trainable"])


def test_fsdp2_shards_the_student_beside_a_whole_frozen_teacher(fsdp2_run):
    assert_fsdp2_contract(fsdp2_run, "", sharded_prefixes=("student.",))


def test_fsdp2_with_a_sharded_frozen_teacher(fsdp2_run):
    assert_fsdp2_contract(fsdp2_run, "sharded_teacher_", sharded_prefixes=("student.", "teacher."))
