"""Exact resume: a ``kd-lightning fit`` killed mid-epoch and resumed from its checkpoint ends as if never interrupted.

For every mode the same config runs with the same seed (CPU, ``deterministic: true``, one thread per process):
uninterrupted, then again killed with SIGKILL right after its checkpoint at step 9 (mid-epoch 1; epochs have 6 steps)
-- both in one process, :mod:`resume_helpers` -- and then resumed from that checkpoint by a new
``python -m kd_lightning.cli fit ... --ckpt_path`` process. The killed run's checkpoint must equal the uninterrupted
run's at the same step, and the final checkpoints of the uninterrupted and the resumed run must agree bit for bit:
every weight and buffer (student, peers, adapters, exits, EMA/snapshot teacher, PS-KD targets), the optimizer and
scheduler states, the RNG states. Equal weights and buffers give equal test metrics. A causal language model on token
batches (``configs/text/gpt2_tiny_baseline.yaml``, narrowed) is resumed the same way. ``online_kd`` is also resumed from
its checkpoint after the last batch of epoch 0 (step 6, before validation). The modes run two at a time (two cores).
The unit tests below check the loader and the RNG capture on their own.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import CONFIGS, ROOT
from resume_helpers import checkpoint_callback
from torch.utils.data import Dataset

from kd_lightning.data import DigitsDataModule, ResumableDataLoader
from kd_lightning.modules import _run_state as run_state

pytestmark = pytest.mark.slow  # spawns processes (DDP workers, killed runs, kernels)

KILL_AT_STEP = 9
EPOCH_END_MODE, EPOCH_END_STEP = "online_kd", 6  # a mode with dropout (global RNG) and a scheduler step per epoch
BUDGET = [
    "--trainer.max_epochs=2",
    "--trainer.limit_train_batches=6",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--test_after_fit=false",
]
MODES = {
    "offline_kd": [],
    "online_kd": [],
    "online_dml": [],
    "self_byot": [],
    "self_ema": [],
    # a snapshot after epoch 0, so the resumed epoch 1 is taught by the snapshot saved in the checkpoint
    "self_born_again": ["--model.init_args.teacher.init_args.every_n_epochs=1"],
    # epoch 1 is taught by the predictions of epoch 0 (and those of epoch 1 are stored for an epoch 2)
    "self_pskd": [],
    "kd_at_rkd": [],  # the FitNets regressor is a lazy adapter, built in the dry run
    # a causal LM on token batches (TokenWindowLoader, dropout), narrowed to one layer and short blocks
    "text/gpt2_tiny_baseline": [
        "--model.init_args.network.init_args.num_layers=1",
        "--data.init_args.max_length=32",
        "--data.init_args.batch_size=8",
        "--trainer.deterministic=true",
    ],
}
COMPARED = ("state_dict", "optimizer_states", "lr_schedulers", "kd_lightning")


def _run(command: list[str], run_dir: Path, log: str) -> int:
    """Run ``command`` in ``run_dir`` with one thread and ``tests/`` importable; output into ``run_dir/log``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # the same thread count in every run, and two runs share two cores
    }
    with (run_dir / log).open("w") as output:
        done = subprocess.run(command, cwd=run_dir, env=env, stdout=output, stderr=subprocess.STDOUT, timeout=600)
    return done.returncode


def _run_mode(root: Path, config: str) -> tuple[Path, dict[str, int]]:
    """The runs of ``config`` in ``root/config`` and their return codes: full+killed process, resumed (from step 6)."""
    run_dir = root / config.replace("/", "_")
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(root / "checkpoints")
    path = CONFIGS / (f"{config}.yaml" if "/" in config else f"digits/{config}.yaml")
    fit_args = ["--config", str(path), *BUDGET, *MODES[config]]
    helper = [sys.executable, str(ROOT / "tests" / "resume_helpers.py"), str(KILL_AT_STEP)]
    codes = {"full_and_killed": _run([*helper, *fit_args], run_dir, "full_and_killed.txt")}
    resumes = {"resumed": run_dir / "killed" / f"step={KILL_AT_STEP}.ckpt"}
    if config == EPOCH_END_MODE:
        resumes["resumed_epoch_end"] = run_dir / "full" / f"step={EPOCH_END_STEP}.ckpt"
    for name, checkpoint in resumes.items():
        if checkpoint.exists():
            resume = [sys.executable, "-m", "kd_lightning.cli", "fit", *fit_args, checkpoint_callback(name)]
            codes[name] = _run([*resume, f"--ckpt_path={checkpoint}"], run_dir, f"{name}.txt")
    return run_dir, codes


@pytest.fixture(scope="module")
def mode_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, int]]]:
    """Every mode's runs, two modes at a time, in a directory holding a copy of ``checkpoints/``."""
    root = tmp_path_factory.mktemp("exact_resume")
    shutil.copytree(ROOT / "checkpoints", root / "checkpoints")
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(MODES, pool.map(lambda config: _run_mode(root, config), MODES), strict=True))


def _assert_ran(run_dir: Path, codes: dict[str, int], name: str, expected: int = 0) -> None:
    assert codes.get(name) == expected, (run_dir / f"{name}.txt").read_text()[-4000:]


