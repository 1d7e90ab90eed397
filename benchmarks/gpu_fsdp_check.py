"""FSDP with a frozen teacher on one GPU: ``OfflineDistillation`` under FSDPStrategy and ModelParallelStrategy.

Not a test (it needs CUDA; ``tests/test_strategies.py`` runs what a CPU can). On CPU, Lightning 2.6 refuses
``strategy="fsdp"`` ("The strategy `fsdp` requires a GPU accelerator") and torch's FSDP1 itself raises "FSDP needs a
non-CPU accelerator device"; FSDP2 (``ModelParallelStrategy``) does run on CPU with gloo and is tested there.
One device is enough to check the contract (two processes cannot share one GPU here): the fit runs, the teacher stays
frozen (no gradient, eval mode, not in the optimizer, bit-identical to its file), the student trains, and the
checkpoint holds the student without the teacher. Prints one row per strategy and exits 1 if any check failed. The
FSDP2 rows (with sanity validation, and with the teacher sharded too) are the fits ``tests/test_strategies.py`` runs
on CPU with two processes.

    python benchmarks/gpu_fsdp_check.py
"""

from __future__ import annotations

import functools
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from safetensors.torch import load_file

from kd_lightning import DigitsCNN, DigitsDataModule, OfflineDistillation

ROOT = Path(__file__).resolve().parents[1]
TEACHER_WEIGHTS = ROOT / "checkpoints" / "digits_teacher.safetensors"
STEPS = 4


class ShardedOfflineDistillation(OfflineDistillation):
    """FSDP2 over the student (ModelParallelStrategy requires ``configure_model``); the teacher stays whole."""

    shard_teacher = False

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        if self.shard_teacher:
            fully_shard(self.teacher, mesh=self.device_mesh["data_parallel"])
        fully_shard(self.student, mesh=self.device_mesh["data_parallel"])


class TeacherShardedOfflineDistillation(ShardedOfflineDistillation):
    shard_teacher = True


class FullState(L.Callback):
    """Keeps the module's full state dict (on the CPU, FSDP shards gathered) at the end of training."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = trainer.strategy.lightning_module_state_dict()
        self.state = {key: (v.full_tensor() if hasattr(v, "full_tensor") else v).cpu() for key, v in state.items()}


def check(
    name: str,
    module_class: type[OfflineDistillation],
    strategy: Callable[[], object],
    sanity: int,
    accelerator: str = "cuda",
) -> list[str]:
    """Fit 4 steps (bf16-mixed) and return the failed checks (empty: all passed)."""
    torch.manual_seed(0)
    module = module_class(
        student=DigitsCNN(width=8),
        teacher=DigitsCNN(width=32),
        teacher_weights=TEACHER_WEIGHTS,
        optimizer=functools.partial(torch.optim.SGD, lr=0.1),
    )
    before = {key: value.clone() for key, value in module.student.state_dict().items()}
    captured = FullState()
    with tempfile.TemporaryDirectory() as folder:
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            strategy=strategy(),
            precision="bf16-mixed",
            max_epochs=2,
            limit_train_batches=STEPS // 2,
            limit_val_batches=2,
            num_sanity_val_steps=sanity,
            logger=False,
            enable_progress_bar=False,
            callbacks=[ModelCheckpoint(dirpath=folder, save_last=True), captured],
            default_root_dir=folder,
        )
        trainer.fit(module, datamodule=DigitsDataModule(batch_size=16))
        saved = torch.load(Path(folder) / "last.ckpt", weights_only=True, map_location="cpu")["state_dict"]
    state = captured.state
    teacher = {f"teacher.{key}": value for key, value in load_file(TEACHER_WEIGHTS).items()}
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    outcomes = {
        f"fit made {STEPS} steps": trainer.global_step == STEPS,
        "teacher has no gradients": not any(p.requires_grad for p in module.teacher.parameters()),
        "teacher in eval mode": not any(m.training for m in module.teacher.modules()),
        "teacher not in the optimizer": not optimized & {id(p) for p in module.teacher.parameters()},
        "teacher bit-identical to its file": all(torch.equal(state[key], value) for key, value in teacher.items()),
        "student trained": any(not torch.equal(state[f"student.{k}"], v.cpu()) for k, v in before.items()),
        "checkpoint without the teacher": not any(key.startswith("teacher.") for key in saved),
        "checkpoint holds the final student": all(torch.equal(saved[k], state[k]) for k in saved if k in state),
        "val/acc logged": "val/acc" in trainer.callback_metrics,
    }
    return [f"{name}: {what}" for what, passed in outcomes.items() if not passed]


FSDP2 = functools.partial(
    ModelParallelStrategy, data_parallel_size=1, tensor_parallel_size=1, save_distributed_checkpoint=False
)
CHECKS = {
    # name: (module class, strategy factory, sanity validation steps)
    "FSDPStrategy (FSDP1)": (OfflineDistillation, FSDPStrategy, 2),
    "ModelParallelStrategy (FSDP2), no sanity validation": (ShardedOfflineDistillation, FSDP2, 0),
    "ModelParallelStrategy (FSDP2), sanity validation": (ShardedOfflineDistillation, FSDP2, 2),
    "ModelParallelStrategy (FSDP2), teacher sharded too": (TeacherShardedOfflineDistillation, FSDP2, 0),
}


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_fsdp_check: no CUDA device; FSDP1 cannot run on CPU (see the module docstring).", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, lightning {L.__version__}\n")
    print("| strategy | outcome |")
    print("|---|---|")
    failed = 0
    for name, (module_class, strategy, sanity) in CHECKS.items():
        try:
            problems = check(name, module_class, strategy, sanity)
        except Exception as error:  # the outcome being tabulated
            traceback.print_exc()
            problems = [f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"]
        failed += bool(problems)
        print(f"| {name} | {'; '.join(problems) if problems else 'all checks passed'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
