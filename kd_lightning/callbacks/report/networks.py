"""Which networks a distillation report compares, and which logged test metrics belong to each of them.

Every mode has its own answer:

* ``Classifier`` (and any module with one network): the network alone.
* ``OfflineDistillation``: the frozen teacher and the student.
* ``OnlineDistillation``: every peer (``test/acc_<peer>``), the deployed ``student`` last; the student's agreement
  and KL are against the other peers' mean logits (the teacher's, in a teacher-student cohort).
* ``SelfDistillation`` with a temporal teacher: the student, and the teacher's copy of it when it can predict (an EMA
  copy, a snapshot once one is taken; PS-KD has no network).
* ``SelfDistillation`` with BYOT exits: the full network, then one early-exit network per exit
  (:meth:`~kd_lightning.modules.SelfDistillation.exit_model`, ``test/acc_exit_<layer>``).

Headlines compare each student with each of its references: the student with the teacher (or every other peer),
every exit network with the full network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from kd_lightning.modules import OnlineDistillation, SelfDistillation
from kd_lightning.modules.exits import exit_key

STUDENT_METRICS = {
    "acc": "test/acc",
    "ppl": "test/ppl",
    "agreement": "test/agreement",
    "kl": "test/kl",
    "cosine": "test/cosine",
}
"""Report field -> logged test metric of the deployed student."""


@dataclass
class Deployable:
    """One network of the report.

    Attributes:
        name: column title and plot label (``"teacher"``, ``"student"``, a peer's name, ``"exit layer1"``).
        role: ``"teacher"``, ``"peer"``, ``"student"`` (the deployed network) or ``"exit"`` (an early-exit student).
        network: the network to measure.
        metrics: report field (``acc``, ``ppl``, ``agreement``, ``kl``, ``cosine``) -> logged test metric key.
        reference: what this network's agreement, KL and cosine are measured against (``"the teacher"``).
        compared_with: names of the networks this one's headlines compare it with.
    """

    name: str
    role: str
    network: nn.Module
    metrics: dict[str, str]
    reference: str | None = None
    compared_with: list[str] = field(default_factory=list)


def key_of(name: str) -> str:
    """A name as a logged key part: ``"exit layer2.1"`` -> ``"exit_layer2_1"``."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "network"


def deployables(pl_module: L.LightningModule) -> list[Deployable]:
    """The networks to report for ``pl_module``, references first and the deployed student after them."""
    if isinstance(pl_module, OnlineDistillation):
        return _cohort(pl_module)
    if isinstance(pl_module, SelfDistillation) and pl_module.exits is not None:
        return _exits(pl_module)
    student = pl_module.student
    networks = pl_module.networks() if hasattr(pl_module, "networks") else {"student": student}
    teachers = [(name, net) for name, net in networks.items() if net is not student and _can_predict(pl_module)]
    if not teachers:
        return [Deployable("network", "student", student, dict(STUDENT_METRICS))]
    rows = [Deployable(name, "teacher", net, {"acc": "test/teacher_acc"}) for name, net in teachers]
    compared = [row.name for row in rows]
    return [*rows, Deployable("student", "student", student, dict(STUDENT_METRICS), "the teacher", compared)]


def _can_predict(pl_module: L.LightningModule) -> bool:
    """Whether the module's teacher predicts test inputs (a temporal teacher before its first snapshot does not)."""
    return bool(getattr(getattr(pl_module, "teacher", None), "is_teaching", True))


def _cohort(pl_module: OnlineDistillation) -> list[Deployable]:
    """Every peer with its own accuracy; the student also with agreement and KL against the others' mean."""
    others = [name for name in pl_module.peer_names if name != pl_module.student_name]
    rows = [
        Deployable(
            name,
            "teacher" if pl_module.peers[name] is pl_module.teacher else "peer",
            pl_module.peers[name],
            {"acc": f"test/acc_{name}"},
        )
        for name in others
    ]
    reference = "the teacher" if len(others) == 1 else "the other peers' mean"
    metrics = {**STUDENT_METRICS, "acc": f"test/acc_{pl_module.student_name}"}
    student = Deployable(pl_module.student_name, "student", pl_module.student, metrics, reference, others)
    return [*rows, student]


def _exits(pl_module: SelfDistillation) -> list[Deployable]:
    """The full network, then every exit network that can be cut out of it (a warning for those that cannot)."""
    rows = [Deployable("full network", "student", pl_module.student, dict(STUDENT_METRICS))]
    for layer in pl_module.exits.layers:
        try:
            network = pl_module.exit_model(layer)
        except ValueError as error:
            rank_zero_warn(f"the report leaves out the exit at {layer!r}: {error}")
            continue
        metrics = {"acc": f"test/acc_exit_{exit_key(layer)}"}
        rows.append(Deployable(f"exit {layer}", "exit", network, metrics, None, ["full network"]))
    return rows
