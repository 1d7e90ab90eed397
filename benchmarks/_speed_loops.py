"""The workloads ``benchmarks/speed.py`` times: hand-written PyTorch loops and kd_lightning modules in ``Trainer.fit``.

Every workload returns a :class:`Sample`: the time of each timed step, measured the same way everywhere as the
interval between the ends of two consecutive steps (wall time, ``time.perf_counter``, or this process's CPU time,
``time.process_time``: :func:`set_clock`). For a hand-written loop the end of a step is after ``optimizer.step()``;
inside ``Trainer.fit`` it is the ``on_train_batch_end`` callback hook (:class:`StepClock`). One interval therefore
holds everything one step costs: fetching and collating the batch, the loop's own bookkeeping (Lightning's hooks,
logging, progress counters), forward, loss, backward and optimizer step. The first ``warmup`` steps of each run are
not timed; neither is building the models, the Trainer, or Lightning's ``setup`` (kd_lightning's dry run). Lightning
runs also record the time inside the hooks (``on_train_batch_start`` -> ``on_train_batch_end``), which leaves out
the batch fetch and the loop's tail.

Models are built afresh (seeded) for every run, so each round starts from the same weights.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kd_lightning import Classifier, DistillTerm, FeatureTap, OfflineDistillation, OnlineDistillation, SelfDistillation
from kd_lightning.losses import KDLoss
from kd_lightning.models import DigitsCNN, DigitsMLP, resnet8x4, resnet32x4
from kd_lightning.teachers.temporal import EMATeacher

ROOT = Path(__file__).resolve().parents[1]
DIGITS_TEACHER = ROOT / "checkpoints" / "digits_teacher.safetensors"
LR, WEIGHT_DECAY = 0.01, 5e-4
"""AdamW settings of the digits configs, used by every loop (hand-written and module)."""
KD_TEMPERATURE, CE_WEIGHT, KD_WEIGHT = 4.0, 0.1, 0.9
"""Hinton KD as configured in configs/digits/offline_kd.yaml: ``0.1 * CE + 0.9 * T^2 KL`` at ``T = 4``."""
DML_TEMPERATURE = 1.0
EMA_DECAY = 0.98


_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = [time.perf_counter]


def set_clock(name: str) -> None:
    """``wall`` (``time.perf_counter``) or ``cpu`` (``time.process_time``: this process's CPU time, all threads).

    On a shared machine the CPU clock leaves out the time other processes hold the cores, so small differences
    (Python work per step) stand out of the noise; with one torch thread it equals the wall time of a quiet machine.
    """
    _clock[0] = _CLOCKS[name]


def now() -> float:
    return _clock[0]()


class NotAvailableError(Exception):
    """A row that cannot be measured in this checkout; its message is printed in the table."""


@dataclass
class Sample:
    """Seconds per timed step (``cycle``) and, for Lightning runs, seconds inside the batch hooks (``in_hook``)."""

    cycle: list[float]
    in_hook: list[float] | None = None


def quiet_lightning() -> None:
    """Silence Lightning's start-up banners and the warnings a benchmark fit triggers on purpose (no workers...)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (
        r".*does not have many workers.*",
        r".*isinstance\(treespec, LeafSpec\).*",
        r".*in eval mode at the start of training.*",
        r".*smaller than the logging interval.*",
        r".*You defined a `validation_step` but have no `val_dataloader`.*",
        r".*You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


# --------------------------------------------------------------------------------------------- the two pairs
@dataclass
class Pair:
    """A teacher -> student pair, its data, and how many steps a run times."""

    name: str
    build_student: Callable[[], nn.Module]
    build_teacher: Callable[[], nn.Module]
    datamodule: Any
    num_classes: int
    batch_size: int
    warmup: int
    steps: int
    teacher_state: dict[str, Tensor] | None = None
    teacher_source: str = "random weights"

    @property
    def total(self) -> int:
        return self.warmup + self.steps

    def student(self) -> nn.Module:
        torch.manual_seed(0)
        return self.build_student()

    def teacher(self) -> nn.Module:
        """The frozen teacher (eval mode, no gradients)."""
        torch.manual_seed(1)
        teacher = self.build_teacher()
        if self.teacher_state is not None:
            teacher.load_state_dict(self.teacher_state)
        return teacher.eval().requires_grad_(False)

    def optimizer(self) -> Callable[..., torch.optim.Optimizer]:
        return functools.partial(torch.optim.AdamW, lr=LR, weight_decay=WEIGHT_DECAY)

    def train_set(self) -> Any:
        return self.datamodule.splits["train"]

    def loader(self) -> DataLoader:
        """The plain torch ``DataLoader`` a hand-written loop uses: the module's training set, shuffled."""
        return DataLoader(self.train_set(), batch_size=self.batch_size, shuffle=True)


def digits_pair(warmup: int, steps: int) -> Pair:
    """DigitsCNN(width 32) -> DigitsMLP(hidden [32]), batch 64, the bundled digits (1,257 training images)."""
    from kd_lightning import DigitsDataModule

    datamodule = DigitsDataModule(batch_size=64, seed=0)
    datamodule.setup("fit")
    pair = Pair(
        "digits",
        lambda: DigitsMLP(num_classes=10, hidden=[32]),
        lambda: DigitsCNN(num_classes=10, width=32),
        datamodule,
        num_classes=10,
        batch_size=64,
        warmup=warmup,
        steps=steps,
    )
    if DIGITS_TEACHER.is_file():
        from safetensors.torch import load_file

        state = load_file(str(DIGITS_TEACHER))
        try:
            pair.build_teacher().load_state_dict(state)
        except RuntimeError:
            pass  # another architecture was shipped: random weights time the same
        else:
            pair.teacher_state, pair.teacher_source = state, DIGITS_TEACHER.relative_to(ROOT).as_posix()
    return pair


def with_small_teacher(pair: Pair) -> Pair:
    """The pair with a DigitsMLP(hidden [32]) teacher (random weights): a KD step whose compute is small."""
    return dataclasses.replace(
        pair,
        build_teacher=lambda: DigitsMLP(num_classes=10, hidden=[32]),
        teacher_state=None,
        teacher_source="random weights",
    )


def cifar_pair(warmup: int, steps: int) -> Pair:
    """resnet32x4 -> resnet8x4 (CIFAR-100 zoo), batch 64, seeded random 32x32 images over 100 classes."""
    from kd_lightning import SyntheticImageDataModule

    datamodule = SyntheticImageDataModule(num_classes=100, image_size=32, train_size=64 * 8, batch_size=64, seed=0)
    datamodule.setup("fit")
    return Pair(
        "cifar",
        lambda: resnet8x4(num_classes=100),
        lambda: resnet32x4(num_classes=100),
        datamodule,
        num_classes=100,
        batch_size=64,
        warmup=warmup,
        steps=steps,
    )


def forward_flops(model: nn.Module, example: Tensor) -> int:
    """FLOPs of one forward pass (``torch.utils.flop_counter``), eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(example)
    return counter.get_total_flops()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of a network's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))


# --------------------------------------------------------------------------------------------- timing
def _intervals(ends: list[float], warmup: int) -> list[float]:
    """Step times after ``warmup`` (>= 1) untimed steps, from the end times of every step."""
    return [later - earlier for earlier, later in itertools.pairwise(ends[max(warmup, 1) - 1 :])]


class StepClock(L.Callback):
    """Records the end of every training step and the time spent between the batch hooks."""

    def __init__(self) -> None:
        self.ends: list[float] = []
        self.in_hook: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._start = now()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        end = now()
        self.ends.append(end)
        self.in_hook.append(end - self._start)


def trainer_kwargs(max_steps: int, root: str) -> dict[str, Any]:
    """The Trainer every timed fit uses (validation, checkpoints, progress bar and model summary off)."""
    return {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "default_root_dir": root,
    }


def lightning_fit(
    pair: Pair,
    module: L.LightningModule,
    *,
    loader: DataLoader | None = None,
    logger: bool = False,
    callbacks: list[L.Callback] | None = None,
) -> Sample:
    """``Trainer.fit`` for ``pair.total`` steps, on the module's datamodule (or ``loader``); timed by a callback.

    ``logger=False``: no logger (``self.log`` still runs and fills ``callback_metrics``); ``True``: a ``CSVLogger``
    as the configs under configs/ use, with Lightning's default ``log_every_n_steps=50``.
    """
    clock = StepClock()
    with tempfile.TemporaryDirectory() as root:
        csv = CSVLogger(save_dir=root) if logger else False
        trainer = L.Trainer(logger=csv, callbacks=[clock, *(callbacks or [])], **trainer_kwargs(pair.total, root))
        if loader is None:
            trainer.fit(module, datamodule=pair.datamodule)
        else:
            trainer.fit(module, train_dataloaders=loader)
    if len(clock.ends) != pair.total:
        raise RuntimeError(f"expected {pair.total} training steps but the fit ran {len(clock.ends)}")
    return Sample(_intervals(clock.ends, pair.warmup), clock.in_hook[pair.warmup :])


def hand_loop(pair: Pair, step: Callable[[Any], None], loader: DataLoader | None = None) -> Sample:
    """Run ``step(batch)`` over the loader, epoch after epoch, for ``pair.total`` steps; time each step."""
    loader = pair.loader() if loader is None else loader
    ends: list[float] = []
    while len(ends) < pair.total:
        for batch in loader:
            step(batch)
            ends.append(now())
            if len(ends) == pair.total:
                break
    return Sample(_intervals(ends, pair.warmup))


# --------------------------------------------------------------------------------------------- hand-written maths
def kd_term(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Hinton's ``T^2 * KL(softmax(t / T) || softmax(s / T))``, batch mean (as ``kd_lightning.losses.KDLoss``)."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    log_p_t = F.log_softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


def kd_objective(student: Tensor, teacher: Tensor, target: Tensor) -> Tensor:
    return CE_WEIGHT * F.cross_entropy(student, target) + KD_WEIGHT * kd_term(student, teacher, KD_TEMPERATURE)


def dml_objective(logits: list[Tensor], target: Tensor) -> Tensor:
    """Deep Mutual Learning: every peer's CE plus the mean over the other peers of ``KL(p_other || p_self)``, T=1."""
    total = torch.zeros(())
    for k, own in enumerate(logits):
        others = [kd_term(own, other.detach(), DML_TEMPERATURE) for j, other in enumerate(logits) if j != k]
        total = total + F.cross_entropy(own, target) + sum(others) / len(others)
    return total


def _train_step(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def student_only(pair: Pair) -> Sample:
    """(a) Forward, cross-entropy, backward, AdamW step of the student alone."""
    student = pair.student().train()
    optimizer = pair.optimizer()(student.parameters())

    def step(batch: Any) -> None:
        _train_step(optimizer, F.cross_entropy(student(batch[0]), batch[1]))

    return hand_loop(pair, step)


def teacher_inference(pair: Pair) -> Sample:
    """(b) The teacher's forward pass alone (eval mode, ``no_grad``) on batches already in memory (no data loading)."""
    teacher = pair.teacher()
    batches = [batch[0] for batch in pair.loader()]
    ends: list[float] = []
    with torch.no_grad():
        for index in range(pair.total):
            teacher(batches[index % len(batches)])
            ends.append(now())
    return Sample(_intervals(ends, pair.warmup))


def hand_kd(pair: Pair, loader: DataLoader | None = None) -> Sample:
    """(d) Hand-written KD: student forward, teacher forward (``no_grad``), 0.1 CE + 0.9 KD(T=4), backward, step."""
    student, teacher = pair.student().train(), pair.teacher()
    optimizer = pair.optimizer()(student.parameters())

    def step(batch: Any) -> None:
        x, y = batch[0], batch[1]
        logits = student(x)
        with torch.no_grad():
            teacher_logits = teacher(x)
        _train_step(optimizer, kd_objective(logits, teacher_logits, y))

    return hand_loop(pair, step, loader)


def dml_peers() -> list[nn.Module]:
    """Two peers of configs/digits/online_dml.yaml (which has three): DigitsCNN(width 16), DigitsMLP(hidden [32])."""
    torch.manual_seed(0)
    return [DigitsCNN(num_classes=10, width=16), DigitsMLP(num_classes=10, hidden=[32])]


def hand_dml(pair: Pair) -> Sample:
    """Deep Mutual Learning by hand: both peers forward, every peer's loss, one backward, one AdamW over both."""
    peers = [peer.train() for peer in dml_peers()]
    optimizer = pair.optimizer()([p for peer in peers for p in peer.parameters()])

    def step(batch: Any) -> None:
        _train_step(optimizer, dml_objective([peer(batch[0]) for peer in peers], batch[1]))

    return hand_loop(pair, step)


class HandEMA:
    """An EMA copy of a network: ``ema <- decay * ema + (1 - decay) * live`` for floating tensors, copy for integers."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        self.copy = copy.deepcopy(network).eval().requires_grad_(False)
        pairs = list(
            zip(
                itertools.chain(self.copy.parameters(), self.copy.buffers()),
                itertools.chain(network.parameters(), network.buffers()),
                strict=True,
            )
        )
        self.floating = [(a, b) for a, b in pairs if a.is_floating_point()]
        self.integer = [(a, b) for a, b in pairs if not a.is_floating_point()]
        self.decay = decay

    @torch.no_grad()
    def update(self) -> None:
        if self.floating:
            averages, live = zip(*self.floating, strict=True)
            torch._foreach_lerp_(list(averages), list(live), 1.0 - self.decay)
        for average, live_tensor in self.integer:
            average.copy_(live_tensor)


def hand_ema(pair: Pair) -> Sample:
    """Self-distillation from an EMA of the student by hand: KD from the EMA copy, then the EMA update."""
    student = pair.student().train()
    ema = HandEMA(student, EMA_DECAY)
    optimizer = pair.optimizer()(student.parameters())

    def step(batch: Any) -> None:
        x, y = batch[0], batch[1]
        logits = student(x)
        with torch.no_grad():
            teacher_logits = ema.copy(x)
        _train_step(optimizer, kd_objective(logits, teacher_logits, y))
        ema.update()

    return hand_loop(pair, step)


# --------------------------------------------------------------------------------------------- kd_lightning modules
def offline_module(pair: Pair, **options: Any) -> OfflineDistillation:
    """The pair's ``OfflineDistillation`` (Hinton KD); ``options`` such as ``teacher_dtype="bfloat16"``."""
    return OfflineDistillation(
        student=pair.student(),
        teacher=pair.teacher(),
        terms=[DistillTerm(KDLoss(temperature=KD_TEMPERATURE), weight=KD_WEIGHT)],
        ce_weight=CE_WEIGHT,
        num_classes=pair.num_classes,
        optimizer=pair.optimizer(),
        allow_untrained_teacher=pair.teacher_state is None,  # random weights time the same as trained ones
        **options,
    )


def classifier_module(pair: Pair) -> Classifier:
    return Classifier(pair.student(), num_classes=pair.num_classes, optimizer=pair.optimizer())


def dml_module(pair: Pair) -> OnlineDistillation:
    return OnlineDistillation(
        peers=dml_peers(),
        student="peer1",
        mutual=True,
        terms=[DistillTerm(KDLoss(temperature=DML_TEMPERATURE), weight=1.0)],
        ce_weight=1.0,
        num_classes=pair.num_classes,
        optimizer=pair.optimizer(),
    )


def ema_module(pair: Pair) -> SelfDistillation:
    return SelfDistillation(
        pair.student(),
        teacher=EMATeacher(decay=EMA_DECAY),
        terms=[DistillTerm(KDLoss(temperature=KD_TEMPERATURE), weight=KD_WEIGHT)],
        ce_weight=CE_WEIGHT,
        num_classes=pair.num_classes,
        optimizer=pair.optimizer(),
    )


def module_kd(pair: Pair, logger: bool = False) -> Sample:
    """(c) ``OfflineDistillation`` in ``Trainer.fit`` on the pair's datamodule (its ``ResumableDataLoader``)."""
    return lightning_fit(pair, offline_module(pair), logger=logger)


def module_classifier(pair: Pair) -> Sample:
    """(f) ``Classifier`` (the student alone) in ``Trainer.fit``."""
    return lightning_fit(pair, classifier_module(pair))


def module_dml(pair: Pair) -> Sample:
    return lightning_fit(pair, dml_module(pair))


def module_ema(pair: Pair) -> Sample:
    return lightning_fit(pair, ema_module(pair))


CACHE_BUILDS: dict[str, float] = {}
"""Seconds of the one-off teacher-cache build per pair (printed beside row (e), not part of any step)."""
_CACHE_ROOT = tempfile.TemporaryDirectory(prefix="kd_speed_cache_")
_CACHED_DATA: dict[str, Any] = {}


def cached_kd(pair: Pair) -> Sample:
    """(e) ``OfflineDistillation`` reading the teacher's logits from a ``TeacherCache`` (float16, one view).

    The first call builds the cache in ``on_fit_start`` (outside the timed steps; its time is kept in
    :data:`CACHE_BUILDS`), later calls reuse it. The cached fit gets its own copy of the datamodule: the cache sets its
    training set to return sample indices, which the other rows must not pay for.
    """
    from kd_lightning.teachers.cache_store import TeacherCache

    if pair.name not in _CACHED_DATA:
        _CACHED_DATA[pair.name] = copy.deepcopy(pair.datamodule)
    cache = TeacherCache(Path(_CACHE_ROOT.name) / pair.name, views=1, dtype="float16")
    module = offline_module(pair, teacher_cache=cache)
    sample = lightning_fit(dataclasses.replace(pair, datamodule=_CACHED_DATA[pair.name]), module)
    if cache.build_seconds is not None:
        CACHE_BUILDS[pair.name] = cache.build_seconds
    return sample


# --------------------------------------------------------------------------------------------- a bare LightningModule
class BareKD(L.LightningModule):
    """The KD maths of row (d) in a minimal LightningModule: what Lightning alone costs (no kd_lightning code).

    ``log_keys``: log ``train/loss`` (prog bar), ``train/ce`` and ``train/kd`` as kd_lightning does, or nothing.
    With ``teacher=None`` it is the student alone (CE only; logs ``train/loss`` and ``train/ce``).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, optimizer: Callable, log_keys: bool) -> None:
        super().__init__()
        self.student, self.teacher, self.optimizer_factory, self.log_keys = student, teacher, optimizer, log_keys

    def train(self, mode: bool = True) -> BareKD:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        logits = self.student(x)
        if self.teacher is None:
            ce = F.cross_entropy(logits, y)
            loss, parts = ce, {"train/ce": ce}
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            ce = CE_WEIGHT * F.cross_entropy(logits, y)
            kd = KD_WEIGHT * kd_term(logits, teacher_logits, KD_TEMPERATURE)
            loss, parts = ce + kd, {"train/ce": ce, "train/kd": kd}
        if self.log_keys:
            self.log("train/loss", loss, prog_bar=True)
            self.log_dict(parts)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_factory(self.student.parameters())


def bare_lightning(pair: Pair, teacher: bool = True, log_keys: bool = False) -> Sample:
    """``BareKD`` in ``Trainer.fit`` with the plain ``DataLoader`` of the hand-written loops."""
    module = BareKD(pair.student(), pair.teacher() if teacher else None, pair.optimizer(), log_keys)
    return lightning_fit(pair, module, loader=pair.loader())


# --------------------------------------------------------------------------------------------- the maths agree
def maths_differences(pair: Pair) -> dict[str, float]:
    """|module loss - hand-written loss| on one batch, for KD, DML and EMA (the rows compare the same maths)."""
    x, y = next(iter(pair.loader()))[:2]
    out: dict[str, float] = {}
    with torch.no_grad():
        kd = offline_module(pair).eval()
        module_loss = sum(kd.compute_losses([x, y]).values())
        out["KD"] = float((module_loss - kd_objective(kd.student(x), kd.teacher(x), y)).abs())
        dml = dml_module(pair).eval()
        module_loss = sum(dml.compute_losses([x, y]).values())
        out["DML"] = float((module_loss - dml_objective([net(x) for net in dml.cohort.values()], y)).abs())
        ema = ema_module(pair).eval()
        module_loss = sum(ema.compute_losses([x, y]).values())
        out["EMA"] = float((module_loss - kd_objective(ema.student(x), ema.teacher.network(x), y)).abs())
    return out


# --------------------------------------------------------------------------------------------- ablations (profiling)
def _no_op(*args: Any, **kwargs: Any) -> None:
    return None


class _NoWatch:
    """Stands in for the non-finite watch (``module.nonfinite``): no device ops per step, nothing recorded."""

    names, loaded, reported, skipped = None, 0, 0, 0

    def observe(self, loss: Tensor, *args: Any) -> Tensor:
        return torch.ones((), dtype=torch.bool, device=loss.device)

    def zero_if_not_finite(self, *args: Any) -> None:
        return None

    def epoch_started(self) -> None:
        return None

    def report(self, module: Any) -> int:
        return 0


class _PlainTap:
    """Stands in for a logits-only ``FeatureTap``: calls the network and returns ``{"logits": ...}``, no hooks."""

    def __init__(self, network: nn.Module) -> None:
        self.model, self.names, self.role, self.output_kind = network, (), "plain", "logits"

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        return {"logits": self.model(x)}

    def remove(self) -> None:
        pass


@contextlib.contextmanager
def _plain_sum() -> Iterator[None]:
    """``total_loss`` as a plain Python sum of the components (no ``.float()`` copies, no ``torch.stack``)."""
    with mock.patch("kd_lightning.modules.base.total_loss", lambda losses: sum(losses.values())):
        yield


def _hand_losses(module: OfflineDistillation) -> Callable[[Any], dict[str, Tensor]]:
    """``compute_losses`` with the same maths written directly (no Objective, DistillTerm, KDLoss checks, taps)."""

    def compute_losses(batch: Any) -> dict[str, Tensor]:
        x, y = batch[0], batch[1]
        logits = module.student(x)
        with torch.no_grad():
            teacher_logits = module.teacher.network(x)
        return {
            "ce": CE_WEIGHT * F.cross_entropy(logits, y),
            "kd": KD_WEIGHT * kd_term(logits, teacher_logits, KD_TEMPERATURE),
        }

    return compute_losses


def _patched(
    pair: Pair,
    patches: dict[str, Callable[[OfflineDistillation], Any]],
    plain_loader: bool = False,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Sample:
    """Row (c) with some of ``OfflineDistillation``'s per-step work replaced on the instance (nothing is edited)."""
    module = offline_module(pair)
    for name, make in patches.items():
        setattr(module, name, make(module))  # an instance attribute shadows the method (Lightning calls getattr)
    with context():
        return lightning_fit(pair, module, loader=pair.loader() if plain_loader else None)


NO_LOG_DICT = {"log_dict": lambda m: _no_op}
NO_LOG = {"log": lambda m: _no_op, "log_dict": lambda m: _no_op}
NO_GUARD = {"nonfinite": lambda m: _NoWatch()}
NO_BATCH_END = {"on_train_batch_end": lambda m: _no_op}
NO_TAPS = {"student_tap": lambda m: _PlainTap(m.student)}
HAND_LOSSES = {"compute_losses": _hand_losses}


def ablations(pair: Pair) -> dict[str, tuple[str, Callable[[], Sample]]]:
    """Row (c) minus one piece of per-step work at a time, then minus all of it, beside bare Lightning and row (d).

    Keys are short labels; values are (what is removed, workload). Each "minus X" keeps every other piece, so
    ``full - minus X`` is the cost of X on its own.
    """
    everything = {**NO_LOG, **NO_GUARD, **NO_BATCH_END, **HAND_LOSSES}
    return {
        "full": ("OfflineDistillation as shipped (row c)", lambda: _patched(pair, {})),
        "-log_dict": ("no self.log_dict of the components (train/ce, train/kd)", lambda: _patched(pair, NO_LOG_DICT)),
        "-log": ("no self.log at all (also train/loss)", lambda: _patched(pair, NO_LOG)),
        "-guard": ("no non-finite watch (its device ops per step)", lambda: _patched(pair, NO_GUARD)),
        "-batch_end": ("no on_train_batch_end optimizer-coverage hook", lambda: _patched(pair, NO_BATCH_END)),
        "-taps": ("no student FeatureTap (the student called directly)", lambda: _patched(pair, NO_TAPS)),
        "-objective": (
            "hand-written losses: no Objective/DistillTerm/KDLoss checks",
            lambda: _patched(pair, {**NO_TAPS, **HAND_LOSSES}),
        ),
        "-total_loss": (
            "total_loss as a plain sum (no .float(), torch.stack)",
            lambda: _patched(pair, {}, context=_plain_sum),
        ),
        "-resumable": (
            "plain torch DataLoader instead of ResumableDataLoader",
            lambda: _patched(pair, {}, plain_loader=True),
        ),
        "-all": ("all of the above removed", lambda: _patched(pair, everything, plain_loader=True, context=_plain_sum)),
        "bare+log": (
            "bare LightningModule, same maths, logs the same 3 keys",
            lambda: bare_lightning(pair, log_keys=True),
        ),
        "bare": ("bare LightningModule, same maths, no self.log", lambda: bare_lightning(pair)),
        "hand": ("hand-written loop (row d)", lambda: hand_kd(pair)),
    }


def data_only(pair: Pair, resumable: bool) -> Sample:
    """Iterating the training loader alone: the plain ``DataLoader`` or the datamodule's ``ResumableDataLoader``."""
    loader = pair.datamodule.train_dataloader() if resumable else pair.loader()
    return hand_loop(pair, _no_op, loader)


# --------------------------------------------------------------------------------------------- per-step breakdown
class _Timed:
    """Callable stand-in that times every call of ``target`` into ``spans[name]``; other attributes pass through.

    With ``marks``, the start and end of the latest call are also kept there (as ``"<name> start"``/``"<name> end"``).
    """

    def __init__(self, target: Any, name: str, spans: dict[str, float], marks: dict[str, float] | None = None) -> None:
        self.__dict__.update(_target=target, _name=name, _spans=spans, _marks=marks)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        start = now()
        if self._marks is not None:
            self._marks[f"{self._name} start"] = start
        try:
            return self._target(*args, **kwargs)
        finally:
            end = now()
            self._spans[self._name] = self._spans.get(self._name, 0.0) + end - start
            if self._marks is not None:
                self._marks[f"{self._name} end"] = end

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


TRAINING_STEP = "module.training_step"
HEALTH_CHECK = "AdamW.step: _accelerator_graph_capture_health_check"
PHASES = (
    "cycle (one whole step)",
    "between steps (Lightning's tail, batch fetch)",
    "before training_step (Lightning; AdamW.step entry)",
    "training_step (forward, losses, logging)",
    "after training_step, zero_grad",
    "backward",
    "after backward",
    "optimizer update (+ Lightning after it)",
)


class Breakdown(L.Callback):
    """Where one step's time goes inside ``Trainer.fit``: Lightning's hooks mark the phases, timed wrappers the pieces.

    Phases: between the previous step's ``on_train_batch_end`` and ``on_train_batch_start`` (Lightning's tail of the
    previous step, the batch fetch and transfer); up to ``training_step`` (Lightning's hooks and closure, and the
    entry of ``AdamW.step``, which runs the closure); ``training_step``; up to ``on_before_backward`` (closure
    result, ``zero_grad``); ``backward``; up to ``on_before_optimizer_step``; then to ``on_train_batch_end`` (the AdamW
    update and Lightning after it). Pieces are wrapped methods (:meth:`wrap`), summed per step; a nested piece counts
    in each of its parents.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup = max(warmup, 1)
        self.spans: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self._previous_end: float | None = None
        self._ended = 0

    def wrap(self, owner: Any, attribute: str, name: str | None = None, marks: bool = False) -> None:
        """Time every call of ``owner.attribute`` (an instance attribute shadows the method; nothing is edited)."""
        timed = _Timed(getattr(owner, attribute), name or attribute, self.spans, self.marks if marks else None)
        setattr(owner, attribute, timed)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        connector = trainer._logger_connector
        for attribute in ("on_batch_start", "on_batch_end", "update_train_step_metrics"):
            self.wrap(connector, attribute, f"Lightning logger_connector.{attribute}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            inner = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer wraps the torch optimizer
            if hasattr(inner, "_accelerator_graph_capture_health_check"):
                self.wrap(inner, "_accelerator_graph_capture_health_check", HEALTH_CHECK)

    def on_train_batch_start(self, *args: Any) -> None:
        self.marks["start"] = now()

    def on_before_backward(self, *args: Any) -> None:
        self.marks["before backward"] = now()

    def on_after_backward(self, *args: Any) -> None:
        self.marks["after backward"] = now()

    def on_before_optimizer_step(self, *args: Any) -> None:
        self.marks["before optimizer step"] = now()

    def on_train_batch_end(self, *args: Any) -> None:
        end, marks = now(), self.marks
        if self._ended >= self.warmup:
            times = [
                self._previous_end,
                marks["start"],
                marks[f"{TRAINING_STEP} start"],
                marks[f"{TRAINING_STEP} end"],
                marks["before backward"],
                marks["after backward"],
                marks["before optimizer step"],
                end,
            ]
            step = {PHASES[0]: end - self._previous_end}
            step.update(
                (name, later - earlier)
                for name, (earlier, later) in zip(PHASES[1:], itertools.pairwise(times), strict=True)
            )
            step.update((name, value) for name, value in self.spans.items() if name != TRAINING_STEP)
            self.steps.append(step)
        self._ended += 1
        self._previous_end = end
        self.spans.clear()
        marks.clear()

    def medians(self) -> dict[str, float]:
        names = list(dict.fromkeys(name for step in self.steps for name in step))
        return {name: statistics.median(step.get(name, 0.0) for step in self.steps) for name in names}


def _wrap_module(clock: Breakdown, module: L.LightningModule) -> None:
    """Time the per-step pieces of a kd_lightning module (those it has) and its networks' forward passes."""
    for attribute in (
        "training_step",
        "compute_losses",
        "log",
        "log_dict",
        "on_train_batch_end",
        "on_after_batch_transfer",
        "format_batch",
        "cohort_outputs",
        "cohort_losses",
    ):
        if hasattr(module, attribute):
            clock.wrap(module, attribute, f"module.{attribute}", marks=attribute == "training_step")
    watch = getattr(module, "nonfinite", None)
    if watch is not None:
        clock.wrap(watch, "observe", "non-finite watch: observe (per micro-batch)")
        clock.wrap(watch, "zero_if_not_finite", "non-finite watch: zero_if_not_finite (per optimizer step)")
    clock.spans.clear()
    for attribute in ("student_tap", "teacher_tap"):
        if isinstance(getattr(module, attribute, None), FeatureTap):
            clock.wrap(module, attribute, f"module.{attribute}(x) (network forward included)")
    if isinstance(getattr(module, "objective", None), nn.Module):
        clock.wrap(module.objective, "forward", "module.objective (CE + terms)")
    networks = {"student": getattr(module, "student", None), "teacher": getattr(module, "teacher", None)}
    for name, network in networks.items():
        if isinstance(network, EMATeacher):
            clock.wrap(network, "after_optimizer_step", "EMATeacher.after_optimizer_step")
            clock.wrap(network.network, "forward", "teacher network forward")
        elif isinstance(network, nn.Module):
            clock.wrap(network, "forward", f"{name} network forward")


def breakdown_fit(pair: Pair, module: L.LightningModule, loader: DataLoader | None = None) -> dict[str, float]:
    """Median seconds per step of every phase and piece of ``module``'s step in ``Trainer.fit``."""
    from kd_lightning.modules import base

    clock = Breakdown(pair.warmup)
    _wrap_module(clock, module)
    with mock.patch.object(base, "total_loss", _Timed(base.total_loss, "total_loss()", clock.spans)):
        lightning_fit(pair, module, loader=loader, callbacks=[clock])
    return clock.medians()


def breakdown_hand_kd(pair: Pair, teacher: bool = True) -> dict[str, float]:
    """The same phases for the hand-written loop (row d; with ``teacher=False`` row a)."""
    student = pair.student().train()
    frozen = pair.teacher() if teacher else None
    optimizer = pair.optimizer()(student.parameters())
    spans: dict[str, float] = {}
    optimizer._accelerator_graph_capture_health_check = _Timed(
        optimizer._accelerator_graph_capture_health_check, HEALTH_CHECK, spans
    )
    loader, steps = pair.loader(), []
    iterator, previous = iter(loader), None
    for index in range(pair.total):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        x, y = batch[0], batch[1]
        t1 = now()
        logits = student(x)
        t2 = now()
        if frozen is not None:
            with torch.no_grad():
                teacher_logits = frozen(x)
        t3 = now()
        loss = kd_objective(logits, teacher_logits, y) if frozen is not None else F.cross_entropy(logits, y)
        t4 = now()
        optimizer.zero_grad(set_to_none=True)
        t5 = now()
        loss.backward()
        t6 = now()
        optimizer.step()
        t7 = now()
        if previous is not None and index >= pair.warmup:
            step = dict(
                zip(PHASES, (t7 - previous, t1 - previous, 0.0, t4 - t1, t5 - t4, t6 - t5, 0.0, t7 - t6), strict=True)
            )
            step.update({"student network forward": t2 - t1, "loss maths (hand-written)": t4 - t3})
            if frozen is not None:
                step["teacher network forward"] = t3 - t2
            step[HEALTH_CHECK] = spans.get(HEALTH_CHECK, 0.0)
            steps.append(step)
        spans.clear()
        previous = t7
    return {name: statistics.median(step[name] for step in steps) for name in steps[0]}
