"""Training throughput of a CIFAR-100 recipe on synthetic data at full size (32x32, batch 64), in images per second.

Runs ``configs/cifar100/resnet32x4_resnet8x4_kd.yaml`` through the CLI with its data swapped for
``SyntheticImageDataModule`` (the same shapes and class count) and a randomly initialised stand-in teacher, for a few
hundred steps, and times the training steps after a warm-up with a callback (data loading and the optimizer step
included; validation excluded). Prints the device, torch/Lightning versions, threads and precision it ran with.

    python benchmarks/cifar_throughput.py --steps 200 --precision bf16-mixed          # a GPU
    OMP_NUM_THREADS=1 python benchmarks/cifar_throughput.py --steps 20 --threads 1     # a CPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "cifar100" / "resnet32x4_resnet8x4_kd.yaml"


class StepTimer(L.Callback):
    """Wall time of every training step after ``warmup`` steps (synchronised on CUDA)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.start = warmup, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx >= self.warmup:
            self.times.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", default="32-true")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from kd_lightning.cli import build_cli
    from kd_lightning.models import resnet32x4

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        Path("checkpoints/cifar100").mkdir(parents=True)
        save_file(resnet32x4(num_classes=100).state_dict(), "checkpoints/cifar100/resnet32x4.safetensors")
        timer = StepTimer(args.warmup)
        total = args.steps + args.warmup
        cli = build_cli(
            [
                "--config",
                str(CONFIG),
                "--data=kd_lightning.data.SyntheticImageDataModule",
                "--data.init_args.num_classes=100",
                "--data.init_args.image_size=32",
                "--data.init_args.batch_size=64",
                f"--data.init_args.train_size={64 * total}",
                "--data.init_args.num_workers=2",
                "--trainer.max_epochs=1",
                f"--trainer.limit_train_batches={total}",
                "--trainer.limit_val_batches=0",
                f"--trainer.precision={args.precision}",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_checkpointing=false",
                "--trainer.callbacks=[]",
            ],
            run=False,
        )
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    step = statistics.median(timer.times)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; torch {torch.__version__}, lightning {L.__version__}; threads {torch.get_num_threads()}")
    print(
        f"resnet32x4 -> resnet8x4 KD, batch 64, 32x32, precision {args.precision}: median step {step * 1e3:.1f} ms, "
        f"{64 / step:.0f} images/s over {len(timer.times)} steps"
    )


if __name__ == "__main__":
    sys.exit(main())
