"""One prepared check of kd_lightning on a GPU: speed, memory, host syncs and FSDP, in one table and one JSON file.

Sections (``--sections`` picks a subset; each runs inside its own ``try``, so a failure is recorded with its message
and the others still run; the script exits 1 when any section failed):

* ``cifar``: resnet32x4 (teacher: random weights, frozen, eval) -> resnet8x4 (student) at batch 64, 32x32 images,
  100 classes, in four settings: ``fp32``, ``bf16-mixed`` (autocast), ``channels_last`` (fp32, networks and inputs
  in ``torch.channels_last``) and ``compile`` (``nn.Module.compile()`` on student and teacher; the module's own
  ``compile=True`` inside ``Trainer.fit``). Rows per setting: (a) a hand-written student-only step (forward,
  cross-entropy, backward, AdamW step), (b) teacher inference (eval, ``no_grad``), (c) ``OfflineDistillation`` in a
  real ``Trainer.fit`` (``0.1 CE + 0.9 T^2 KL`` at ``T = 4``, AdamW lr 0.01 weight decay 5e-4; no logger,
  checkpoints, progress bar, model summary or validation), (d) the same KD hand-written. Reported: ms per step of
  each, ``c/d`` (module against the hand loop), ``c/(a+b)`` (module against the bound: a student step plus a teacher
  forward) and the images/s of (c).
* ``token_kd``: token-level KD between GPT-2-shaped networks (teacher 12 layers x 768, student 6 x 768, vocabulary
  50,257, random init by ``kd_lightning.models.text.model_from_config``) on random token blocks of 1024 at batch 8:
  ``OfflineDistillation`` with ``ce_weight`` 0.5 and ``ForwardKLLoss`` (chunked, 1024 positions upcast at a time) in
  ``Trainer.fit`` under ``bf16-mixed``. Reported: tokens/s, and the peak of ``torch.cuda.max_memory_allocated`` over
  the fit against the student's and teacher's weight bytes.
* ``cached``: ``OfflineDistillation`` reading the teacher's logits from a ``TeacherCache`` (built when the fit
  starts, outside the timed steps) against (a), the hand-written student-only step, both fed by the same torch
  ``DataLoader`` over the same in-memory images (so both pay the same batch collation and host-to-device copy).
  Reported: ``e/a`` and the cache's build time.
* ``memory``: peak ``torch.cuda.max_memory_allocated`` of a ``Classifier`` fit (the student alone) and of the
  ``OfflineDistillation`` fit on the CIFAR pair: ``(KD peak - student-only peak) / teacher weight bytes`` (1.0 means
  the teacher costs its weights and nothing more). CUDA only.
* ``fsdp``: the frozen-teacher contract under ``FSDPStrategy`` and ``ModelParallelStrategy``, by the checks of
  ``benchmarks/gpu_fsdp_check.py`` (one row per strategy). CUDA only (FSDP1 needs a GPU).
* ``syncs``: host syncs in steady-state training steps of offline KD on the CIFAR pair, on CUDA:
  ``torch.cuda.set_sync_debug_mode("warn")`` is on over the steps between the warm-up and the fit's last step (the
  loggers write at ``log_every_n_steps``, set beyond the run, and at the last step) and the warnings it emits are
  counted (``warnings.catch_warnings(record=True)``, :class:`SyncCounter`): inside each step (``on_train_batch_start``
  to ``on_train_batch_end``, the window ``tests/modules/test_host_syncs.py`` counts host reads in on CPU) and between
  steps (up to the next ``on_train_batch_start``); the hand-written KD loop is counted the same way for reference.
  Only warnings that reach Python's ``warnings`` are counted.

How a step is timed: warm-up steps first (compilation and first-call costs land there), then the device is
synchronised once, the clock read, the timed steps run back to back, the device synchronised once more and the clock
read again: seconds per step = elapsed / steps. No step is synchronised on its own, so the host queues work ahead as it
would in training. Inside ``Trainer.fit`` the measurement points are ``on_train_batch_end`` of the last warm-up step
and of the last timed step (:class:`WindowClock`), so an interval holds everything a step costs in Lightning (hooks,
logging, the optimizer closure). Batches are seeded random tensors already on the device (no loader, no copy) for
every row except ``cached``, which needs a dataset.

``--dry-run`` runs every section at tiny sizes and a few steps (the CIFAR pair at batch 8; the GPT-2 pair of
``configs/text/gpt2_tiny_kd.yaml``: 4 x 256 -> 2 x 128, vocabulary 4,096, blocks of 64 at batch 2), on CPU in well
under a minute with one torch thread; there ``compile`` uses the ``eager`` backend (TorchDynamo only: an inductor build
takes minutes on a CPU) and the CUDA-only sections are skipped with the reason.

    python benchmarks/gpu_check.py                                   # on the GPU: about 5-8 minutes
    python benchmarks/gpu_check.py --sections cifar,syncs --out check.json
    python benchmarks/gpu_check.py --dry-run --device cpu --out /tmp/gpu_check.json
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

import kd_lightning
from kd_lightning import Classifier, DistillTerm, OfflineDistillation, TeacherCache
from kd_lightning.data.base import ReplayableDataset
from kd_lightning.data.synthetic import SyntheticImageDataset
from kd_lightning.losses import ForwardKLLoss, KDLoss

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))  # the sibling scripts: _speed_loops, gpu_fsdp_check
import _speed_loops as loops  # noqa: E402

MARKER = "benchmarks/gpu_check.py"
"""The value of the ``"script"`` key of every JSON file this script writes: such a file may be overwritten."""
SECTIONS = ("cifar", "token_kd", "cached", "memory", "fsdp", "syncs")
BUDGETS_S = {"cifar": 180.0, "token_kd": 75.0, "cached": 40.0, "memory": 30.0, "fsdp": 60.0, "syncs": 30.0}
"""Default seconds per section (about 7 minutes in all), checked before each part of a section (a CIFAR setting, an
FSDP strategy, a sync count): a part due after its section's budget is skipped, a part under way is never stopped."""
SETTINGS = ("fp32", "bf16-mixed", "channels_last", "compile")
MIB = 2**20
SYNC_WARNING = "synchroniz"
"""Part of the message of the warnings ``torch.cuda.set_sync_debug_mode("warn")`` emits."""


