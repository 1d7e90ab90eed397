"""Speed and memory of a distillation step: kd_lightning's modules in ``Trainer.fit`` beside hand-written PyTorch loops.

Two pairs, each at batch 64 with AdamW (lr 0.01, weight decay 5e-4) and one torch thread by default:

* digits: DigitsCNN(width 32) -> DigitsMLP(hidden [32]) on the bundled digits (``DigitsDataModule``);
* cifar: resnet32x4 -> resnet8x4 (the CIFAR-100 zoo) on seeded random 32x32 images over 100 classes
  (``SyntheticImageDataModule``).

Rows (ms per step):

* (a) the student alone, hand-written: forward, cross-entropy, backward, ``optimizer.step()``;
* (b) the teacher's inference alone: eval mode, ``no_grad`` forward, on batches already in memory;
* (c) ``OfflineDistillation`` (``0.1 CE + 0.9 KD(T=4)``) in ``Trainer.fit``, ``logger=False`` (``self.log`` still runs);
  on digits also (c+csv), the same with the ``CSVLogger`` the configs use (default ``log_every_n_steps=50``);
* (d) the same KD, hand-written: same models, batch, optimizer, maths, and a plain ``DataLoader`` over the same set;
* (e) a KD step reading cached teacher outputs (``kd_lightning.teachers.cache_store``): a slot, ``cached_kd`` in
  ``benchmarks/_speed_loops.py``, printed "n/a" until it is filled;
* (f) ``Classifier`` (the student alone) in ``Trainer.fit``;
* on digits, Deep Mutual Learning (``OnlineDistillation``, two peers, mutual) and self-distillation from an EMA teacher
  (``SelfDistillation`` + ``EMATeacher``), each as the module in ``Trainer.fit`` and as a hand-written loop, and two
  diagnostic rows: the KD maths in a bare ``LightningModule`` (plain ``DataLoader``), with and without ``self.log``.

How a step is timed (all rows alike): the interval between the ends of two consecutive steps, so one interval holds
everything a step costs (batch fetch and collate, the loop's bookkeeping, forward, loss, backward, optimizer step).
In ``Trainer.fit`` the end of a step is an ``on_train_batch_end`` callback; validation is off
(``limit_val_batches=0``), as are checkpoints, progress bar and model summary. Warm-up steps, building the models
and Lightning's ``setup`` (kd_lightning's dry run) are not timed. The rows run interleaved: every round runs every
row once (in a rotated order), and the table gives the median over rounds of each round's median step time, the
smallest round median, each round's mean step time (epoch boundaries included; median over rounds), and for
Lightning rows the median time between the ``on_train_batch_start`` and ``on_train_batch_end`` hooks. Ratios are
medians over rounds of the ratio within a round (rows of one round ran seconds apart).

Peak memory: separate processes (this script with ``--memory-child``, started through a small launcher process, as
Linux carries ``ru_maxrss`` over fork and exec) run a ``Classifier`` fit and an ``OfflineDistillation`` fit; their
peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) is compared with ``student-only peak + teacher weight bytes``.

Diagnostics for the digits pair (one at a time; they use the CPU-time clock, ``--clock cpu``, unless told otherwise):
``--breakdown`` times every phase of a step (from Lightning's hooks) and every per-step piece of the modules (timed
wrappers of their methods) beside the hand-written loops and a bare ``LightningModule``; ``--ablations`` times row (c)
with one piece of its per-step work removed at a time (``--ablation-teacher mlp``: a teacher as small as the
student, so the Python costs stand out of the compute's noise); ``--profile offline|classifier|dml|ema|bare`` prints
cProfile's view of one fit.

    python benchmarks/speed.py                    # everything (about 7 minutes on 2 CPU cores)
    python benchmarks/speed.py --quick            # a smoke run (about a minute)
    python benchmarks/speed.py --pairs digits     # one pair (--memory-only, --no-memory)
    python benchmarks/speed.py --breakdown        # digits: where a step's time goes, piece by piece
    python benchmarks/speed.py --ablations --ablation-teacher mlp
    python benchmarks/speed.py --profile offline  # digits: cProfile of one fit (--steps steps)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import timeit
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

THREADS_FLAG = "--threads"


def _early_threads(argv: list[str]) -> int:
    """Set torch's thread counts before anything runs (inter-op threads can only be set first)."""
    threads = 1
    for index, value in enumerate(argv):
        if value == THREADS_FLAG and index + 1 < len(argv):
            threads = int(argv[index + 1])
        elif value.startswith(THREADS_FLAG + "="):
            threads = int(value.split("=", 1)[1])
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set (imported into a process that ran parallel work)
        torch.set_num_interop_threads(threads)
    return threads


