"""int8 students of the digits teacher, side by side with it: size on disk, CPU latency and test accuracy.

Per seed, configs/digits/qat_baseline.yaml (the teacher as a fake-quantized int8 copy, fine-tuned with cross-entropy
only) and configs/digits/qad.yaml (the same copy and budget, distilled from the float teacher) run through the CLI in
a scratch directory with the shipped teacher (checkpoints/digits_teacher.safetensors); the ConvertQuantized callback
of each writes its best checkpoint's student as int8 TorchScript. For reference, the copy is also converted without
any training (post-training quantization: activation ranges observed on the training set). Then, in this one process:

- size on disk of each TorchScript file (the float teacher scripted the same way, also with its BatchNorms folded into
  the convolutions as the int8 conversion does; its safetensors file beside it);
- CPU latency at batch 1 on one thread: the median of every call over interleaved rounds (each round times every
  network in turn, so a background load slows them alike);
- test accuracy of the int8 networks themselves (not their fake-quantized forms) and top-1 agreement with the teacher.

    python benchmarks/quantized_students.py               # seeds 0 1 2
    python benchmarks/quantized_students.py --seeds 0     # one seed
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.ao.quantization as tq
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "digits"
TEACHER_WEIGHTS = ROOT / "checkpoints" / "digits_teacher.safetensors"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
RUNS = {"QAT, cross-entropy only": "qat_baseline.yaml", "QAD, KD from the float teacher": "qad.yaml"}


def run_qat(config: str, seed: int, workdir: Path, target: Path) -> Path:
    """Fit ``config`` with ``seed`` inside ``workdir``; copy the int8 TorchScript its callback wrote to ``target``."""
    from kd_lightning import ConvertQuantized
    from kd_lightning.cli import build_cli

    previous = Path.cwd()
    os.chdir(workdir)
    try:
        cli = build_cli(["--config", str(CONFIGS / config), f"--seed_everything={seed}", *QUIET], run=False)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        (convert,) = [callback for callback in cli.trainer.callbacks if isinstance(callback, ConvertQuantized)]
        shutil.copyfile(workdir / convert.path, target)
    finally:
        os.chdir(previous)
    shutil.rmtree(workdir / "runs", ignore_errors=True)
    return target


def digits_split(stage: str) -> tuple[Tensor, Tensor]:
    """The whole training or test split of the digits as one batch."""
    from kd_lightning import DigitsDataModule

    data = DigitsDataModule(batch_size=4096, augment=False, seed=0)
    data.setup(stage)
    loader = data.train_dataloader() if stage == "fit" else data.test_dataloader()
    inputs, labels = zip(*((batch[0], batch[1]) for batch in loader), strict=True)
    return torch.cat(inputs), torch.cat(labels)


def float_teacher() -> nn.Module:
    from kd_lightning.files.weights import load_weights
    from kd_lightning.models import DigitsCNN

    return load_weights(DigitsCNN(num_classes=10, width=32), TEACHER_WEIGHTS).eval()


def folded_teacher() -> nn.Module:
    """The float teacher with each BatchNorm folded into its convolution (``fuse_conv_bn_eval``): the layers the int8
    network runs, in float, to tell int8 arithmetic from the saved BatchNorm passes."""
    teacher = float_teacher()
    for block in (teacher.stem, teacher.layer1, teacher.layer2[1], teacher.layer3[1]):
        block[0], block[1] = fuse_conv_bn_eval(block[0], block[1]), nn.Identity()
    return teacher


def post_training_quantized(target: Path) -> Path:
    """The copy converted without training: activation ranges observed on the training set in eval mode."""
    from kd_lightning.models import DigitsCNN
    from kd_lightning.models.quantized import convert_quantized, quantized_copy, save_quantized

    copy = quantized_copy(DigitsCNN(num_classes=10, width=32), weights=str(TEACHER_WEIGHTS)).eval()
    inputs, _ = digits_split("fit")
    copy.apply(tq.enable_observer)  # the copy's forward observes in training mode only; calibrate in eval mode
    with torch.no_grad():
        copy.dequant(copy.network(copy.quant(inputs)))
    save_quantized(convert_quantized(copy), target)
    return target


def save_script(network: nn.Module, target: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(network), str(target))
    return target


def load_script(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path)).eval()


@torch.no_grad()
def latencies(networks: dict[str, torch.jit.ScriptModule], x: Tensor, rounds: int, calls: int) -> dict[str, float]:
    """Median seconds per call of every network at ``x``, over ``rounds`` interleaved rounds of ``calls`` calls."""
    times: dict[str, list[float]] = {name: [] for name in networks}
    for network in networks.values():
        for _ in range(50):  # warm-up: TorchScript's profiling runs and the allocator
            network(x)
    for _ in range(rounds):
        for name, network in networks.items():
            for _ in range(calls):
                start = time.perf_counter()
                network(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


@torch.no_grad()
def accuracy_and_agreement(
    network: nn.Module, inputs: Tensor, labels: Tensor, reference: Tensor
) -> tuple[float, float]:
    predictions = network(inputs).argmax(1)
    return float((predictions == labels).float().mean()), float((predictions == reference).float().mean())


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved latency rounds")
    parser.add_argument("--calls", type=int, default=100, help="timed calls per network and round")
    args = parser.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    from kd_lightning.models.quantized import int8_runtime

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd_quantized_") as scratch:
        workdir, files = Path(scratch), Path(scratch) / "files"
        shutil.copytree(ROOT / "checkpoints", workdir / "checkpoints")
        files.mkdir()
        runs = {
            label: [run_qat(config, seed, workdir, files / f"{config[:-5]}_seed{seed}.pt") for seed in args.seeds]
            for label, config in RUNS.items()
        }
        torch.set_num_threads(1)
        teacher = float_teacher()
        paths = {
            "float teacher, DigitsCNN(width=32)": [save_script(teacher, files / "teacher_float.pt")],
            "float teacher, BatchNorm folded into the convolutions": [
                save_script(folded_teacher(), files / "folded.pt")
            ],
            "int8 copy, no training (post-training quantization)": [post_training_quantized(files / "ptq.pt")],
            **{f"int8, {label}": paths for label, paths in runs.items()},
        }
        inputs, labels = digits_split("test")
        with torch.no_grad():
            reference = teacher(inputs).argmax(1)
        rows = []
        with int8_runtime():
            first = {name: load_script(seed_paths[0]) for name, seed_paths in paths.items()}
            speed = latencies(first, inputs[:1], args.rounds, args.calls)
            for name, seed_paths in paths.items():
                scores = [accuracy_and_agreement(load_script(p), inputs, labels, reference) for p in seed_paths]
                sizes = {p.stat().st_size for p in seed_paths}
                rows.append((name, max(sizes), speed[name], [a for a, _ in scores], [g for _, g in scores]))

    teacher_size, teacher_speed = rows[0][1], rows[0][2]
    print(
        "\n| network | size on disk (kB; x teacher) | CPU latency, batch 1, 1 thread (µs; x teacher) "
        f"| test accuracy (%), {len(args.seeds)} seeds | top-1 agreement with the float teacher (%) |"
    )
    print("|---|---|---|---|---|")
    for name, size, latency, accuracies, agreements in rows:
        ratio = "" if size == teacher_size else f" ({size / teacher_size:.2f}x)"
        speedup = "" if latency == teacher_speed else f" ({latency / teacher_speed:.2f}x)"
        print(
            f"| {name} | {size / 1000:.1f}{ratio} | {1e6 * latency:.0f}{speedup} | {mean_std(accuracies)} "
            f"| {mean_std(agreements)} |"
        )
    print(
        f"\nSizes are TorchScript files (the teacher's safetensors weights: {TEACHER_WEIGHTS.stat().st_size / 1000:.1f}"
        f" kB); latency is the median of {args.rounds} x {args.calls} interleaved calls per network on one "
        f"{list(inputs.shape[1:])} image; the teacher and the untrained copy do not depend on the seed; test split of "
        f"{len(labels)} images. ({time.perf_counter() - started:.0f} s, torch {torch.__version__}, quantized engine "
        f"x86, {os.cpu_count()} CPU cores)"
    )


if __name__ == "__main__":
    sys.exit(main())