class NotApplicableError(Exception):
    """A section or row that does not apply here (its message says why)."""


class OutputRefusedError(Exception):
    """``--out`` names a file this script did not write."""


# --------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """Batch sizes, step counts and model shapes of a run (full on a GPU, tiny for ``--dry-run``)."""

    batch: int
    warmup: int
    steps: int
    data_batches: int
    text: dict[str, int]
    text_batch: int
    text_length: int
    text_warmup: int
    text_steps: int
    chunk_size: int
    memory_steps: int
    sync_first: int
    sync_last: int

    @property
    def total(self) -> int:
        return self.warmup + self.steps


FULL = Sizes(
    batch=64,
    warmup=10,
    steps=50,
    data_batches=8,
    text={
        "vocab_size": 50257,
        "teacher_layers": 12,
        "teacher_hidden": 768,
        "teacher_heads": 12,
        "student_layers": 6,
        "student_hidden": 768,
        "student_heads": 12,
    },
    text_batch=8,
    text_length=1024,
    text_warmup=3,
    text_steps=10,
    chunk_size=1024,
    memory_steps=5,
    sync_first=4,
    sync_last=8,
)
DRY = Sizes(
    batch=8,
    warmup=2,
    steps=3,
    data_batches=2,
    text={
        "vocab_size": 4096,
        "teacher_layers": 4,
        "teacher_hidden": 256,
        "teacher_heads": 4,
        "student_layers": 2,
        "student_hidden": 128,
        "student_heads": 2,
    },
    text_batch=2,
    text_length=64,
    text_warmup=1,
    text_steps=2,
    chunk_size=32,
    memory_steps=3,
    sync_first=2,
    sync_last=3,
)
"""``--dry-run``: the CIFAR pair at batch 8, and the GPT-2 shapes of configs/text/gpt2_tiny_kd.yaml (teacher 4 x 256,
4 heads; student 2 x 128, 2 heads) on blocks of 64 tokens."""


@dataclass(frozen=True)
class Plan:
    """What this run measures and where."""

    device: torch.device
    sizes: Sizes
    dry_run: bool
    compile_backend: str
    budgets: dict[str, float]

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def accelerator(self) -> str:
        return "gpu" if self.cuda else "cpu"


# --------------------------------------------------------------------------------------------- rows and sections
@dataclass
class Row:
    """One line of the table: a measured value (``None`` where there is none) with its unit and a note."""

    check: str
    setting: str
    value: float | None
    unit: str
    note: str = ""


@dataclass
class Section:
    """The rows of one section, its time budget and the failures of its parts."""

    name: str
    budget_s: float
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    start: float = field(default_factory=time.perf_counter)

    def add(self, setting: str, value: float | None, unit: str, note: str = "") -> None:
        self.rows.append(Row(self.name, setting, value, unit, note))

    def over_budget(self) -> bool:
        return time.perf_counter() - self.start > self.budget_s

    def attempt(self, setting: str, run: Callable[[], None]) -> None:
        """Run one part of the section (a setting, a strategy): a failure is recorded as a row and in :attr:`errors`
        and the section goes on; a part due after the budget is spent is skipped."""
        if self.over_budget():
            self.add(setting, None, "", f"skipped: the section's {self.budget_s:g} s budget is spent")
            return
        try:
            run()
        except NotApplicableError as why:
            self.add(setting, None, "", f"skipped: {why}")
        except Exception as error:  # the outcome being tabulated
            traceback.print_exc()
            message = describe(error)
            self.errors.append(f"{setting}: {message}")
            self.add(setting, None, "", f"failed: {message}")


def describe(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 300 characters)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