_early_threads(sys.argv)

import lightning as L  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _speed_loops as loops  # noqa: E402

loops.quiet_lightning()

DIGITS_TARGET, CIFAR_TARGET, CACHE_TARGET, MEMORY_TARGET = 1.20, 1.05, 1.10, 1.05
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"


@dataclass
class Row:
    key: str
    label: str
    run: Callable[[], loops.Sample]
    samples: list[loops.Sample] = field(default_factory=list)
    missing: str | None = None

    def per_round(self, statistic: Callable[[list[float]], float] = statistics.median) -> list[float]:
        return [statistic(sample.cycle) for sample in self.samples]

    def median_ms(self) -> float:
        return statistics.median(self.per_round()) * 1e3


def run_rounds(rows: list[Row], rounds: int, title: str) -> None:
    """Every round runs every row once; the order rotates by one row each round."""
    for index in range(rounds):
        shift = index % len(rows)
        for row in rows[shift:] + rows[:shift]:
            if row.missing is not None:
                continue
            gc.collect()
            try:
                row.samples.append(row.run())
            except loops.NotAvailableError as why:
                row.missing = str(why)
            except Exception as error:  # a broken row is reported in its line; the others still run
                traceback.print_exc()
                row.missing = f"error: {type(error).__name__}: {error}"[:90]
        print(f"  {title}: round {index + 1}/{rounds} done", file=sys.stderr, flush=True)


def print_table(rows: list[Row]) -> None:
    print(f"  {'row':<10} {'what':<62} {'median':>8} {'min':>8} {'mean':>8} {'in-hook':>8}")
    for row in rows:
        if row.missing is not None or not row.samples:
            print(f"  {row.key:<10} {row.label:<62} {row.missing or 'not run'}")
            continue
        median = row.median_ms()
        smallest = min(row.per_round()) * 1e3
        mean = statistics.median(row.per_round(statistics.fmean)) * 1e3
        hooks = [statistics.median(s.in_hook) for s in row.samples if s.in_hook]
        hook = f"{statistics.median(hooks) * 1e3:8.2f}" if hooks else f"{'-':>8}"
        print(f"  {row.key:<10} {row.label:<62} {median:8.2f} {smallest:8.2f} {mean:8.2f} {hook}")
    print(
        "  (ms per step; median/min over rounds of each round's median step; mean: each round's mean step, median "
        "over rounds; in-hook: on_train_batch_start -> on_train_batch_end)"
    )


def paired_ratio(numerator: list[Row], denominator: list[Row]) -> float | None:
    """Median over rounds of sum(numerator rows) / sum(denominator rows), each row's median step in that round."""
    if any(row.missing is not None or not row.samples for row in (*numerator, *denominator)):
        return None
    rounds = min(len(row.samples) for row in (*numerator, *denominator))
    ratios = []
    for index in range(rounds):
        top = sum(statistics.median(row.samples[index].cycle) for row in numerator)
        bottom = sum(statistics.median(row.samples[index].cycle) for row in denominator)
        ratios.append(top / bottom)
    return statistics.median(ratios)


def print_ratio(name: str, value: float | None, target: float | None, note: str = "") -> None:
    if value is None:
        print(f"  {name:<44} n/a{('   ' + note) if note else ''}")
        return
    verdict = "" if target is None else f"target <= {target:.2f}  {'PASS' if value <= target else 'MISS'}"
    print(f"  {name:<44} {value:6.3f}   {verdict:<22} {note}")


