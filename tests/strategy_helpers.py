"""Helpers of ``tests/test_strategies.py``: one tiny module per distillation mode, and callbacks that record each rank.

Importable by spawned DDP processes (``pythonpath = ["tests"]``), so the callbacks pickle by reference. Run as a script,
``python tests/strategy_helpers.py fsdp2 OUT_DIR`` fits ``OfflineDistillation`` under Lightning's
``ModelParallelStrategy`` (FSDP2) with two CPU processes, the runs of ``FSDP2_RUNS`` one after the other: that strategy
re-launches ``sys.argv`` for its second rank, which cannot happen inside pytest.
"""

from __future__ import annotations

import copy
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from helpers import TEACHER_WEIGHTS, fast_trainer_kwargs
from torch import Tensor, nn

from kd_lightning import DigitsCNN, DigitsDataModule, DigitsMLP, DistillTerm, OfflineDistillation
from kd_lightning.losses import FitNetsLoss, KDLoss
from kd_lightning.modules.exits import BYOTExits
from kd_lightning.modules.online import OnlineDistillation
from kd_lightning.modules.self_distillation import SelfDistillation
from kd_lightning.teachers.temporal import EMATeacher, PSKDTeacher, SnapshotTeacher

BATCH_SIZE = 16
EPOCHS = 2  # two epochs: snapshot and PS-KD only teach from the second epoch on
TRAIN_BATCHES = 2


def offline_kd() -> OfflineDistillation:
    """configs/digits/offline_kd.yaml, narrower: Hinton KD from the shipped digits teacher into an MLP."""
    return OfflineDistillation(
        student=DigitsMLP(hidden=(16,)), teacher=DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS
    )


def fitnets() -> OfflineDistillation:
    """configs/digits/fitnets.yaml, narrower: a layer2 hint through a lazy conv regressor built in the dry run."""
    hint = DistillTerm(FitNetsLoss(), weight=100.0, student="layer2", teacher="layer2")
    return OfflineDistillation(
        student=DigitsCNN(width=4), teacher=DigitsCNN(width=32), teacher_weights=TEACHER_WEIGHTS, terms=[hint]
    )


def online_kd() -> OnlineDistillation:
    """configs/digits/online_kd.yaml, narrower: a teacher and a student trained together, the student learns both."""
    peers = {"teacher": DigitsCNN(width=8), "student": DigitsMLP(hidden=(16,))}
    return OnlineDistillation(peers=peers, student="student", terms=[DistillTerm(KDLoss(temperature=4.0))])


def online_dml() -> OnlineDistillation:
    """configs/digits/online_dml.yaml, narrower: three peers that all learn from each other."""
    peers = [DigitsCNN(width=4), DigitsMLP(hidden=(16,)), DigitsMLP(hidden=(8,))]
    return OnlineDistillation(peers=peers, student="peer2", mutual=True, terms=[DistillTerm(KDLoss(temperature=1.0))])


def self_byot() -> SelfDistillation:
    """configs/digits/self_byot.yaml, narrower: exits on layer1 and layer2 (heads built in the dry run)."""
    exits = BYOTExits(["layer1", "layer2"], feature_layer="pool", alpha=0.1, temperature=3.0, hint_weight=1.3e-4)
    return SelfDistillation(DigitsCNN(width=4), exits=exits)


def self_ema() -> SelfDistillation:
    """configs/digits/self_ema.yaml: an EMA of the student teaches it (decay lowered for a four-step run)."""
    return SelfDistillation(DigitsMLP(hidden=(16,)), teacher=EMATeacher(decay=0.5))


def self_born_again() -> SelfDistillation:
    """configs/digits/self_born_again.yaml: a snapshot taken after every epoch teaches the next one."""
    return SelfDistillation(DigitsMLP(hidden=(16,)), teacher=SnapshotTeacher(every_n_epochs=1))


def self_pskd() -> SelfDistillation:
    """configs/digits/self_pskd.yaml: last epoch's per-sample predictions soften the targets (needs indices)."""
    return SelfDistillation(DigitsMLP(hidden=(16,)), teacher=PSKDTeacher(alpha_max=0.8))


MODES: dict[str, Callable[[], L.LightningModule]] = {
    builder.__name__: builder
    for builder in (offline_kd, fitnets, online_kd, online_dml, self_byot, self_ema, self_born_again, self_pskd)
}
"""Every mode, by name: a fresh, tiny module each call."""

