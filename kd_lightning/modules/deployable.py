"""``Deployable``: one network a module can deploy or compare against — what the report measures and the export
writes. Every mode answers :meth:`~kd_lightning.modules.DistillationModule.deployables`, so nothing outside
``modules/`` needs to know the modes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

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
    """One network of a module.

    Attributes:
        name: column title, plot label and export name (``"teacher"``, ``"student"``, a peer's name,
            ``"exit layer1"``).
        role: ``"teacher"``, ``"peer"``, ``"student"`` (the deployed network) or ``"exit"`` (an early-exit student).
        network: the network.
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

    @property
    def key(self) -> str:
        """The name as a logged key part or file name: ``"exit layer2.1"`` -> ``"exit_layer2_1"``."""
        return key_of(self.name)


def key_of(name: str) -> str:
    """A name as a logged key part: ``"exit layer2.1"`` -> ``"exit_layer2_1"``."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "network"