def _assert_same(expected: Any, actual: Any, path: str) -> None:
    """Recursive bit-exact comparison of checkpoint contents (tensors with ``torch.equal``)."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype, path
        assert expected.shape == actual.shape and torch.equal(expected, actual), f"{path} differs"
    elif isinstance(expected, dict):
        assert expected.keys() == actual.keys(), f"{path}: keys {set(expected) ^ set(actual)}"
        for key in expected:
            _assert_same(expected[key], actual[key], f"{path}/{key}")
    elif isinstance(expected, list | tuple):
        assert len(expected) == len(actual), path
        for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
            _assert_same(left, right, f"{path}/{index}")
    else:
        assert expected == actual, f"{path}: {expected!r} != {actual!r}"


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("config", list(MODES))
def test_fit_killed_mid_epoch_resumes_bit_exactly(mode_runs: dict, config: str) -> None:
    run_dir, codes = mode_runs[config]
    _assert_ran(run_dir, codes, "full_and_killed", expected=-9)
    _assert_ran(run_dir, codes, "resumed")
    killed = _load(run_dir / "killed" / f"step={KILL_AT_STEP}.ckpt")
    assert not (run_dir / "killed" / "final.ckpt").exists()
    loader_state = killed["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (loader_state["epoch"], loader_state["batches"]) == (1, 3)
    same_step = _load(run_dir / "full" / f"step={KILL_AT_STEP}.ckpt")
    expected, actual = _load(run_dir / "full" / "final.ckpt"), _load(run_dir / "resumed" / "final.ckpt")
    assert any(key.startswith("student.") for key in expected["state_dict"])
    for key in COMPARED:
        _assert_same(same_step[key], killed[key], f"step {KILL_AT_STEP}: {key}")
        _assert_same(expected[key], actual[key], key)


def test_fit_resumed_from_the_last_batch_of_an_epoch_is_bit_exact(mode_runs: dict) -> None:
    """Saved after the epoch's last batch (before validation): the loader state points at the next epoch's start."""
    run_dir, codes = mode_runs[EPOCH_END_MODE]
    _assert_ran(run_dir, codes, "resumed_epoch_end")
    saved = _load(run_dir / "full" / f"step={EPOCH_END_STEP}.ckpt")
    loader_state = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (loader_state["epoch"], loader_state["batches"]) == (1, 0)
    expected, actual = _load(run_dir / "full" / "final.ckpt"), _load(run_dir / "resumed_epoch_end" / "final.ckpt")
    for key in COMPARED:
        _assert_same(expected[key], actual[key], key)


# ----------------------------------------------------------------- the loader and the RNG states on their own
class RecordingDataset(Dataset):
    """``range(n)`` as tensors, remembering which indices were read."""

    def __init__(self, n: int = 50) -> None:
        self.n, self.read = n, []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        self.read.append(index)
        return torch.tensor(index)


def _batches(loader: ResumableDataLoader) -> list[list[int]]:
    return [batch.tolist() for batch in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_loader_yields_exactly_the_remaining_batches(num_workers: int) -> None:
    reference = ResumableDataLoader(RecordingDataset(), batch_size=8, shuffle=True, seed=1)
    reference.sampler.set_epoch(1)
    epoch_1 = _batches(reference)
    interrupted = ResumableDataLoader(RecordingDataset(), batch_size=8, shuffle=True, seed=1)
    interrupted.sampler.set_epoch(1)
    iterator = iter(interrupted)
    seen = [next(iterator).tolist() for _ in range(3)]
    state = interrupted.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 3) and seen == epoch_1[:3]

    dataset = RecordingDataset()
    resumed = ResumableDataLoader(dataset, batch_size=8, shuffle=True, seed=1, num_workers=num_workers)
    resumed.load_state_dict(state)
    assert _batches(resumed) == epoch_1[3:]
    assert len(resumed) == len(epoch_1) == 7 and resumed.batch_size == 8
    if num_workers == 0:  # the skipped batches were never loaded
        assert sorted(dataset.read) == sorted(index for batch in epoch_1[3:] for index in batch)
    resumed.sampler.set_epoch(2)
    assert _batches(resumed) != epoch_1  # the next pass is a whole, new epoch
    assert resumed.state_dict()["batches"] == 7


def test_epoch_order_depends_on_seed_and_epoch_only() -> None:
    torch.manual_seed(1)
    first = _batches(ResumableDataLoader(RecordingDataset(), batch_size=8, shuffle=True, seed=5))
    rng = torch.get_rng_state()
    torch.manual_seed(2)
    second = _batches(ResumableDataLoader(RecordingDataset(), batch_size=8, shuffle=True, seed=5))
    assert first == second
    torch.manual_seed(1)
    _batches(ResumableDataLoader(RecordingDataset(), batch_size=8, shuffle=True, seed=5))
    assert torch.equal(torch.get_rng_state(), rng)  # iterating drew nothing from the global RNG
    other_seed = _batches(ResumableDataLoader(RecordingDataset(), batch_size=8, shuffle=True, seed=6))
    assert other_seed != first and sorted(index for batch in other_seed for index in batch) == list(range(50))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_digits_augmentation_is_replayable_per_epoch_and_sample(num_workers: int) -> None:
    data = DigitsDataModule(batch_size=16, augment=True, return_index=True, shuffle_seed=3, num_workers=num_workers)
    data.setup()
    loader = data.train_dataloader()
    loader.sampler.set_epoch(1)
    x, _, index = next(iter(loader))
    train = data.splits["train"]
    assert all(train.sample(int(i), epoch=1)[0].equal(image) for i, image in zip(index, x, strict=True))
    assert any(not train.sample(int(i), epoch=0)[0].equal(image) for i, image in zip(index, x, strict=True))


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    np.random.normal()  # a cached Gaussian in NumPy's state
    torch.save(run_state.rng_states(), tmp_path / "rng.pt")
    expected = torch.rand(3), random.random(), np.random.normal(), np.random.rand()
    run_state.set_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    actual = torch.rand(3), random.random(), np.random.normal(), np.random.rand()
    assert torch.equal(expected[0], actual[0]) and expected[1:] == actual[1:]
