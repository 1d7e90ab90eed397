"""``OnlineDistillation``: a teacher and a student, or a cohort of peers, trained together from scratch.

Online KD: the teacher learns from the labels, the student from the labels and the current teacher's detached outputs.
Deep Mutual Learning (Zhang et al., CVPR 2018): with ``mutual=True`` every peer also learns from every other peer.
KDCL (Guo et al., CVPR 2020): ``ensemble_terms`` teach every peer from the peers' mean logits (detached).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import Batch
from kd_lightning.core.networks import check_not_wrapped
from kd_lightning.core.objective import DistillTerm, Objective, Target
from kd_lightning.core.taps import LOGITS, FeatureTap
from kd_lightning.losses import KDLoss
from kd_lightning.modules._agreement import check_classes
from kd_lightning.modules._guards import check_something_to_learn
from kd_lightning.modules.base import DistillationModule, accuracy_metrics
from kd_lightning.modules.deployable import STUDENT_METRICS, Deployable

PeerOutputs = dict[str, dict[str, Tensor]]
PEER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENSEMBLE = "ensemble"


def _named_peers(peers: Mapping[str, nn.Module] | Sequence[nn.Module]) -> dict[str, nn.Module]:
    """``{name: network}`` from a dict, or from a list as ``peer0``, ``peer1``, ...; checks names and count."""
    named = dict(peers) if isinstance(peers, Mapping) else {f"peer{i}": net for i, net in enumerate(peers)}
    for name, net in named.items():
        if not isinstance(net, nn.Module):
            raise TypeError(f"expected every peer to be an nn.Module but peer {name!r} is {type(net).__name__}.")
        check_not_wrapped(net, f"peers.{name}")
        if not isinstance(name, str) or not PEER_NAME.fullmatch(name):
            raise ValueError(f"expected peer names that are Python identifiers (used in log keys) but got {name!r}.")
    if len(named) < 2:
        raise ValueError(
            f"expected a cohort of at least two peers but got {len(named)} ({list(named)}); online distillation "
            f"trains a teacher and a student (or several peers) together: add another network to peers."
        )
    if len({id(net) for net in named.values()}) < len(named):
        raise ValueError("expected distinct networks as peers but the same module was given twice; build one per peer.")
    return named


def _terms_per_learner(
    terms: Sequence[DistillTerm] | Mapping[str, Sequence[DistillTerm]] | None, learners: list[str], mutual: bool
) -> dict[str, list[DistillTerm]]:
    """The terms each learner uses against each of its sources; names are made unique (as ``Objective`` does)."""
    if terms is None:
        terms = [DistillTerm(KDLoss(temperature=1.0))]
    if isinstance(terms, Mapping):
        if set(terms) != set(learners):
            fix = (
                "with mutual=True every peer learns from the others: give each peer a list ([] for none)"
                if mutual
                else "without mutual=True only the student learns from the other peers: give a plain list"
            )
            raise ValueError(f"expected terms for the peers {learners} but got keys {sorted(terms)}; {fix}.")
        per_learner = {learner: list(terms[learner]) for learner in learners}
    else:
        per_learner = {learner: list(terms) for learner in learners}
    for learner_terms in per_learner.values():
        Objective(learner_terms)  # checks the items are DistillTerms and renames duplicates, in place
    return per_learner


def _ensemble_terms(terms: Sequence[DistillTerm] | None) -> list[DistillTerm]:
    """Validated ensemble terms: the ensemble target only has logits."""
    terms = list(terms or [])
    Objective(terms)
    for term in terms:
        if term.teacher_names != (LOGITS,):
            raise ValueError(
                f"ensemble term {term.name!r} reads {list(term.teacher_names)} of the target but the ensemble target "
                f"has only logits; set teacher: logits (feature terms between peers go in terms)."
            )
    return terms


def _copies(terms: list[DistillTerm], keys: list[str] | None = None) -> nn.ModuleDict:
    """Fresh copies of ``terms`` (with fresh adapters) keyed by ``keys``, by default the term names."""
    keys = [term.name for term in terms] if keys is None else keys
    return nn.ModuleDict({key: copy.deepcopy(term) for key, term in zip(keys, terms, strict=True)})


def _links_of(learner: str, terms: list[DistillTerm], peers: list[str]) -> nn.ModuleDict:
    """``{term name: {source peer: copy of the term}}``: each (learner, source) pair owns its copy and adapters."""
    sources = [peer for peer in peers if peer != learner]
    return nn.ModuleDict({term.name: _copies([term] * len(sources), keys=sources) for term in terms})


def _terms_in(module: nn.Module) -> list[DistillTerm]:
    """Every DistillTerm held (at any depth) by ``module``."""
    return [sub for sub in module.modules() if isinstance(sub, DistillTerm)]


def _unique_log_keys(keys: list[str]) -> None:
    """Raise when two loss components would be logged under the same key."""
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"loss names {repeated} would be logged twice; give the terms distinct name= values.")


class OnlineDistillation(DistillationModule):
    """Train a cohort of networks together; deploy the one named ``student``.

    Loss of peer ``k`` (every peer is trained; ``train/loss`` is the sum over peers, one optimizer for all):
    ``ce_weight * CE(p_k, y) + sum_i mean_{l in S(k)} w_i * loss_i(k, l) + sum_j w_j * loss_j(k, ensemble)``,
    where the sources ``l`` and the ensemble are detached targets, so peer ``k``'s gradient comes only from its own
    loss. Online KD (``mutual=False``): ``S(student)`` = every other peer, the others learn from the labels only.
    Deep Mutual Learning (``mutual=True``; Zhang, Xiang, Hospedales, Lu, CVPR 2018, "Deep Mutual Learning"):
    ``S(k)`` = every peer but ``k``, and the loss averages ``KL(p_l || p_k)`` over the ``K - 1`` others, as here.
    The ensemble is the peers' mean logits ``[B, C]``, taught to every peer by ``ensemble_terms`` (KDCL-naive; Guo et
    al., CVPR 2020, "Online Knowledge Distillation via Collaborative Learning").

    Logged: ``train/ce_<peer>``, ``train/<term>_<peer>``, ``train/ensemble_<term>_<peer>``, ``train/loss``;
    ``val|test/acc_<peer>`` for every peer; ``val|test/acc`` of the student, and ``teacher_acc``, ``agreement``, ``kl``
    against the mean logits of the other peers (the teacher itself when the cohort is a teacher and a student). Peers
    are learners, not teacher sources: the module keeps its own links between them.
    Checkpoints hold every peer: the student under ``student.`` (as in every module, for export) and the others
    under ``peers.<name>.``; per-pair loss adapters under ``links.<learner>.<term>.<source>.``.

    Args:
        peers: the cohort, ``{name: network}`` or a list (named ``peer0``, ``peer1``, ...); names are identifiers.
        student: name of the peer to deploy (``forward``, export, ``val/acc``).
        mutual: every peer learns from all the others (DML) instead of the student alone learning.
        terms: distillation terms between peers (response, feature or relation; ``student`` in a term is the learner,
            ``teacher`` the source); a list applies to every learner, a dict ``{learner: [terms]}`` gives each
            learner its own (e.g. layer names of different architectures). ``None``: DML's ``KL(p_l || p_k)``,
            ``KDLoss(temperature=1)`` with weight 1. ``[]``: no peer-to-peer terms.
        ensemble_terms: terms from the ensemble's logits to every peer (``teacher`` must read ``logits``).
        ce_weight: weight of every peer's hard-label cross-entropy (the teachers' too).
        **kwargs: the shared settings of every mode (``num_classes``, ``optimizer`` — applied to all peers and loss
            adapters —, ``lr_scheduler``, ``label_smoothing``, ``on_nonfinite``, ``compile`` — ``true`` or peer
            names —, ``channels_last``): see :class:`~kd_lightning.modules.DistillationModule`.

    Example:
        >>> from kd_lightning.models import DigitsCNN, DigitsMLP
        >>> module = OnlineDistillation(peers={"teacher": DigitsCNN(width=8), "student": DigitsMLP()})
        >>> x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
        >>> sorted(module.compute_losses([x, y]))
        ['ce_student', 'ce_teacher', 'kd_student']
    """

    def __init__(
        self,
        peers: Mapping[str, nn.Module] | Sequence[nn.Module],
        student: str = "student",
        mutual: bool = False,
        terms: Sequence[DistillTerm] | Mapping[str, Sequence[DistillTerm]] | None = None,
        ensemble_terms: Sequence[DistillTerm] | None = None,
        ce_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        cohort = _named_peers(peers)
        if student not in cohort:
            raise ValueError(f"expected student to name one of the peers {list(cohort)} but got student={student!r}.")
        super().__init__(student=cohort[student], terms=[], ce_weight=ce_weight, **kwargs)
        self.student_name, self.peer_names, self.mutual = student, list(cohort), mutual
        self.peers = nn.ModuleDict({name: net for name, net in cohort.items() if name != student})
        per_learner = _terms_per_learner(terms, self.peer_names if mutual else [student], mutual)
        self.links = nn.ModuleDict(
            {name: _links_of(name, per_learner.get(name, []), self.peer_names) for name in self.peer_names}
        )
        shared = _ensemble_terms(ensemble_terms)
        self.ensemble_links = nn.ModuleDict({name: _copies(shared) for name in self.peer_names})
        self.taps = {
            name: FeatureTap(net, self.layers_read(name), role=f"peer {name!r}") for name, net in cohort.items()
        }
        self.student_tap = self.taps[student]
        self.val_peer_acc = accuracy_metrics(self.peer_names, self.num_classes)
        self.test_peer_acc = accuracy_metrics(self.peer_names, self.num_classes)
        _unique_log_keys(self.loss_names())
        weights = [
            term.weight
            for module in (*self.links.values(), *self.ensemble_links.values())
            for term in _terms_in(module)
        ]
        check_something_to_learn(ce_weight, weights, "OnlineDistillation")
        self.save_init_arguments()

    # ----------------------------------------------------------------- the cohort
    @property
    def cohort(self) -> dict[str, nn.Module]:
        """Every peer by name, in the given order, the student included."""
        return {name: self.student if name == self.student_name else self.peers[name] for name in self.peer_names}

    def networks(self) -> dict[str, nn.Module]:
        """Every peer by name (what ``compile`` can name)."""
        return self.cohort

    def tapped_networks(self) -> list[tuple[str, nn.Module, FeatureTap]]:
        return [
            ("student" if name == self.student_name else f"peers.{name}", network, self.taps[name])
            for name, network in self.cohort.items()
        ]

    def layers_read(self, name: str) -> list[str]:
        """The outputs of peer ``name`` that the loss terms read, as learner and as source."""
        names: list[str] = []
        for learner, by_term in self.links.items():
            for by_source in by_term.values():
                for source, term in by_source.items():
                    if learner == name:
                        names.extend(term.student_names)
                    if source == name:
                        names.extend(term.teacher_names)
        names.extend(layer for term in self.ensemble_links[name].values() for layer in term.student_names)
        return list(dict.fromkeys(names))

    def loss_names(self) -> list[str]:
        """The logged loss components (``train/<name>``), peer by peer."""
        names = []
        for peer in self.peer_names:
            names.append(f"ce_{peer}")
            names.extend(f"{term}_{peer}" for term in self.links[peer])
            names.extend(f"{ENSEMBLE}_{term}_{peer}" for term in self.ensemble_links[peer])
        return names

    def cohort_outputs(self, batch: Batch) -> PeerOutputs:
        """Every peer's logits ``[B, C]`` and tapped features: ``{peer: {"logits": ..., "<module path>": ...}}``."""
        batch = Batch.parse(batch)
        return {name: batch.call(tap) for name, tap in self.taps.items()}

    def ensemble_target(self, outputs: PeerOutputs) -> dict[str, Tensor]:
        """KDCL-naive target, detached: ``{"logits": mean_k logits_k}`` of shape ``[B, C]``."""
        return {LOGITS: torch.stack([out[LOGITS].float() for out in outputs.values()]).mean(0).detach()}

    # ----------------------------------------------------------------- losses
    def peer_losses(self, name: str, outputs: PeerOutputs, target: Target) -> dict[str, Tensor]:
        """Peer ``name``'s weighted losses: ``{"ce_<name>", "<term>_<name>", "ensemble_<term>_<name>"}`` (no
        ``ce_<name>`` with ``ce_weight=0``)."""
        own, epoch = outputs[name], self.current_epoch
        losses = {f"ce_{name}": value for value in self.objective(own, None, target).values()}
        for term_name, by_source in self.links[name].items():
            values = [term(own, outputs[source], target, epoch) for source, term in by_source.items()]
            losses[f"{term_name}_{name}"] = torch.stack(values).mean()
        if len(self.ensemble_links[name]):
            ensemble = self.ensemble_target(outputs)
            for term_name, term in self.ensemble_links[name].items():
                losses[f"{ENSEMBLE}_{term_name}_{name}"] = term(own, ensemble, target, epoch)
        return losses

    def cohort_losses(self, outputs: PeerOutputs, target: Target) -> dict[str, Tensor]:
        """Every peer's losses in one dict (their sum is the training loss)."""
        return {
            key: value for name in self.peer_names for key, value in self.peer_losses(name, outputs, target).items()
        }

    def compute_losses(self, batch: Batch) -> dict[str, Tensor]:
        batch = Batch.parse(batch)
        return self.cohort_losses(self.cohort_outputs(batch), self.targets(batch))

    def deployables(self, example_input: Any = None) -> list[Deployable]:
        """Every peer with its own accuracy; the student also with agreement and KL against the others' mean (the
        teacher's, in a teacher-student cohort)."""
        others = [name for name in self.peer_names if name != self.student_name]
        role = "teacher" if len(others) == 1 else "peer"
        rows = [Deployable(name, role, self.peers[name], {"acc": f"test/acc_{name}"}) for name in others]
        reference = "the teacher" if len(others) == 1 else "the other peers' mean"
        metrics = {**STUDENT_METRICS, "acc": f"test/acc_{self.student_name}"}
        return [*rows, Deployable(self.student_name, "student", self.student, metrics, reference, others)]

    # ----------------------------------------------------------------- evaluation
    def reference_logits(self, logits: dict[str, Tensor]) -> Tensor:
        """What the student is compared with in val/test: the mean logits ``[B, C]`` of the other peers."""
        return torch.stack([logits[name].float() for name in self.peers]).mean(0)

    def evaluation_logits(self, batch: Batch, stage: str) -> tuple[Tensor, Tensor]:
        """One pass of every peer: logs ``<stage>/acc_<peer>`` (class labels only); returns the student's and the
        reference logits."""
        logits = {name: batch.call(tap)[LOGITS] for name, tap in self.taps.items()}
        labels = batch.labels
        if labels is not None and labels.ndim == 1:
            metrics = self.val_peer_acc if stage == "val" else self.test_peer_acc
            for name, value in logits.items():
                metrics[name].update(value, labels)
                self.log(f"{stage}/acc_{name}", metrics[name], batch_size=len(labels))
        return logits[self.student_name], self.reference_logits(logits)

    # ----------------------------------------------------------------- checks before training
    @torch.no_grad()
    def dry_run(self, batch: Batch) -> None:
        """Run every peer and every loss once in eval mode: checks classes and layer shapes, builds adapters."""
        batch = Batch.parse(batch)
        with self.temporarily_in_eval_mode():
            outputs = self.cohort_outputs(batch)
            self.check_cohort_classes(outputs)
            self.cohort_losses(outputs, self.targets(batch))

    def check_cohort_classes(self, outputs: PeerOutputs) -> None:
        """Raise when the peers predict different numbers of classes, or the student not ``num_classes``."""
        classes = {name: out[LOGITS].shape[-1] for name, out in outputs.items()}
        if len(set(classes.values())) > 1:
            found = ", ".join(f"{name} {count}" for name, count in classes.items())
            raise ValueError(
                f"expected every peer to predict the same classes but the numbers of outputs are: {found}; "
                f"set the same num_classes (vocab_size for language models) in every peer's init_args."
            )
        check_classes(self, outputs[self.student_name], None)