TRAINED_BESIDE_STUDENT = {
    # state-dict prefixes of what each mode trains besides ``student.``: they must be synchronised by DDP too
    "fitnets": "objective.terms.",
    "online_kd": "peers.teacher.",
    "online_dml": "peers.",
    "self_byot": "exits.heads.",
}


def datamodule(mode: str) -> DigitsDataModule:
    """The digits data, with sample indices for PS-KD."""
    return DigitsDataModule(batch_size=BATCH_SIZE, return_index=mode == "self_pskd")


def trainer_kwargs(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Tiny CPU budgets (2 epochs of 2 batches, 2 validation batches), no logger, progress bar or checkpoints."""
    budget = dict(max_epochs=EPOCHS, limit_train_batches=TRAIN_BATCHES, num_sanity_val_steps=0)
    return fast_trainer_kwargs(tmp_path, **{**budget, **overrides})


def frozen_teacher(module: nn.Module) -> nn.Module | None:
    """The frozen, trained teacher of ``OfflineDistillation`` (``None`` for modes whose teacher learns or is a copy)."""
    return module.teacher.network if isinstance(module, OfflineDistillation) else None


def clone_state(module: nn.Module) -> dict[str, Any]:
    """A copy of the whole state dict, extra states included (PS-KD's predictions, the snapshot's generation)."""
    return copy.deepcopy(module.state_dict())


def same(first: Any, second: Any) -> bool:
    """Exact equality of (nested dicts of) tensors and plain values."""
    if isinstance(first, Tensor) or isinstance(second, Tensor):
        return isinstance(first, Tensor) and isinstance(second, Tensor) and torch.equal(first, second)
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(same(first[key], second[key]) for key in first)
    return first == second


def ddp_synchronised_names(trainer: L.Trainer) -> list[str]:
    """Names of the parameters DDP's reducer all-reduces (``DistributedDataParallel._build_params_for_reducer``)."""
    ddp = trainer.strategy.model
    names = {id(p): name for name, p in trainer.lightning_module.named_parameters()}
    parameters, _ = ddp._build_params_for_reducer()
    assert len(parameters) == ddp._get_ddp_logging_data()["num_parameter_tensors"]
    return sorted(names[id(p)] for p in parameters)


class RankRecorder(L.Callback):
    """Writes what one rank saw and ended with to ``out_dir/rank{r}.pt`` at the end of the fit.

    Recorded: the process group's backend, every parameter (trainable or not) and the whole state dict, the
    trainable and DDP-synchronised names, the logged ``val/acc`` with this rank's own correct/total count over the last
    validation, the sum of every training batch's inputs (to prove the ranks trained on different shards), the
    training losses, the teacher's training flags and the dtype of the student's outputs in training.
    """

    def __init__(self, out_dir: Path | str) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {"train_inputs": [], "losses": [], "output_dtypes": set()}
        self.correct = self.total = 0
        self._hook = None

    def on_train_start(self, trainer, pl_module):
        distributed = trainer.world_size > 1
        self.record["ddp_names"] = ddp_synchronised_names(trainer) if distributed else None
        self.record["backend"] = torch.distributed.get_backend() if distributed else None
        self._hook = pl_module.student.register_forward_hook(self._output_dtype)

    def _output_dtype(self, module, inputs, output):
        if module.training:
            self.record["output_dtypes"].add(str(output.dtype))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.record["train_inputs"].append(float(batch[0].double().sum()))
        self.record["losses"].append(float(outputs["loss"]))

    def on_validation_epoch_start(self, trainer, pl_module):
        self.correct = self.total = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.correct += int((pl_module(batch[0]).argmax(-1) == batch[1]).sum())
        self.total += len(batch[1])

    def on_fit_end(self, trainer, pl_module):
        self._hook.remove()
        teacher = frozen_teacher(pl_module)
        self.record.update(
            parameters={name: p.detach().clone() for name, p in pl_module.named_parameters()},
            trainable=sorted(name for name, p in pl_module.named_parameters() if p.requires_grad),
            state=clone_state(pl_module),
            val_acc=float(trainer.callback_metrics.get("val/acc", float("nan"))),
            local_correct=self.correct,
            local_total=self.total,
            global_step=trainer.global_step,
            skipped_steps=getattr(pl_module, "skipped_steps", None),
            teacher_training=None if teacher is None else [m.training for m in teacher.modules()],
            output_dtypes=sorted(self.record["output_dtypes"]),
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


class InfiniteOnRankOne(OfflineDistillation):
    """Offline KD whose first loss component is made infinite, by a constant (its gradients stay finite), on the
    second optimizer step of process 1 only: only the reduced decision keeps the processes' weights the same."""

    def compute_losses(self, batch):
        losses = super().compute_losses(batch)
        if self.trainer.training and self.trainer.global_rank == 1 and self.trainer.global_step == 1:
            name = next(iter(losses))
            losses[name] = losses[name] + torch.tensor(float("inf"), device=losses[name].device)
        return losses


# ----------------------------------------------------------------- FSDP2 (ModelParallelStrategy), as a script
class ShardedOfflineDistillation(OfflineDistillation):
    """``OfflineDistillation`` whose student is sharded by FSDP2 (``fully_shard``) over the data-parallel mesh.

    What a user of ``ModelParallelStrategy`` writes: the strategy requires ``configure_model`` to apply the
    parallelism. The frozen teacher is left whole on every rank unless ``shard_teacher`` (a teacher too large for one
    device is the reason to shard it).
    """

    shard_teacher = False

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        if self.shard_teacher:
            fully_shard(self.teacher.network, mesh=mesh)
        fully_shard(self.student, mesh=mesh)


class TeacherShardedOfflineDistillation(ShardedOfflineDistillation):
    shard_teacher = True


FSDP2_RUNS = {
    # prefix of the files a run writes: (module class, sanity validation steps)
    "": (ShardedOfflineDistillation, 0),
    "sanity_": (ShardedOfflineDistillation, 2),  # Lightning's default num_sanity_val_steps
    "sharded_teacher_": (TeacherShardedOfflineDistillation, 0),
}


def fit_fsdp2(out_dir: Path, prefix: str) -> None:
    """Two CPU processes (gloo), FSDP2; each rank writes ``{prefix}rank{r}.pt`` (full tensors).

    A fit that raises writes ``{prefix}error_rank{r}.txt`` instead (the errors looked for are raised by every rank at
    the same hook, so the process group stays usable for the next run).
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import ModelParallelStrategy
    from torch.distributed.tensor import DTensor

    module_class, sanity_steps = FSDP2_RUNS[prefix]
    torch.manual_seed(0)
    module = module_class(
        student=DigitsCNN(width=4),
        teacher=DigitsCNN(width=32),
        teacher_weights=TEACHER_WEIGHTS,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    initial = clone_state(module)
    strategy = ModelParallelStrategy(
        data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False, process_group_backend="gloo"
    )
    checkpoint = ModelCheckpoint(dirpath=out_dir / f"{prefix}checkpoints", save_last=True)
    trainer = L.Trainer(
        **trainer_kwargs(out_dir, devices=2, num_sanity_val_steps=sanity_steps, enable_checkpointing=True),
        strategy=strategy,
        callbacks=[checkpoint],
    )
    try:
        trainer.fit(module, datamodule=datamodule("offline_kd"))
    except Exception as error:  # recorded for the test, which shows it
        import traceback

        message = "".join(traceback.format_exception(error))
        (out_dir / f"{prefix}error_rank{trainer.global_rank}.txt").write_text(message)
        return
    state = {
        key: (value.full_tensor() if isinstance(value, DTensor) else value).detach().clone()
        for key, value in module.state_dict().items()
        if isinstance(value, Tensor)
    }
    record = {
        "state": state,
        "initial": initial,
        "sharded": sorted(name for name, p in module.named_parameters() if isinstance(p, DTensor)),
        "trainable": sorted(name for name, p in module.named_parameters() if p.requires_grad),
        "val_acc": float(trainer.callback_metrics["val/acc"]),
        "global_step": trainer.global_step,
        "teacher_training": [m.training for m in module.teacher.modules()],
        "teacher_requires_grad": [p.requires_grad for p in module.teacher.parameters()],
    }
    torch.save(record, out_dir / f"{prefix}rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "fsdp2":
        raise SystemExit(f"usage: python {sys.argv[0]} fsdp2 OUT_DIR")
    for run in FSDP2_RUNS:
        fit_fsdp2(Path(sys.argv[2]), run)
