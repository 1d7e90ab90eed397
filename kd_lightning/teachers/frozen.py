"""``FrozenTeacher``: a trained network that teaches, frozen, run on every batch.

Everything about the teacher lives here, so a mode reads it in two lines (timm's ``DistillationTeacher`` in spirit):
its weights file (loaded strictly, fingerprinted so a resume beside another file is refused), the freeze (no
gradients, eval mode that survives ``train()``, run under ``torch.no_grad()``), the re-standardisation of inputs
when it was trained with other statistics than the student, and an optional half-precision copy.

**Untrained teachers are refused.** A frozen teacher teaches only if it is trained; the rule, checked on the first
training batch before the first optimizer step (:meth:`FrozenTeacher.check`):

1. a weights file was given (``weights``, the mode's ``teacher_weights``), or the network was built by a pretrained
   builder (``kd_lightning.models.text.pretrained_model``, ``timm_model(pretrained=True)``, ``torchvision_model``
   with ``weights``: they mark the network they return), or
2. its top-1 accuracy on the labelled samples (or tokens) of that batch is clearly above chance: more than
   ``1/C + 3 * sqrt((1/C) * (1 - 1/C) / n)`` for ``C`` classes and ``n`` labelled samples (a trained network passes
   by far; a randomly initialised one fails with near certainty);
3. otherwise — no file, no pretrained builder, and no labels to tell — or when (2) fails, the fit stops with the
   fix. ``allow_untrained=True`` (the modules' ``allow_untrained_teacher``) opts out, for tests and for
   experiments that distil from a random network on purpose.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.networks import freeze, pretrained_source, require_network
from kd_lightning.core.taps import LOGITS, FeatureTap
from kd_lightning.core.tokens import is_causal_lm
from kd_lightning.files.weights import first_nonfinite, load_weights, state_digest
from kd_lightning.teachers.base import EXTERNAL, Outputs, TeacherSource
from kd_lightning.teachers.normalization import Renormalize, check_same_scale, normalization_stats

TEACHER_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
NO_STUDENT_STATS = "teacher_normalization needs the statistics the batches are standardised with"
SET_STUDENT_STATS = "set student_normalization: {mean: [...], std: [...]} in the model's init_args."
CHANCE_SIGMAS = 3.0


def teacher_dtype(name: str | None) -> torch.dtype | None:
    """``"bfloat16"`` -> ``torch.bfloat16``; ``None`` or ``"float32"`` -> ``None`` (the teacher's weights unchanged)."""
    if name is None:
        return None
    if name not in TEACHER_DTYPES:
        raise ValueError(
            f"expected teacher_dtype to be one of {list(TEACHER_DTYPES)} but got {name!r}; 'bfloat16' halves the "
            f"frozen teacher's weight memory and keeps float32's range (float16 overflows above 65504)."
        )
    return None if name == "float32" else TEACHER_DTYPES[name]


def network_settings(network: nn.Module) -> list[list[Any]]:
    """Every plain public attribute (number, string, flag, tuple of them) of every submodule: ``[[path, name, value]]``.

    What a forward may depend on besides the weights (a temperature, a flag), for a teacher cache's key.
    """
    plain = (bool, int, float, str, type(None))
    settings = []
    for path, module in network.named_modules():
        for name, value in sorted(vars(module).items()):
            if name.startswith("_") or name == "training":
                continue
            if isinstance(value, plain) or (isinstance(value, tuple) and all(isinstance(v, plain) for v in value)):
                settings.append([path, name, list(value) if isinstance(value, tuple) else value])
    return settings


def chance_threshold(num_classes: int, count: int) -> float:
    """Accuracy that a network guessing uniformly exceeds with probability ~0.1%: ``p + 3 sqrt(p (1 - p) / n)``."""
    chance = 1.0 / max(num_classes, 1)
    return chance + CHANCE_SIGMAS * math.sqrt(chance * (1 - chance) / max(count, 1))


class FrozenTeacher(TeacherSource):
    """A trained network as teacher: frozen, run on every batch under ``torch.no_grad()``.

    Args:
        network: the teacher's architecture (any ``nn.Module`` returning logits, or a Hugging Face model).
        weights: its weights: a ``.ckpt`` (e.g. of a ``Classifier``) or ``.pt``/``.safetensors`` state dict, loaded
            strictly; ``None`` keeps the network's current weights (trained in Python, or by a pretrained builder).
        normalization: ``{mean: [...], std: [...]}`` the teacher's inputs were standardised with in its training,
            when they differ from the student's (a timm ImageNet teacher beside a CIFAR student); every batch is
            re-standardised for it, ``(x * std_s + mean_s - mean_t) / std_t``. ``None``: the student's inputs.
        student_normalization: ``{mean, std}`` the batches are standardised with; ``None`` reads the datamodule's
            ``mean`` and ``std`` when the fit starts.
        dtype: ``"bfloat16"``/``"float16"`` holds the teacher in that dtype (half its weight memory); inputs are cast
            for it, it runs outside autocast, and its outputs come back in float32.
        allow_untrained: distil from this network even when nothing shows it is trained (see the module docstring).

    Example:
        >>> from kd_lightning.models import DigitsCNN
        >>> teacher = FrozenTeacher(DigitsCNN(width=4), allow_untrained=True)
        >>> teacher.bind(DigitsCNN(width=2), ["logits"], 10)
        >>> teacher.outputs(Batch(torch.randn(2, 1, 8, 8)))["logits"].shape
        torch.Size([2, 10])
    """

    kind = EXTERNAL
    in_checkpoint = False

    def __init__(
        self,
        network: nn.Module,
        weights: str | Path | None = None,
        normalization: Mapping[str, Sequence[float]] | None = None,
        student_normalization: Mapping[str, Sequence[float]] | None = None,
        dtype: str | None = None,
        allow_untrained: bool = False,
    ) -> None:
        super().__init__()
        require_network(network, "teacher")
        self.dtype = teacher_dtype(dtype)
        self.weights = None if weights is None else str(weights)
        if self.weights is not None:
            load_weights(network, self.weights, role="teacher")
        self.network = freeze(network if self.dtype is None else network.to(self.dtype))
        self.allow_untrained = bool(allow_untrained)
        self.teacher_stats = None
        if normalization is not None:
            self.teacher_stats = normalization_stats(normalization, "teacher_normalization")
        self.renormalize: Renormalize | None = None
        if student_normalization is not None:
            if self.teacher_stats is None:
                raise ValueError(
                    "expected teacher_normalization beside student_normalization but got only the student's: give "
                    "the teacher's {mean, std} too (or drop student_normalization: the teacher then sees the "
                    "student's inputs)."
                )
            self.set_student_normalization(normalization_stats(student_normalization, "student_normalization"))
        self.tap: FeatureTap | None = None
        self._digest: str | None = None

    # ----------------------------------------------------------------- once
    def bind(self, student: nn.Module, layers: Sequence[str], num_classes: int) -> None:
        self.tap = FeatureTap(self.network, layers, role="teacher")

    def networks(self) -> dict[str, nn.Module]:
        return {"teacher": self.network}

    def tapped(self) -> list[tuple[str, nn.Module, Any]]:
        return [("teacher.network", self.network, self.tap)]

    def identity(self) -> dict[str, Any]:
        renormalize = self.renormalize and [t.flatten().tolist() for t in self.renormalize.buffers()]
        return {
            "weights": self.fingerprint(),
            "class": f"{type(self.network).__module__}.{type(self.network).__qualname__}",
            "network": repr(self.network),
            "settings": network_settings(self.network),
            "dtype": str(self.dtype),
            "renormalize": renormalize,
        }

    def fingerprint(self) -> str:
        """SHA-256 of the frozen weights (computed once: they never change)."""
        if self._digest is None:
            self._digest = state_digest(self.network)
        return self._digest

    def describe(self) -> str:
        where = f"weights {self.weights!r}" if self.weights else pretrained_source(self.network)
        where = where or "weights set in Python"
        return f"teacher {type(self.network).__name__} ({where})"

    # ----------------------------------------------------------------- input statistics
    def files_read(self) -> dict[str, str]:
        return {self.weights: "the teacher's weights (teacher_weights)"} if self.weights else {}

    def set_student_normalization(self, stats: tuple[Sequence[float], Sequence[float]]) -> None:
        """Build the teacher's input re-normalisation from the student's ``(mean, std)``."""
        check_same_scale(stats, self.teacher_stats)
        self.renormalize = Renormalize(*stats, *self.teacher_stats)

    def setup(self, module: Any, stage: str) -> None:
        """Without ``student_normalization``, take the student's statistics from the datamodule."""
        if self.teacher_stats is None or self.renormalize is not None:
            return
        datamodule = module.trainer.datamodule
        if getattr(datamodule, "mean", None) is None or getattr(datamodule, "std", None) is None:
            source = "no datamodule" if datamodule is None else f"{type(datamodule).__name__} without mean/std"
            raise ValueError(f"{NO_STUDENT_STATS} but got {source}: {SET_STUDENT_STATS}")
        self.set_student_normalization(normalization_stats(datamodule, f"{type(datamodule).__name__}'s"))
        self.renormalize.to(module.device)

    # ----------------------------------------------------------------- outputs
    def forward(self, inputs: Any) -> Tensor:
        """The teacher's logits for model inputs (re-standardised and cast as in training), under ``no_grad``."""
        return self.outputs(Batch(inputs))[LOGITS]

    def outputs(self, batch: Batch) -> Outputs:
        """The teacher's logits and tapped features for ``batch``, detached, in float32 when held in half precision."""
        if self.teacher_stats is not None and self.renormalize is None:
            raise RuntimeError(
                f"{NO_STUDENT_STATS}, which a fit reads from the datamodule's mean/std: outside a Trainer, call "
                f"set_student_normalization((mean, std)) first, or {SET_STUDENT_STATS}"
            )
        if self.tap is None:
            raise RuntimeError("FrozenTeacher.bind(student, layers, num_classes) must be called before outputs().")
        batch = Batch.parse(batch).for_teacher()  # its own tokenization of the texts, when the data has one
        with torch.no_grad():
            if self.renormalize is not None:
                batch = batch.map_inputs(self.renormalize)
            if self.dtype is None:
                return batch.call(self.tap)
            cast = batch.map_inputs(lambda x: x.to(self.dtype) if x.is_floating_point() else x)
            with torch.autocast(cast.device.type, enabled=False):
                outputs = cast.call(self.tap)
            return {name: value.float() if value.is_floating_point() else value for name, value in outputs.items()}

    # ----------------------------------------------------------------- before the first step
    def check(self, module: Any, batch: Batch) -> None:
        """Finite outputs, and a trained network (see the module docstring), on the first training batch."""
        with torch.no_grad():
            logits = self.outputs(batch)[LOGITS]
        if not bool(torch.isfinite(logits).all()):
            bad = first_nonfinite(self.network.state_dict())
            cause = (
                f"its weights hold NaN/inf: {bad}; the weights file is broken (re-export it)"
                if bad
                else "its weights are finite, so the inputs push it out of range (check teacher_normalization and "
                "the datamodule's statistics, or hold the teacher in float32: teacher_dtype: null)"
            )
            raise ValueError(f"the {self.describe()} gives NaN/inf outputs on the first training batch: {cause}.")
        if self.allow_untrained or self.weights is not None or pretrained_source(self.network):
            return
        targets = Batch.parse(batch).for_teacher().targets(causal=is_causal_lm(self.network))
        if targets.labels is None:
            raise ValueError(
                f"nothing shows the {self.describe()} is trained: no weights file, no pretrained builder, and the "
                f"training data has no labels to check it against; give teacher_weights (a trained checkpoint), build "
                f"it with a pretrained builder, or set allow_untrained_teacher: true to distil from it anyway."
            )
        correct, count = _top1_hits(logits, targets)
        if count == 0:
            return
        accuracy, threshold = correct / count, chance_threshold(logits.shape[-1], count)
        if accuracy <= threshold:
            raise ValueError(
                f"the {self.describe()} looks untrained: its accuracy on the first training batch is {accuracy:.1%} "
                f"over {count} labelled samples, at chance level for {logits.shape[-1]} classes (a trained teacher is "
                f"above {threshold:.1%}); give teacher_weights (a trained checkpoint, e.g. of configs/digits/"
                f"teacher.yaml), or set allow_untrained_teacher: true to distil from it anyway."
            )


def _top1_hits(logits: Tensor, targets: Any) -> tuple[int, int]:
    """Correct top-1 predictions and labelled positions of ``logits`` (``[B, C]`` or ``[B, L, V]``)."""
    if targets.sequence:
        mask = targets.mask("labelled")
        labels = targets.aligned_labels()
        predictions = logits.argmax(-1)
        return int((predictions == labels)[mask].sum()), int(mask.sum())
    labels = targets.labels
    labelled = labels != -100
    return int((logits.argmax(-1) == labels)[labelled].sum()), int(labelled.sum())