# --------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step: Callable[[int], None], warmup: int, steps: int, device: torch.device) -> float:
    """Run ``step(i)`` ``warmup + steps`` times; seconds per step over the last ``steps`` (one sync at each end)."""
    for index in range(warmup):
        step(index)
    synchronize(device)
    start = time.perf_counter()
    for index in range(warmup, warmup + steps):
        step(index)
    synchronize(device)
    return (time.perf_counter() - start) / steps


class WindowClock(L.Callback):
    """Seconds per training step in ``Trainer.fit`` over the steps after ``warmup`` (``warmup >= 1``).

    The device is synchronised and the clock read at ``on_train_batch_end`` of step ``warmup`` and of step
    ``warmup + steps`` only.
    """

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = max(warmup, 1), steps, device
        self.ended, self.start = 0, 0.0
        self.seconds: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.ended += 1
        if self.ended == self.warmup:
            synchronize(self.device)
            self.start = time.perf_counter()
        elif self.ended == self.warmup + self.steps:
            synchronize(self.device)
            self.seconds = (time.perf_counter() - self.start) / self.steps


class DeviceBatches:
    """Batches already on the device, served in turn for ``length`` batches (one epoch): a loader with no cost."""

    def __init__(self, batches: Sequence[Any], length: int) -> None:
        self.batches, self.length = list(batches), length

    def __iter__(self) -> Iterator[Any]:
        return (self.batches[index % len(self.batches)] for index in range(self.length))

    def __len__(self) -> int:
        return self.length


def trainer(plan: Plan, max_steps: int, root: str, callbacks: Sequence[L.Callback], **overrides: Any) -> L.Trainer:
    """The Trainer of every fit: one device, no logger, checkpoints, progress bar, model summary or validation."""
    kwargs: dict[str, Any] = {
        "accelerator": plan.accelerator,
        "devices": 1,
        "max_steps": max_steps,
        "logger": False,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "default_root_dir": root,
        "callbacks": list(callbacks),
    }
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def timed_fit(
    plan: Plan, module: L.LightningModule, loader: Any, warmup: int, steps: int, precision: str = "32-true"
) -> float:
    """Seconds per step of ``module`` in ``Trainer.fit`` on ``loader`` (:class:`WindowClock`).

    With :class:`DeviceBatches` the module is moved to the device first: kd_lightning's checks before the first step
    (the dry run in ``setup``) run on the first batch before Lightning moves the module, so module and batch must
    already share a device. A host loader's batches are moved by Lightning as usual.
    """
    clock = WindowClock(warmup, steps, plan.device)
    if isinstance(loader, DeviceBatches):
        module.to(plan.device)
    with tempfile.TemporaryDirectory() as root:
        fit = trainer(plan, clock.warmup + steps, root, [clock], precision=precision)
        fit.fit(module, train_dataloaders=loader)
    if clock.seconds is None:
        raise RuntimeError(f"expected {clock.warmup + steps} training steps but the fit ran {clock.ended}")
    return clock.seconds


def free_memory(plan: Plan) -> None:
    gc.collect()
    if plan.cuda:
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- the CIFAR pair
def cifar_pair(plan: Plan) -> loops.Pair:
    """resnet32x4 -> resnet8x4 over 100 classes (seeded builders of ``benchmarks/_speed_loops.py``)."""
    sizes = plan.sizes
    pair = loops.cifar_pair(sizes.warmup, sizes.steps)
    pair.batch_size = sizes.batch
    return pair


def image_batches(plan: Plan, channels_last: bool = False) -> list[tuple[Tensor, Tensor]]:
    """``data_batches`` seeded batches of 32x32 standard-normal images and labels over 100 classes, on the device."""
    generator = torch.Generator().manual_seed(0)
    shape = (plan.sizes.data_batches, plan.sizes.batch)
    images = torch.randn(*shape, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 100, shape, generator=generator)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return [
        (x.to(plan.device).contiguous(memory_format=memory_format), y.to(plan.device))
        for x, y in zip(images, labels, strict=True)
    ]


def kd_module(pair: loops.Pair, **options: Any) -> OfflineDistillation:
    """Row (c)'s module: ``0.1 CE + 0.9 KD(T=4)`` with the pair's AdamW (random teacher weights, so
    ``allow_untrained_teacher``); ``options`` such as ``channels_last``, ``compile``, ``teacher_cache``."""
    return OfflineDistillation(
        student=pair.student(),
        teacher=pair.teacher(),
        terms=[DistillTerm(KDLoss(temperature=loops.KD_TEMPERATURE), weight=loops.KD_WEIGHT)],
        ce_weight=loops.CE_WEIGHT,
        num_classes=pair.num_classes,
        optimizer=pair.optimizer(),
        allow_untrained_teacher=True,
        **options,
    )


def prepared(network: nn.Module, plan: Plan, setting: str) -> nn.Module:
    """The network on the device in the setting's memory format, compiled in place for ``compile``."""
    network = network.to(plan.device)
    if setting == "channels_last":
        network = network.to(memory_format=torch.channels_last)
    if setting == "compile":
        network.compile(backend=plan.compile_backend)
    return network