# --------------------------------------------------------------------------------------------- header
def print_header(threads: int) -> None:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {platform.platform()}; {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"CPUs: os.cpu_count() {os.cpu_count()}, usable by this process {affinity}; GPU not used (CPU benchmark)")
    print(f"python {platform.python_version()}, torch {torch.__version__}, lightning {L.__version__}")
    print(
        f"threads: torch.get_num_threads() {torch.get_num_threads()}, interop {torch.get_num_interop_threads()} "
        f"(--threads {threads}); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )


def print_cuda_check_cost() -> None:
    """What ``torch.cuda.is_available()`` costs here: ``AdamW.step`` calls it every step (torch >= 2.x)."""
    calls = 200
    cost = min(timeit.repeat(torch.cuda.is_available, number=calls, repeat=3)) / calls * 1e6
    nvml = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK", "unset")
    print(
        f"torch.cuda.is_available(): {cost:.1f} us per call (PYTORCH_NVML_BASED_CUDA_CHECK={nvml}; lightning.fabric "
        f"sets it to 1 at import); AdamW.step checks it every step, in the hand-written loops too"
    )


def flop_ratio(pair: loops.Pair, example: torch.Tensor) -> tuple[int, int, float]:
    teacher, student = loops.forward_flops(pair.teacher(), example), loops.forward_flops(pair.student(), example)
    return teacher, student, teacher / student


# --------------------------------------------------------------------------------------------- the pairs
def step_ratios(
    by: dict[str, Row], pair: str, target: float, flop_ratio: float, extra: list[tuple[str, float, float]]
) -> None:
    """The ratios of both pairs: c/d and f/a against ``target``, c/(a+b), the ``extra`` ones, the cache, the bound."""
    print("  ratios (median over rounds of the ratio within a round):")
    print_ratio("c/d  module KD / hand KD", paired_ratio([by["c"]], [by["d"]]), target)
    print_ratio("c/(a+b)  module KD / (student + teacher)", paired_ratio([by["c"]], [by["a"], by["b"]]), CIFAR_TARGET)
    print_ratio("f/a  Classifier / hand student step", paired_ratio([by["f"]], [by["a"]]), target)
    for label, value, goal in extra:
        print_ratio(label, value, goal)
    cache_ratios(by, pair)
    print("  diagnostics (no target):")
    print_ratio(
        "d/a  hand KD / hand student",
        paired_ratio([by["d"]], [by["a"]]),
        None,
        f"(1 + r/3 = {1 + flop_ratio / 3:.2f}: FLOP bound, REFERENCES.md)",
    )
    print_ratio("d/(a+b)  hand KD / (student + teacher)", paired_ratio([by["d"]], [by["a"], by["b"]]), None)


def cache_ratios(by: dict[str, Row], pair: str) -> None:
    """e/a against its target (the cached KD step against a hand-written student step), e/f beside it, the build."""
    missing = "" if by["e"].missing is None else by["e"].missing
    print_ratio("e/a  cached KD / hand student step", paired_ratio([by["e"]], [by["a"]]), CACHE_TARGET, missing)
    print_ratio("e/f  cached KD / Classifier (both in Trainer.fit)", paired_ratio([by["e"]], [by["f"]]), None, missing)
    build = loops.CACHE_BUILDS.get(pair)
    if build is not None:
        print(f"  teacher cache: built once in {build:.2f} s before the timed steps (not part of any step)")


def digits_section(args: argparse.Namespace) -> None:
    pair = loops.digits_pair(args.warmup, args.steps)
    teacher_flops, student_flops, ratio = flop_ratio(pair, torch.randn(1, 1, 8, 8))
    train = len(pair.train_set())
    print(
        f"\n== digits: DigitsCNN(width 32) -> DigitsMLP(hidden [32]), batch 64, {train} training images "
        f"({-(-train // 64)} batches per epoch), teacher weights: {pair.teacher_source}"
    )
    print(
        f"  forward FLOPs per image: teacher {teacher_flops / 1e6:.2f} M, student {student_flops / 1e3:.1f} k, "
        f"ratio r = {ratio:.0f}; {args.rounds} rounds x {args.steps} timed steps (+{args.warmup} warm-up)"
    )
    differences = loops.maths_differences(pair)
    print(
        "  same maths, module vs hand-written loss on one batch: "
        + ", ".join(f"{name} |diff| {value:.1e}" for name, value in differences.items())
    )
    rows = [
        Row("a", "student-only step, hand-written", lambda: loops.student_only(pair)),
        Row("b", "teacher inference (eval, no_grad, batches in memory)", lambda: loops.teacher_inference(pair)),
        Row("c", "OfflineDistillation in Trainer.fit, logger=False", lambda: loops.module_kd(pair)),
        Row("c+csv", "OfflineDistillation in Trainer.fit, CSVLogger", lambda: loops.module_kd(pair, logger=True)),
        Row("d", "KD, hand-written loop", lambda: loops.hand_kd(pair)),
        Row("e", "cached KD step (kd_lightning.teachers.cache_store)", lambda: loops.cached_kd(pair)),
        Row("f", "Classifier (student alone) in Trainer.fit", lambda: loops.module_classifier(pair)),
        Row("dml", "OnlineDistillation DML, 2 peers, in Trainer.fit", lambda: loops.module_dml(pair)),
        Row("dml-hand", "DML, hand-written loop", lambda: loops.hand_dml(pair)),
        Row("ema", "SelfDistillation + EMATeacher in Trainer.fit", lambda: loops.module_ema(pair)),
        Row("ema-hand", "EMA self-distillation, hand-written loop", lambda: loops.hand_ema(pair)),
        Row("bare", "KD in a bare LightningModule, no self.log", lambda: loops.bare_lightning(pair)),
        Row(
            "bare+log",
            "KD in a bare LightningModule, logs the same 3 keys",
            lambda: loops.bare_lightning(pair, log_keys=True),
        ),
    ]
    run_rounds(rows, args.rounds, "digits")
    print_table(rows)
    by = {row.key: row for row in rows}
    target = DIGITS_TARGET
    extra = [
        ("DML module / hand", paired_ratio([by["dml"]], [by["dml-hand"]]), target),
        ("EMA module / hand", paired_ratio([by["ema"]], [by["ema-hand"]]), target),
    ]
    step_ratios(by, "digits", target, ratio, extra)
    print_ratio("bare/d  Lightning itself, no logging", paired_ratio([by["bare"]], [by["d"]]), None)
    print_ratio("bare+log/bare  3 self.log keys", paired_ratio([by["bare+log"]], [by["bare"]]), None)
    print_ratio("c/bare+log  kd_lightning beyond Lightning", paired_ratio([by["c"]], [by["bare+log"]]), None)
    print_ratio("c+csv/c  CSVLogger", paired_ratio([by["c+csv"]], [by["c"]]), None)
    extra = by["c"].median_ms() - by["d"].median_ms() if not by["c"].missing and not by["d"].missing else None
    if extra is not None:
        print(f"  c - d = {extra:.2f} ms per step; f - a = {by['f'].median_ms() - by['a'].median_ms():.2f} ms")


def cifar_section(args: argparse.Namespace) -> None:
    pair = loops.cifar_pair(args.cifar_warmup, args.cifar_steps)
    teacher_flops, student_flops, ratio = flop_ratio(pair, torch.randn(1, 3, 32, 32))
    print("\n== cifar: resnet32x4 -> resnet8x4 (random weights), batch 64, 32x32 random images, 100 classes")
    print(
        f"  forward FLOPs per image: teacher {teacher_flops / 1e9:.3f} G, student {student_flops / 1e9:.3f} G, "
        f"ratio r = {ratio:.2f} ({'>= 3' if ratio >= 3 else 'BELOW 3'}); {args.cifar_rounds} rounds x "
        f"{args.cifar_steps} timed steps (+{args.cifar_warmup} warm-up)"
    )
    rows = [
        Row("a", "student-only step, hand-written", lambda: loops.student_only(pair)),
        Row("b", "teacher inference (eval, no_grad, batches in memory)", lambda: loops.teacher_inference(pair)),
        Row("c", "OfflineDistillation in Trainer.fit, logger=False", lambda: loops.module_kd(pair)),
        Row("d", "KD, hand-written loop", lambda: loops.hand_kd(pair)),
        Row("e", "cached KD step (kd_lightning.teachers.cache_store)", lambda: loops.cached_kd(pair)),
        Row("f", "Classifier (student alone) in Trainer.fit", lambda: loops.module_classifier(pair)),
    ]
    run_rounds(rows, args.cifar_rounds, "cifar")
    print_table(rows)
    by = {row.key: row for row in rows}
    step_ratios(by, "cifar", CIFAR_TARGET, ratio, [])


# --------------------------------------------------------------------------------------------- memory
def _status_mib(field_name: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MiB; NaN where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def memory_child(spec: str, steps: int) -> None:
    """Run one fit in this process and print its peak RSS as one JSON line.

    ``peak_bytes``: ``getrusage(RUSAGE_SELF).ru_maxrss``, the whole process (imports included). ``fit_growth_mib``:
    the peak RSS of the fit above the RSS when it started (``VmHWM`` reset through ``/proc/self/clear_refs``), NaN
    where the kernel offers neither.
    """
    pair_name, mode = spec.split(":")
    pair = (loops.digits_pair if pair_name == "digits" else loops.cifar_pair)(1, steps)
    if mode == "student":
        module = loops.classifier_module(pair)
    else:
        module = loops.offline_module(pair, **({"teacher_dtype": "bfloat16"} if mode == "kd_bf16" else {}))
    start = _status_mib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        start = float("nan")
    loops.lightning_fit(pair, module)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    growth = _status_mib("VmHWM") - start
    record = {"pair": pair_name, "mode": mode, "peak_bytes": peak_kib * 1024, "fit_growth_mib": growth}
    if not math.isnan(start):
        record["hwm_before_fit_mib"] = start
    print("MEMORY " + json.dumps(record))


def measure_child(spec: str, steps: int, threads: int) -> dict[str, float]:
    # Through a small launcher process: Linux keeps ru_maxrss across fork and exec, so a child forked straight from
    # this (large) process would report at least this process's RSS as its own peak.
    command = [
        sys.executable,
        "-c",
        LAUNCHER,
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        spec,
        "--memory-steps",
        str(steps),
        THREADS_FLAG,
        str(threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("MEMORY ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"memory child {spec} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1][len("MEMORY ") :])


def memory_section(args: argparse.Namespace, pairs: list[str]) -> None:
    mib = 2**20
    print(f"\n== peak memory: RSS of separate processes, {args.memory_repeats} process(es) per cell (median)")
    print("  peak: getrusage ru_maxrss of the whole process (imports included); fit growth: the fit's peak RSS above")
    print("  the RSS when it started. KD peak is compared with student-only peak + the teacher's weight bytes.")
    print(
        f"  {'pair':<7} {'steps':>5} {'student-only':>13} {'KD':>10} {'teacher':>10} {'KD - student':>13} "
        f"{'fit growth: student':>20} {'KD':>8}  KD / (student + teacher)"
    )
    for name in pairs:
        steps = args.memory_steps or (20 if name == "digits" else 3)
        runs: dict[str, list[dict[str, float]]] = {"student": [], "kd": [], "kd_bf16": []}
        for _ in range(args.memory_repeats):
            for mode in runs:  # interleaved
                runs[mode].append(measure_child(f"{name}:{mode}", steps, args.threads))
        student, kd = (statistics.median(r["peak_bytes"] for r in runs[mode]) for mode in ("student", "kd"))
        growth = {mode: statistics.median(r["fit_growth_mib"] for r in runs[mode]) for mode in runs}
        pair = (loops.digits_pair if name == "digits" else loops.cifar_pair)(1, 1)
        teacher = loops.weight_bytes(pair.teacher())
        ratio = kd / (student + teacher)
        lowest = min(r["peak_bytes"] for r in runs["kd"]) / (min(r["peak_bytes"] for r in runs["student"]) + teacher)
        verdict = f"target <= {MEMORY_TARGET:.2f} {'PASS' if ratio <= MEMORY_TARGET else 'MISS'}"
        print(
            f"  {name:<7} {steps:>5} {student / mib:9.1f} MiB {kd / mib:6.1f} MiB {teacher / mib:6.2f} MiB "
            f"{(kd - student) / mib:9.1f} MiB {growth['student']:16.1f} MiB {growth['kd']:4.1f} MiB  "
            f"{ratio:.3f}  {verdict}  (of the smallest peaks: {lowest:.3f})"
        )
        half = statistics.median(r["peak_bytes"] for r in runs["kd_bf16"])
        half_ratio = half / (student + teacher / 2)
        half_growth = statistics.median(r["fit_growth_mib"] for r in runs["kd_bf16"])
        print(
            f"  {name:<7} {'':>5} {'bfloat16 teacher:':>13} {half / mib:6.1f} MiB {teacher / 2 / mib:6.2f} MiB "
            f"{(half - student) / mib:9.1f} MiB {'':>16}     {half_growth:4.1f} MiB  "
            f"{half_ratio:.3f}  target <= {MEMORY_TARGET:.2f} {'PASS' if half_ratio <= MEMORY_TARGET else 'MISS'}"
        )
    print("  (peak RSS varies by tens of MiB between identical processes: the allocator; hence medians and minima)")


# --------------------------------------------------------------------------------------------- profiling
def ablation_section(args: argparse.Namespace) -> None:
    pair = loops.digits_pair(args.warmup, args.steps)
    if args.ablation_teacher == "mlp":  # a teacher as small as the student: the Python costs stand out of the noise
        pair = loops.with_small_teacher(pair)
    variants = loops.ablations(pair)
    rows = [Row(key, label, run) for key, (label, run) in variants.items()]
    teacher = "DigitsCNN(width 32)" if args.ablation_teacher == "cnn" else "DigitsMLP(hidden [32]) as the teacher"
    print(
        f"\n== ablations on digits, {teacher}: row (c) minus one piece of per-step work ({args.rounds} rounds x "
        f"{args.steps} steps, +{args.warmup} warm-up)"
    )
    data = [
        Row("data", "plain DataLoader, iteration only", lambda: loops.data_only(pair, resumable=False)),
        Row("data-res", "ResumableDataLoader, iteration only", lambda: loops.data_only(pair, resumable=True)),
    ]
    run_rounds(rows + data, args.rounds, "ablations")
    print_table(rows + data)
    full = rows[0]
    print(
        "  cost of each piece = full - (full minus it), median over rounds of the paired difference [quartiles] "
        "(ms/step; a piece is resolved only where the quartiles exclude 0):"
    )
    for row in rows[1:] + data[1:]:
        base = data[0] if row in data else full
        top, bottom = (row, base) if row in data else (base, row)
        count = min(len(top.samples), len(bottom.samples))
        if count == 0:
            print(f"  {row.key:<12} n/a  {row.label}")
            continue
        diffs = [
            statistics.median(top.samples[i].cycle) - statistics.median(bottom.samples[i].cycle) for i in range(count)
        ]
        low, _, high = statistics.quantiles(diffs, n=4) if len(diffs) > 1 else (diffs[0],) * 3
        print(
            f"  {row.key:<12} {statistics.median(diffs) * 1e3:7.3f}  [{low * 1e3:6.2f}, {high * 1e3:6.2f}]  {row.label}"
        )


def breakdown_section(args: argparse.Namespace) -> None:
    """Per-phase and per-piece time of one step, for the hand-written loops, a bare LightningModule and the modules."""
    pair = loops.digits_pair(args.warmup, args.steps)

    def bare(log_keys: bool) -> dict[str, float]:
        module = loops.BareKD(pair.student(), pair.teacher(), pair.optimizer(), log_keys)
        return loops.breakdown_fit(pair, module, loader=pair.loader())

    variants: dict[str, Callable[[], dict[str, float]]] = {
        "hand CE": lambda: loops.breakdown_hand_kd(pair, teacher=False),
        "Classifier": lambda: loops.breakdown_fit(pair, loops.classifier_module(pair)),
        "hand KD": lambda: loops.breakdown_hand_kd(pair),
        "bare": lambda: bare(False),
        "bare+log": lambda: bare(True),
        "Offline": lambda: loops.breakdown_fit(pair, loops.offline_module(pair)),
        "DML": lambda: loops.breakdown_fit(pair, loops.dml_module(pair)),
        "EMA": lambda: loops.breakdown_fit(pair, loops.ema_module(pair)),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for index in range(args.rounds):
        shift = index % len(variants)
        names = list(variants)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            runs[name].append(variants[name]())
        print(f"  breakdown: round {index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    pieces = list(dict.fromkeys(piece for results in runs.values() for result in results for piece in result))
    print(
        f"\n== where a digits step goes: microseconds per step (median over {args.rounds} rounds of each run's median "
        f"over {args.steps} steps); phases first, then timed pieces (nested pieces count in their parents)"
    )
    print(f"  {'':<58}" + "".join(f"{name:>11}" for name in variants))
    for piece in pieces:
        cells = []
        for name in variants:
            values = [result[piece] for result in runs[name] if piece in result]
            cells.append(f"{statistics.median(values) * 1e6:11.0f}" if values else f"{'':>11}")
        print(f"  {piece[:58]:<58}" + "".join(cells))


def profile_section(args: argparse.Namespace) -> None:
    import cProfile
    import pstats

    pair = loops.digits_pair(20, args.steps)
    module = {
        "offline": loops.offline_module,
        "classifier": loops.classifier_module,
        "dml": loops.dml_module,
        "ema": loops.ema_module,
    }.get(args.profile)
    if module is None and args.profile != "bare":
        raise SystemExit(f"--profile expects offline, classifier, dml, ema or bare, not {args.profile!r}")

    class Profiled(L.Callback):
        def __init__(self) -> None:
            self.profile, self.count = cProfile.Profile(), 0

        def on_train_batch_start(self, *unused: object) -> None:
            self.count += 1
            if self.count == pair.warmup + 1:
                self.profile.enable()

        def on_train_end(self, *unused: object) -> None:
            self.profile.disable()

    profiled = Profiled()
    if module is None:
        built = loops.BareKD(pair.student(), pair.teacher(), pair.optimizer(), log_keys=True)
        loops.lightning_fit(pair, built, loader=pair.loader(), callbacks=[profiled])
    else:
        loops.lightning_fit(pair, module(pair), callbacks=[profiled])
    print(
        f"\n== cProfile of {args.profile} on digits, {args.steps} steps after {pair.warmup} warm-up (times inflated "
        f"by the profiler; divide by {args.steps} for per step)"
    )
    stats = pstats.Stats(profiled.profile)
    stats.sort_stats("cumulative").print_stats(45)
    stats.sort_stats("tottime").print_stats(30)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(THREADS_FLAG, type=int, default=1, help="torch intra- and inter-op threads (default 1)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default=None,
        help="step clock: wall (perf_counter; default) or cpu (process_time; default of --ablations and --profile)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few rounds and steps (under a minute)")
    parser.add_argument("--pairs", default="digits,cifar", help="comma-separated: digits, cifar")
    parser.add_argument("--rounds", type=int, default=None, help="digits rounds (default 7; quick 2)")
    parser.add_argument("--steps", type=int, default=None, help="digits timed steps per run (default 150; quick 20)")
    parser.add_argument("--warmup", type=int, default=None, help="digits warm-up steps per run (default 10; quick 3)")
    parser.add_argument("--cifar-rounds", type=int, default=None, help="default 3; quick 1")
    parser.add_argument("--cifar-steps", type=int, default=None, help="default 3; quick 1")
    parser.add_argument("--cifar-warmup", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-only", action="store_true", help="only the peak-memory processes")
    parser.add_argument("--memory-repeats", type=int, default=None, help="processes per cell (default 3; quick 1)")
    parser.add_argument("--memory-steps", type=int, default=None, help="steps of a memory fit (digits 20, cifar 3)")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ablations", action="store_true", help="digits: cost of each piece of the module's step")
    parser.add_argument(
        "--ablation-teacher",
        choices=["cnn", "mlp"],
        default="cnn",
        help="teacher of --ablations: the pair's DigitsCNN, or a DigitsMLP as small as the student (less noise)",
    )
    parser.add_argument("--breakdown", action="store_true", help="digits: time of every phase and piece of a step")
    parser.add_argument("--profile", default=None, help="digits: cProfile one fit: offline, classifier, dml, ema, bare")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "rounds": 2 if quick else 7,
        "steps": 20 if quick else 150,
        "warmup": 3 if quick else 10,
        "cifar_rounds": 1 if quick else 3,
        "cifar_steps": 1 if quick else 3,
        "memory_repeats": 1 if quick else 3,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_steps or 3)
        return 0
    clock = args.clock or ("cpu" if args.ablations or args.profile or args.breakdown else "wall")
    loops.set_clock(clock)
    print_header(args.threads)
    source = "time.process_time: CPU time of this process" if clock == "cpu" else "time.perf_counter: wall time"
    print(f"step clock: {clock} ({source})")
    print_cuda_check_cost()
    if args.profile:
        profile_section(args)
        return 0
    if args.ablations:
        ablation_section(args)
        return 0
    if args.breakdown:
        breakdown_section(args)
        return 0
    pairs = [name.strip() for name in args.pairs.split(",") if name.strip()]
    unknown = sorted(set(pairs) - {"digits", "cifar"})
    if unknown:
        raise SystemExit(f"--pairs takes digits and/or cifar, not {unknown}")
    if "digits" in pairs and not args.memory_only:
        digits_section(args)
    if "cifar" in pairs and not args.memory_only:
        cifar_section(args)
    if not args.no_memory:
        memory_section(args, ["digits"] if args.quick else pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
