"""``TeacherEnsemble``: several frozen teachers teach at once.

Multi-teacher distillation (Hinton et al. 2015 distil an ensemble; You et al., KDD 2017, "Learning from Multiple
Teacher Networks"): the student learns from the teachers' averaged soft targets, or from each teacher through its
own terms. The ensemble is a :class:`~kd_lightning.teachers.base.TeacherSource` like any other, so every mode that
accepts a trained teacher accepts it, unchanged.

Outputs, for a batch: ``"logits"`` — the teachers' combination (``average="logits"``: the weighted mean of their
logits; ``average="probabilities"``: the log of the weighted mean of their softmax at temperature 1, so a KD term at
``T = 1`` matches exactly the mean of the teachers' distributions) — and every teacher's own outputs under
``"<name>:logits"`` and ``"<name>:<layer>"``. A term reads the combination with ``teacher: logits`` and one teacher
with ``teacher: "t1:logits"`` or ``teacher: "t1:layer3"`` (feature terms always name their teacher).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.taps import LOGITS
from kd_lightning.teachers.base import EXTERNAL, Outputs, TeacherSource
from kd_lightning.teachers.frozen import FrozenTeacher

SEPARATOR = ":"
AVERAGES = ("logits", "probabilities")


def _named(teachers: Sequence[nn.Module] | Mapping[str, nn.Module]) -> dict[str, nn.Module]:
    named = dict(teachers) if isinstance(teachers, Mapping) else {f"t{i}": net for i, net in enumerate(teachers)}
    if len(named) < 2:
        raise ValueError(
            f"expected at least two teachers in a TeacherEnsemble but got {len(named)}; for one teacher give it as the "
            f"module's teacher directly."
        )
    for name in named:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"expected teacher names that are Python identifiers (used in log keys) but got {name!r}.")
    return named


class TeacherEnsemble(TeacherSource):
    """Several frozen teachers as one source (see the module docstring).

    Args:
        teachers: a list (named ``t0``, ``t1``, ...) or a dict ``{name: teacher}`` of teachers: networks (frozen
            with the weights of ``weights``) or teacher sources (a :class:`FrozenTeacher` with its own settings, a
            :class:`~kd_lightning.teachers.cached.CachedTeacher`).
        weights: weights files of the teachers given as networks, in the same order (``None`` entries keep a network's
            current weights); ``None``: none.
        average: ``"logits"`` or ``"probabilities"`` (see the module docstring).
        mixing: each teacher's weight in the combination (normalised to sum to 1); ``None``: equal.
        allow_untrained: distil from networks even when nothing shows they are trained.

    Example:
        >>> from kd_lightning.models import DigitsCNN
        >>> ensemble = TeacherEnsemble([DigitsCNN(width=4), DigitsCNN(width=8)], allow_untrained=True)
        >>> ensemble.bind(DigitsCNN(width=2), ["logits", "t1:logits"], 10)
        >>> sorted(ensemble.outputs(Batch(torch.randn(2, 1, 8, 8))))
        ['logits', 't0:logits', 't1:logits']
    """

    kind = EXTERNAL
    in_checkpoint = False

    def __init__(
        self,
        teachers: Sequence[nn.Module] | Mapping[str, nn.Module],
        weights: Sequence[str | Path | None] | None = None,
        average: str = "logits",
        mixing: Sequence[float] | None = None,
        allow_untrained: bool = False,
    ) -> None:
        super().__init__()
        named = _named(teachers)
        if average not in AVERAGES:
            raise ValueError(f"expected average to be one of {list(AVERAGES)} but got {average!r}.")
        files = list(weights) if weights is not None else [None] * len(named)
        if len(files) != len(named):
            raise ValueError(
                f"expected one weights entry per teacher ({len(named)}: {list(named)}) but got {len(files)}; use null "
                f"for a teacher whose weights are already set."
            )
        members = {}
        for (name, teacher), path in zip(named.items(), files, strict=True):
            if isinstance(teacher, TeacherSource):
                if teacher.kind != EXTERNAL:
                    raise TypeError(
                        f"expected trained teachers in a TeacherEnsemble but {name!r} is a {type(teacher).__name__}, "
                        f"a copy of the student; use it alone with TemporalSelfDistillation."
                    )
                if path is not None:
                    raise ValueError(f"teacher {name!r} is a {type(teacher).__name__}: give its weights there.")
                members[name] = teacher
            else:
                members[name] = FrozenTeacher(teacher, weights=path, allow_untrained=allow_untrained)
        mixing = [1.0] * len(members) if mixing is None else [float(value) for value in mixing]
        if len(mixing) != len(members) or min(mixing) < 0 or sum(mixing) <= 0:
            raise ValueError(
                f"expected mixing to be {len(members)} non-negative weights, not all 0, but got {list(mixing)}."
            )
        self.members = nn.ModuleDict(members)
        self.average = average
        self.register_buffer("mixing", torch.tensor(mixing) / sum(mixing), persistent=False)
        self._layers: dict[str, list[str]] = {}

    # ----------------------------------------------------------------- what it is
    def bind(self, student: nn.Module, layers: Sequence[str], num_classes: int) -> None:
        """Route each output the terms read to its teacher: ``"<name>:<layer>"``; the combined ``"logits"``."""
        per_member: dict[str, list[str]] = {name: [LOGITS] for name in self.members}
        for layer in layers:
            if layer == LOGITS:
                continue
            name, separator, inner = layer.partition(SEPARATOR)
            if not separator or name not in self.members:
                raise ValueError(
                    f"a term reads the teacher output {layer!r} but an ensemble's outputs are 'logits' (the "
                    f"combination) or '<teacher>:<output>' for one of its teachers {list(self.members)}, e.g. "
                    f"'{next(iter(self.members))}:{inner or layer}'."
                )
            per_member[name].append(inner)
        for name, member in self.members.items():
            member.bind(student, list(dict.fromkeys(per_member[name])), num_classes)
        self._layers = per_member

    def networks(self) -> dict[str, nn.Module]:
        return {name: network for name, member in self.members.items() for network in member.networks().values()}

    def member_names(self) -> list[str]:
        return list(self.members)

    def tapped(self) -> list[tuple[str, nn.Module, Any]]:
        return [
            (f"teacher.members.{name}.{path.split('.', 1)[1]}", network, tap)
            for name, member in self.members.items()
            for path, network, tap in member.tapped()
        ]

    def identity(self) -> dict[str, Any]:
        members = {name: member.identity() for name, member in self.members.items()}
        return {"members": members, "average": self.average, "mixing": self.mixing.tolist()}

    def fingerprint(self) -> str | None:
        prints = [member.fingerprint() for member in self.members.values()]
        return hashlib.sha256("".join(p or "" for p in prints).encode()).hexdigest()

    def files_read(self) -> dict[str, str]:
        return {
            path: f"{what} of ensemble member {name!r}"
            for name, member in self.members.items()
            for path, what in member.files_read().items()
        }

    def describe(self) -> str:
        return "teacher ensemble of " + ", ".join(f"{name}: {m.describe()}" for name, m in self.members.items())

    # ----------------------------------------------------------------- the fit
    def setup(self, module: Any, stage: str) -> None:
        for member in self.members.values():
            member.setup(module, stage)

    def check(self, module: Any, batch: Batch) -> None:
        for member in self.members.values():
            member.check(module, batch)

    def on_fit_start(self, module: Any) -> None:
        for member in self.members.values():
            member.on_fit_start(module)

    def on_train_epoch_start(self, module: Any) -> None:
        for member in self.members.values():
            member.on_train_epoch_start(module)

    def teardown(self, module: Any, stage: str) -> None:
        for member in self.members.values():
            member.teardown(module, stage)

    def before_batch_transfer(self, batch: Any) -> None:
        for member in self.members.values():
            member.before_batch_transfer(batch)

    # ----------------------------------------------------------------- outputs
    def combine(self, logits: Sequence[Tensor]) -> Tensor:
        """The teachers' logits ``[B, ..., C]`` combined (see ``average``), in float32."""
        stacked = torch.stack([value.float() for value in logits])
        weights = self.mixing.to(stacked.device).view(-1, *([1] * (stacked.ndim - 1)))
        if self.average == "logits":
            return (weights * stacked).sum(0)
        return torch.logsumexp(stacked.log_softmax(-1) + weights.log(), dim=0)

    def outputs(self, batch: Batch) -> Outputs:
        outputs: Outputs = {}
        logits = []
        for name, member in self.members.items():
            own = member.outputs(batch)
            logits.append(own[LOGITS])
            outputs.update({f"{name}{SEPARATOR}{key}": value for key, value in own.items()})
        outputs[LOGITS] = self.combine(logits)
        return outputs

    def member_logits(self, batch: Batch) -> dict[str, Tensor]:
        return {name: member.eval_logits(batch) for name, member in self.members.items()}

    def eval_logits(self, batch: Batch) -> Tensor | None:
        return self.combine(list(self.member_logits(batch).values()))

    def forward(self, inputs: Any) -> Tensor:
        """The combined logits for model inputs."""
        return self.eval_logits(Batch(inputs))