def autocast(plan: Plan, setting: str) -> contextlib.AbstractContextManager:
    if setting == "bf16-mixed":
        return torch.autocast(plan.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def hand_student_step(pair: loops.Pair, plan: Plan, setting: str, batches: Sequence[Any]) -> float:
    """(a) Seconds per hand-written student step: forward, cross-entropy, backward, AdamW step."""
    student = prepared(pair.student().train(), plan, setting)
    optimizer = pair.optimizer()(student.parameters())

    def step(index: int) -> None:
        x, y = batches[index % len(batches)]
        with autocast(plan, setting):
            loss = F.cross_entropy(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return seconds_per_step(step, pair.warmup, pair.steps, plan.device)


def teacher_step(pair: loops.Pair, plan: Plan, setting: str, batches: Sequence[Any]) -> float:
    """(b) Seconds per teacher forward pass (eval mode, ``no_grad``)."""
    teacher = prepared(pair.teacher(), plan, setting)

    def step(index: int) -> None:
        with torch.no_grad(), autocast(plan, setting):
            teacher(batches[index % len(batches)][0])

    return seconds_per_step(step, pair.warmup, pair.steps, plan.device)


def hand_kd_step(pair: loops.Pair, plan: Plan, setting: str, batches: Sequence[Any]) -> float:
    """(d) Seconds per hand-written KD step: ``0.1 CE + 0.9 T^2 KL`` at ``T = 4`` (``_speed_loops.kd_objective``)."""
    student = prepared(pair.student().train(), plan, setting)
    teacher = prepared(pair.teacher(), plan, setting)
    optimizer = pair.optimizer()(student.parameters())

    def step(index: int) -> None:
        x, y = batches[index % len(batches)]
        with autocast(plan, setting):
            logits = student(x)
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = loops.kd_objective(logits, teacher_logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return seconds_per_step(step, pair.warmup, pair.steps, plan.device)


def module_kd_step(pair: loops.Pair, plan: Plan, setting: str, batches: Sequence[Any]) -> float:
    """(c) Seconds per ``OfflineDistillation`` step in ``Trainer.fit``.

    ``channels_last`` and ``compile`` are the module's own options; with a compile backend other than inductor (the
    dry run's ``eager``) the networks are compiled with it first, and the module leaves compiled networks as they are.
    """
    module = kd_module(pair, channels_last=setting == "channels_last", compile=setting == "compile")
    if setting == "compile" and plan.compile_backend != "inductor":
        for network in module.networks().values():
            network.compile(backend=plan.compile_backend)
    precision = "bf16-mixed" if setting == "bf16-mixed" else "32-true"
    return timed_fit(plan, module, DeviceBatches(batches, pair.total), pair.warmup, pair.steps, precision)


def check_compile_available() -> None:
    """Raise :class:`NotApplicableError` where ``torch.compile`` cannot run (no TorchDynamo for this Python)."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception as error:
        raise NotApplicableError(f"torch.compile is unavailable here ({describe(error)})") from error
    if sys.platform == "win32":
        raise NotApplicableError("torch.compile's inductor backend is not supported on Windows")


def cifar_setting(section: Section, pair: loops.Pair, plan: Plan, setting: str) -> None:
    """Rows (a)-(d) of one setting, their ratios and the images/s of (c) (the module's fit runs last)."""
    if setting == "compile":
        check_compile_available()
    batches = image_batches(plan, channels_last=setting == "channels_last")
    a = hand_student_step(pair, plan, setting, batches)
    b = teacher_step(pair, plan, setting, batches)
    d = hand_kd_step(pair, plan, setting, batches)
    c = module_kd_step(pair, plan, setting, batches)
    note = f", compile backend {plan.compile_backend}" if setting == "compile" else ""
    section.add(setting, a * 1e3, "ms/step", "(a) hand-written student-only step")
    section.add(setting, b * 1e3, "ms/step", "(b) teacher inference (eval, no_grad)")
    section.add(setting, c * 1e3, "ms/step", "(c) OfflineDistillation in Trainer.fit")
    section.add(setting, d * 1e3, "ms/step", "(d) hand-written KD step")
    section.add(setting, c / d, "ratio", "c/d: module / hand-written KD loop")
    section.add(setting, c / (a + b), "ratio", "c/(a+b): module / bound (student step + teacher forward)")
    section.add(setting, pair.batch_size / c, "images/s", f"(c) at batch {pair.batch_size}{note}")


def section_cifar(section: Section, plan: Plan) -> None:
    """Every setting in turn (``compile`` last: the slowest to warm up, the first the budget cuts)."""
    pair = cifar_pair(plan)
    for setting in SETTINGS:
        section.attempt(setting, functools.partial(cifar_setting, section, pair, plan, setting))
        free_memory(plan)


# --------------------------------------------------------------------------------------------- token-level KD
def gpt2_pair(plan: Plan) -> tuple[nn.Module, nn.Module]:
    """(student, teacher): GPT-2 causal LMs of the run's shapes, randomly initialised (seeded)."""
    from kd_lightning.models.text import model_from_config

    text = plan.sizes.text

    def gpt2(role: str, seed: int) -> nn.Module:
        return model_from_config(
            "gpt2",
            "causal_lm",
            vocab_size=text["vocab_size"],
            hidden_size=text[f"{role}_hidden"],
            num_layers=text[f"{role}_layers"],
            num_heads=text[f"{role}_heads"],
            max_positions=plan.sizes.text_length,
            seed=seed,
        )

    return gpt2("student", 1), gpt2("teacher", 0)


def token_batches(plan: Plan, count: int = 4) -> list[dict[str, Tensor]]:
    """Random fixed-length token blocks on the device: ``{input_ids, labels}`` (labels = inputs: causal LM; no
    ``attention_mask``, as ``TokenCollator`` gives for blocks of one length)."""
    generator = torch.Generator().manual_seed(0)
    shape = (count, plan.sizes.text_batch, plan.sizes.text_length)
    ids = torch.randint(0, plan.sizes.text["vocab_size"], shape, generator=generator)
    return [{"input_ids": block.to(plan.device), "labels": block.to(plan.device).clone()} for block in ids]


def section_token_kd(section: Section, plan: Plan) -> None:
    """Tokens/s and peak memory of token-level KD (CE + chunked forward KL) under ``bf16-mixed``."""
    sizes = plan.sizes
    student, teacher = gpt2_pair(plan)
    weights = loops.weight_bytes(student) + loops.weight_bytes(teacher)
    module = OfflineDistillation(
        student,
        teacher,
        terms=[DistillTerm(ForwardKLLoss(temperature=1.0, chunk_size=sizes.chunk_size), weight=0.5)],
        ce_weight=0.5,
        num_classes=sizes.text["vocab_size"],
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-4, weight_decay=0.01),
        allow_untrained_teacher=True,
    )
    text = sizes.text
    setting = (
        f"GPT-2 {text['teacher_layers']}x{text['teacher_hidden']} -> {text['student_layers']}x{text['student_hidden']}"
        f", V {text['vocab_size']}, batch {sizes.text_batch} x {sizes.text_length}, bf16-mixed"
    )
    loader = DeviceBatches(token_batches(plan), sizes.text_warmup + sizes.text_steps)
    if plan.cuda:
        free_memory(plan)
        torch.cuda.reset_peak_memory_stats(plan.device)
        before = torch.cuda.memory_allocated(plan.device)
    seconds = timed_fit(plan, module, loader, sizes.text_warmup, sizes.text_steps, precision="bf16-mixed")
    tokens = sizes.text_batch * sizes.text_length
    section.add(setting, seconds * 1e3, "ms/step", "OfflineDistillation in Trainer.fit")
    section.add(setting, tokens / seconds, "tokens/s", f"ForwardKLLoss chunk_size={sizes.chunk_size}, ce_weight=0.5")
    section.add(setting, weights / MIB, "MiB", "student + teacher weight bytes (float32)")
    if plan.cuda:
        peak = torch.cuda.max_memory_allocated(plan.device) - before
        section.add(setting, peak / MIB, "MiB", "peak max_memory_allocated of the fit (weights, AdamW state included)")
        section.add(setting, peak / weights, "ratio", "peak / (student + teacher weight bytes)")
    else:
        section.add(setting, None, "MiB", "peak memory: CUDA memory stats only (not measured on CPU)")
    del module, student, teacher, loader
    free_memory(plan)


# --------------------------------------------------------------------------------------------- cached teacher
class MemoryImages(ReplayableDataset):
    """Images and labels held in memory (no augmentation): a replayable dataset a ``TeacherCache`` can index."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        super().__init__()
        self.images, self.labels = images, labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def view(self, index: int, epoch: int) -> tuple[Tensor, int]:
        return self.images[index], self.labels[index]


def memory_images(size: int) -> MemoryImages:
    """``size`` images of kd_lightning's synthetic CIFAR-shaped set (100 classes), generated once, kept in memory."""
    synthetic = SyntheticImageDataset(size, (3, 32, 32), num_classes=100)
    items = [synthetic[index] for index in range(size)]
    return MemoryImages(torch.stack([item[0] for item in items]), torch.tensor([item[1] for item in items]))


def hand_student_on_loader(pair: loops.Pair, plan: Plan, loader: DataLoader) -> float:
    """(a) over a torch ``DataLoader``: the batch is collated on the host and copied to the device every step."""
    student = pair.student().train().to(plan.device)
    optimizer = pair.optimizer()(student.parameters())
    iterator = iter(loader)

    def step(index: int) -> None:
        x, y = (t.to(plan.device, non_blocking=True) for t in next(iterator)[:2])
        loss = F.cross_entropy(student(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return seconds_per_step(step, pair.warmup, pair.steps, plan.device)


def section_cached(section: Section, plan: Plan) -> None:
    """(e) a cached-teacher KD step in ``Trainer.fit`` against (a) on the same loader: ``e/a``."""
    pair = cifar_pair(plan)
    dataset = memory_images(pair.total * pair.batch_size)  # one epoch holds every step
    loader = DataLoader(dataset, batch_size=pair.batch_size, shuffle=False, drop_last=True, pin_memory=plan.cuda)
    a = hand_student_on_loader(pair, plan, loader)
    with tempfile.TemporaryDirectory(prefix="gpu_check_cache_") as folder:
        cache = TeacherCache(folder, views=1, dtype="float16")
        e = timed_fit(plan, kd_module(pair, teacher_cache=cache), loader, pair.warmup, pair.steps)
    setting = f"CIFAR pair, batch {pair.batch_size}, DataLoader"
    section.add(setting, a * 1e3, "ms/step", "(a) hand-written student-only step on the same DataLoader")
    section.add(setting, e * 1e3, "ms/step", "(e) OfflineDistillation + TeacherCache (float16 logits) in Trainer.fit")
    section.add(setting, e / a, "ratio", "e/a: cached KD step / student-only step")
    if cache.build_seconds is not None:
        section.add(setting, cache.build_seconds, "s", f"cache build over {len(dataset)} images (not in any step)")
    free_memory(plan)


# --------------------------------------------------------------------------------------------- memory
def peak_fit_bytes(plan: Plan, module: L.LightningModule, batches: Sequence[Any], steps: int) -> int:
    """Peak ``max_memory_allocated`` of a fit of ``steps`` steps above what was allocated before it."""
    free_memory(plan)
    torch.cuda.reset_peak_memory_stats(plan.device)
    before = torch.cuda.memory_allocated(plan.device)
    module.to(plan.device)  # after the baseline: the networks' weights count in the peak
    with tempfile.TemporaryDirectory() as root:
        trainer(plan, steps, root, []).fit(module, train_dataloaders=DeviceBatches(batches, steps))
    return torch.cuda.max_memory_allocated(plan.device) - before


def section_memory(section: Section, plan: Plan) -> None:
    """Peak memory of a ``Classifier`` fit and an ``OfflineDistillation`` fit (fp32): the teacher's extra cost."""
    if not plan.cuda:
        raise NotApplicableError("CUDA memory stats only (max_memory_allocated); benchmarks/speed.py measures RSS")
    pair = cifar_pair(plan)
    batches = image_batches(plan)
    steps = plan.sizes.memory_steps
    student_only = peak_fit_bytes(
        plan, Classifier(pair.student(), num_classes=100, optimizer=pair.optimizer()), batches, steps
    )
    distillation = peak_fit_bytes(plan, kd_module(pair), batches, steps)
    teacher = loops.weight_bytes(pair.teacher())
    setting = f"CIFAR pair, batch {pair.batch_size}, fp32, {steps} steps"
    section.add(setting, student_only / MIB, "MiB", "peak of the Classifier fit (student alone)")
    section.add(setting, distillation / MIB, "MiB", "peak of the OfflineDistillation fit")
    section.add(setting, teacher / MIB, "MiB", "teacher weight bytes")
    section.add(setting, (distillation - student_only) / teacher, "ratio", "(KD peak - student-only peak) / teacher")
    free_memory(plan)


# --------------------------------------------------------------------------------------------- FSDP
def section_fsdp(section: Section, plan: Plan) -> None:
    """``benchmarks/gpu_fsdp_check.py``'s checks, one row per strategy (a failed check fails the section)."""
    if not plan.cuda:
        raise NotApplicableError("FSDP1 needs a GPU (Lightning refuses strategy='fsdp' on CPU); FSDP2 on CPU is tested")
    import gpu_fsdp_check

    def run(name: str, module_class: type[OfflineDistillation], strategy: Callable[[], Any], sanity: int) -> None:
        problems = gpu_fsdp_check.check(name, module_class, strategy, sanity)
        section.add(name, float(len(problems)), "failed checks", "; ".join(problems) or "all checks passed")
        if problems:
            section.errors.append("; ".join(problems))

    try:
        for name, (module_class, strategy, sanity) in gpu_fsdp_check.CHECKS.items():
            section.attempt(name, functools.partial(run, name, module_class, strategy, sanity))
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------------------------- host syncs
class SyncCounter(L.Callback):
    """Counts the warnings of ``torch.cuda.set_sync_debug_mode("warn")`` over training steps ``first .. last``
    (global steps), by place (``file:line``); ``set_mode`` is ``torch.cuda.set_sync_debug_mode``.

    Each step is watched from its ``on_train_batch_start`` to the next step's: :attr:`in_step` counts those up to its
    ``on_train_batch_end`` (the step, backward and optimizer step, as ``tests/modules/test_host_syncs.py`` counts on
    CPU), :attr:`between` the rest (the module's own ``on_train_batch_end``, Lightning's bookkeeping after the step,
    the next batch's fetch and transfer).
    """

    def __init__(self, first: int, last: int, set_mode: Callable[[str | int], None]) -> None:
        self.first, self.last, self.set_mode = first, last, set_mode
        self.steps, self.in_step, self.between = 0, 0, 0
        self.places: dict[str, int] = {}
        self._catcher: warnings.catch_warnings | None = None
        self._caught: list[warnings.WarningMessage] = []
        self._step_end: int | None = None

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self.stop()
        if self.first <= trainer.global_step <= self.last:
            self.start()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.end_of_step()

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        self._step_end = None
        self.set_mode("warn")

    def end_of_step(self) -> None:
        if self._catcher is not None:
            self._step_end = len(self._caught)

    def stop(self) -> None:
        if self._catcher is None:
            return
        self.set_mode(0)
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        self.steps += 1
        step_end = len(self._caught) if self._step_end is None else self._step_end
        for position, caught in enumerate(self._caught):
            if SYNC_WARNING in str(caught.message):
                if position < step_end:
                    self.in_step += 1
                else:
                    self.between += 1
                place = f"{Path(caught.filename).name}:{caught.lineno}"
                self.places[place] = self.places.get(place, 0) + 1

    def per_step(self, count: int) -> float:
        if not self.steps:
            raise RuntimeError(f"expected steps {self.first}-{self.last} to run but none was watched")
        return count / self.steps

    def describe(self) -> str:
        """Where the syncs were raised, ``file:line xN``, or ``none``."""
        return ", ".join(f"{place} x{count}" for place, count in sorted(self.places.items())) or "none"


def hand_kd_syncs(pair: loops.Pair, plan: Plan, batches: Sequence[Any], counter: SyncCounter) -> None:
    """The hand-written KD loop (row d) with the same counter around the same steps (a reference)."""
    student = pair.student().train().to(plan.device)
    teacher = pair.teacher().to(plan.device)
    optimizer = pair.optimizer()(student.parameters())
    for index in range(counter.last + 2):
        x, y = batches[index % len(batches)]
        if counter.first <= index <= counter.last:
            counter.start()
        try:
            logits = student(x)
            with torch.no_grad():
                teacher_logits = teacher(x)
            loss = loops.kd_objective(logits, teacher_logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            counter.end_of_step()
        finally:
            counter.stop()


def section_syncs(section: Section, plan: Plan) -> None:
    """Synchronising CUDA calls per steady-state step of offline KD (module and, for reference, the hand loop)."""
    if not plan.cuda:
        raise NotApplicableError("CUDA sync debug mode only; on CPU tests/modules/test_host_syncs.py counts host reads")
    try:
        count_syncs(section, plan, torch.cuda.set_sync_debug_mode)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def count_syncs(section: Section, plan: Plan, set_mode: Callable[[str | int], None]) -> None:
    """The rows of :func:`section_syncs`; ``set_mode`` turns the sync debug mode on (``"warn"``) and off (``0``)."""
    pair = cifar_pair(plan)
    batches = image_batches(plan)
    first, last = plan.sizes.sync_first, plan.sizes.sync_last
    setting = f"CIFAR pair, steps {first}-{last} of {last + 2}"

    def module_syncs() -> None:
        counter = SyncCounter(first, last, set_mode)
        module = kd_module(pair).to(plan.device)
        try:
            with tempfile.TemporaryDirectory() as root:
                fit = trainer(plan, last + 2, root, [counter], log_every_n_steps=10_000)
                fit.fit(module, train_dataloaders=DeviceBatches(batches, last + 2))
        finally:
            counter.stop()
        note = f"OfflineDistillation, inside the step (batch start -> end): {counter.describe()}"
        section.add(setting, counter.per_step(counter.in_step), "syncs/step", note)
        note = "OfflineDistillation, between steps (module's batch-end hook, Lightning's tail, next batch)"
        section.add(setting, counter.per_step(counter.between), "syncs/step", note)

    def loop_syncs() -> None:
        counter = SyncCounter(first, last, set_mode)
        hand_kd_syncs(pair, plan, batches, counter)
        note = f"hand-written KD loop (reference), whole step: {counter.describe()}"
        section.add(setting, counter.per_step(counter.in_step), "syncs/step", note)

    section.attempt("OfflineDistillation", module_syncs)
    section.attempt("hand-written KD loop", loop_syncs)


RUNNERS: dict[str, Callable[[Section, Plan], None]] = {
    "cifar": section_cifar,
    "token_kd": section_token_kd,
    "cached": section_cached,
    "memory": section_memory,
    "fsdp": section_fsdp,
    "syncs": section_syncs,
}


def run_section(name: str, plan: Plan) -> dict[str, Any]:
    """Run one section: its status (``ok``, ``skipped: <why>``, ``failed: <message>``), seconds and rows (kept even
    when it failed)."""
    section = Section(name, plan.budgets[name])
    try:
        RUNNERS[name](section, plan)
        status = f"failed: {'; '.join(section.errors)}" if section.errors else "ok"
    except NotApplicableError as why:
        status = f"skipped: {why}"
    except Exception as error:  # the outcome being tabulated
        traceback.print_exc()
        status = f"failed: {describe(error)}"
    finally:
        free_memory(plan)
    return {"status": status, "seconds": time.perf_counter() - section.start, "rows": [asdict(r) for r in section.rows]}


# --------------------------------------------------------------------------------------------- output
def check_output(path: Path) -> None:
    """Refuse an ``--out`` that exists and is not a JSON file this script wrote (it would be overwritten)."""
    if not path.exists():
        return
    written = None
    if path.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError, json.JSONDecodeError):
            written = json.loads(path.read_text())
    if not (isinstance(written, dict) and written.get("script") == MARKER):
        raise OutputRefusedError(
            f"expected --out to be a new path or a JSON file written by {MARKER} but {str(path)!r} exists and is not "
            f'one (no "script": "{MARKER}" key); it is left unchanged: pass another --out path.'
        )


def write_json(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` to ``path`` through a temporary file in the same folder (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(temporary, path)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"


def table(report: dict[str, Any]) -> str:
    """The report as one Markdown table: check, setting, value, unit, note (a section's status where it is not ok)."""
    lines = ["| check | setting | value | unit | note |", "|---|---|---|---|---|"]
    for name, result in report["sections"].items():
        for row in result["rows"]:
            cells = [name, row["setting"], format_value(row["value"]), row["unit"], row["note"]]
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        if result["status"] != "ok" or not result["rows"]:
            status = result["status"].replace("|", "\\|")
            lines.append(f"| {name} | (section) | - |  | {status} ({result['seconds']:.0f} s) |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: cuda if available")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes and a few steps (CPU: well under a minute)")
    parser.add_argument("--out", default="gpu_check.json", help="the JSON report (default: ./gpu_check.json)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a comma-separated subset of {SECTIONS}")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds per section, checked before each of its parts (default: "
        + ", ".join(f"{name} {seconds:.0f}" for name, seconds in BUDGETS_S.items())
        + ")",
    )
    parser.add_argument(
        "--compile-backend", default=None, help="torch.compile backend (default: inductor; eager on a CPU dry run)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on a CPU dry run)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        parser.error(f"expected --sections to name some of {', '.join(SECTIONS)} but got {args.sections!r}")
    args.sections = [name for name in SECTIONS if name in chosen]
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error(f"expected --budget-s > 0 but got {args.budget_s}")
    return args


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """``_speed_loops.quiet_lightning()`` for the run only: Lightning's logger levels and the warning filters are
    restored afterwards (``main`` may run inside another program, such as a test session)."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        loops.quiet_lightning()
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def make_plan(args: argparse.Namespace) -> Plan:
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu --dry-run.")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.dry_run:
        raise ValueError(
            "expected a CUDA device for the full sizes (GPT-2 small at 8 x 1024 tokens) but the run is on the CPU; add "
            "--dry-run to check the script on a CPU (benchmarks/speed.py measures CPU speed)."
        )
    backend = args.compile_backend or ("eager" if device.type == "cpu" and args.dry_run else "inductor")
    budgets = {name: args.budget_s if args.budget_s is not None else seconds for name, seconds in BUDGETS_S.items()}
    return Plan(device, DRY if args.dry_run else FULL, args.dry_run, backend, budgets)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections, write the JSON after each, print the table; 0 when no section failed, else 1
    (2: the arguments or ``--out`` were refused, nothing ran)."""
    args = parse_args(argv)
    out = Path(args.out)
    try:
        check_output(out)
        plan = make_plan(args)
    except (OutputRefusedError, ValueError) as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    wanted = args.threads if args.threads is not None else (1 if plan.dry_run and not plan.cuda else None)
    if wanted is not None:
        torch.set_num_threads(wanted)
    start = time.perf_counter()
    report: dict[str, Any] = {
        "script": MARKER,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": plan.device.type,
        "device_name": device_name(plan.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": L.__version__,
        "kd_lightning": kd_lightning.__version__,
        "dry_run": plan.dry_run,
        "threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "device_memory_gib": torch.cuda.get_device_properties(plan.device).total_memory / 2**30 if plan.cuda else None,
        "compile_backend": plan.compile_backend,
        "budgets_s": {name: plan.budgets[name] for name in args.sections},
        "sections": {},
    }
    try:
        with quiet_lightning():
            for name in args.sections:
                print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
                report["sections"][name] = run_section(name, plan)
                report["seconds"] = time.perf_counter() - start
                write_json(out, report)
    finally:
        torch.set_num_threads(threads)
    failed = [name for name, result in report["sections"].items() if result["status"].startswith("failed")]
    report["failed"] = failed
    write_json(out, report)
    print(
        f"\n{report['device_name']} ({plan.device.type}), torch {torch.__version__}, lightning {L.__version__}, "
        f"{report['date']}, dry run: {plan.dry_run}, {report['seconds']:.0f} s; JSON: {out}\n"
    )
    print(table(report))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
