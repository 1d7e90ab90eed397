"""Contrastive representation distillation (CRD): an NCE contrast of each sample against memory-bank negatives.

Tian, Krishnan, Isola, ICLR 2020, "Contrastive Representation Distillation". The maths follows the authors' code,
HobbitLong/RepDistiller (``crd/criterion.py``: ``CRDLoss``, ``ContrastLoss``, ``Embed``; ``crd/memory.py``:
``ContrastMemory``, ``AliasMethod``), with its defaults (``feat_dim`` 128, ``nce_k`` 16384, ``nce_t`` 0.07,
``nce_m`` 0.5): use with weight 0.8 and cross-entropy weight 1 (``-r 1 -a 0 -b 0.8``).

Unlike the batch-local losses, CRD keeps per-sample state across steps: two memory banks ``[N, feat_dim]`` (one
embedding per training sample and network, ``N`` the training set's size) and the NCE normalising constants ``Z``.
So :class:`CRDLoss` needs each sample's dataset index and ``N``, and, to draw each sample's negatives from the
other classes as RepDistiller's CIFAR-100 runs do (``--mode exact``), the class of every training sample: it declares
``batch_context = ("index", "dataset_size", "dataset_labels")`` and the :class:`~kd_lightning.DistillTerm` passes
them (the datamodule must return indices: ``return_index: true``; its dataset must expose ``labels`` or ``targets``).
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.losses._checks import check_ndim, check_positive, check_same_batch, full_precision
from kd_lightning.losses.adapters import LazyAdapter
from kd_lightning.losses.base import DistillationLoss

__all__ = ["CRDLoss", "crd_loss", "nce_contrast_loss", "update_memory_bank"]

EPS = 1e-7
"""RepDistiller's ``eps`` of the NCE ratios (``crd/criterion.py``)."""

_MASK64 = (1 << 64) - 1
_EVAL_STREAM = 1  # the negatives of an evaluation call come from their own stream: they never advance the training's
NEGATIVES = ("other_classes", "uniform")
"""How :class:`CRDLoss` draws negatives: RepDistiller's ``--mode exact`` dataset sampling, or ``ContrastMemory``'s."""


def _mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps): the same on every machine and Python version."""
    state = 0
    for value in values:
        state = (state + (value & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def _contrast_scores(
    anchor: Tensor, memory: Tensor, contrast_idx: Tensor, nce_t: float, positive: Tensor | None = None
) -> Tensor:
    """``exp(<memory[contrast_idx[i, j]], anchor[i]> / nce_t)`` ``[B, K+1]``; the memory rows are constants.

    ``positive`` ``[B, F]`` replaces the bank row of column 0 (evaluation: a held-out sample has no row).

    RepDistiller gathers the ``[B, K+1, F]`` rows and multiplies them with the anchors; when the bank has fewer rows
    than ``(K+1) * F`` (CIFAR-100: 50000 < 16385 * 128), all ``[B, N]`` dot products then a gather are the same
    values (up to rounding) with far less memory (12.8 MB instead of 537 MB at batch 64). The product saves the bank
    for the backward pass: a copy, as the bank is updated in place before it.
    """
    memory = memory.detach().float()
    if memory.shape[0] < contrast_idx.shape[1] * memory.shape[1]:
        saved = memory.clone() if anchor.requires_grad else memory
        dots = (anchor @ saved.t()).gather(1, contrast_idx)
    else:
        dots = torch.bmm(memory[contrast_idx], anchor.unsqueeze(2)).squeeze(2)
    if positive is not None:
        dots = torch.cat([(anchor * positive).sum(dim=1, keepdim=True), dots[:, 1:]], dim=1)
    return torch.exp(dots / nce_t)


def nce_contrast_loss(scores: Tensor, dataset_size: int) -> Tensor:
    """The NCE loss of one side of CRD (RepDistiller ``ContrastLoss``, the paper's Eq. 18).

    With ``P = scores`` ``[B, K+1]`` (column 0 the positive pair, columns 1..K the negatives, already divided by
    ``Z``), the noise probability ``Pn = 1 / N`` and ``eps = 1e-7``::

        loss = -1/B * sum_i [ log(P_i0 / (P_i0 + K Pn + eps)) + sum_{j>=1} log(K Pn / (P_ij + K Pn + eps)) ]

    Args:
        scores: normalised contrast scores ``[B, K+1]``, positive first.
        dataset_size: ``N``, the number of training samples (the memory bank's rows).

    Returns:
        Scalar float32 tensor.

    Example:
        >>> round(nce_contrast_loss(torch.tensor([[1.0, 0.5, 0.5]]), dataset_size=4).item(), 4)
        1.7918
    """
    batch, k = scores.shape[0], scores.shape[1] - 1
    noise = k / float(dataset_size)
    positive, negative = scores[:, 0], scores[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + EPS))
    log_d0 = torch.log(noise / (negative + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / batch


def _crd(
    student_embed: Tensor,
    teacher_embed: Tensor,
    memory_student: Tensor,
    memory_teacher: Tensor,
    contrast_idx: Tensor,
    nce_t: float,
    normalisers: Tensor | None,
    live_positives: bool = False,
) -> tuple[Tensor, Tensor]:
    """The CRD loss and the ``Z`` it used (``[2]``: student side, teacher side; estimated where not positive).

    ``live_positives``: the positive of each side is the other network's embedding of the sample, not a bank row.
    """
    pos_s, pos_t = (teacher_embed.float(), student_embed.float()) if live_positives else (None, None)
    dataset_size = memory_student.shape[0]
    with full_precision(student_embed):
        scores_s = _contrast_scores(student_embed.float(), memory_teacher, contrast_idx, nce_t, pos_s)  # out_v1
        scores_t = _contrast_scores(teacher_embed.float(), memory_student, contrast_idx, nce_t, pos_t)  # out_v2
        estimate = torch.stack([scores_s.detach().mean(), scores_t.detach().mean()]) * dataset_size
        z = estimate if normalisers is None else torch.where(normalisers > 0, normalisers.float(), estimate)
        loss = nce_contrast_loss(scores_s / z[0], dataset_size) + nce_contrast_loss(scores_t / z[1], dataset_size)
    return loss, z


def crd_loss(
    student_embed: Tensor,
    teacher_embed: Tensor,
    memory_student: Tensor,
    memory_teacher: Tensor,
    contrast_idx: Tensor,
    nce_t: float = 0.07,
    normalisers: Tensor | None = None,
) -> Tensor:
    """Contrastive representation distillation: the two-sided NCE loss of embeddings against memory banks.

    Tian, Krishnan, Isola, ICLR 2020, "Contrastive Representation Distillation" (RepDistiller ``CRDLoss`` /
    ``ContrastMemory.forward`` without the memory update; :class:`CRDLoss` adds the embeddings, the banks, the
    negatives and the update).

    With L2-normalised embeddings ``s_i`` (student) and ``t_i`` (teacher), memory banks ``M^s`` and ``M^t``
    ``[N, F]`` and ``contrast_idx`` ``[B, K+1]`` (column 0 the sample's own index, then ``K`` negatives)::

        P^s_ij = exp(<M^t[c_ij], s_i> / T) / Z^s        (student anchor, teacher memory)
        P^t_ij = exp(<M^s[c_ij], t_i> / T) / Z^t        (teacher anchor, student memory)
        loss = nce(P^s) + nce(P^t)                       (:func:`nce_contrast_loss`, Pn = 1 / N)

    ``Z = N * mean_ij exp(...)`` of a batch is RepDistiller's estimate, which it fixes on the first batch; pass the
    fixed values as ``normalisers`` (entries <= 0 are estimated from this batch). The memory rows are constants (no
    gradient reaches them); the gradient flows into both embeddings.

    Args:
        student_embed: student embeddings ``[B, F]`` (L2-normalised).
        teacher_embed: teacher embeddings ``[B, F]`` (L2-normalised; the teacher-side embedding head trains).
        memory_student: the bank of student embeddings ``[N, F]``.
        memory_teacher: the bank of teacher embeddings ``[N, F]``.
        contrast_idx: ``[B, K+1]`` indices into the banks, column 0 the positive.
        nce_t: the temperature ``T`` (> 0).
        normalisers: ``[Z^s, Z^t]`` ``[2]``, or ``None`` to estimate both from this batch.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> s = t = F.normalize(torch.ones(2, 4), dim=1)
        >>> memory = F.normalize(torch.ones(8, 4), dim=1)
        >>> round(crd_loss(s, t, memory, memory, torch.tensor([[0, 5, 6], [1, 7, 2]])).item(), 4)
        3.8191
    """
    check_positive("nce_t", nce_t)
    for name, embed in (("student_embed", student_embed), ("teacher_embed", teacher_embed)):
        check_ndim(embed, (2,), "crd_loss", name)
    check_same_batch(student_embed, teacher_embed)
    if contrast_idx.ndim != 2 or contrast_idx.shape[0] != student_embed.shape[0] or contrast_idx.shape[1] < 2:
        raise ValueError(
            f"crd_loss expected contrast_idx of shape [B, K+1] = [{student_embed.shape[0]}, >= 2] (the positive, then "
            f"K negatives) but got {tuple(contrast_idx.shape)}."
        )
    return _crd(student_embed, teacher_embed, memory_student, memory_teacher, contrast_idx, nce_t, normalisers)[0]


@torch.no_grad()
def update_memory_bank(memory: Tensor, embed: Tensor, index: Tensor, momentum: float) -> None:
    """RepDistiller's bank update, in place: ``M[i] <- normalize(momentum * M[i] + (1 - momentum) * e_i)``.

    Args:
        memory: the bank ``[N, F]`` (updated in place, any float dtype).
        embed: this batch's embeddings ``[B, F]``.
        index: the samples' rows ``[B]``.
        momentum: ``nce_m`` in ``[0, 1)``.

    Example:
        >>> memory = torch.zeros(3, 2)
        >>> update_memory_bank(memory, torch.tensor([[3.0, 4.0]]), torch.tensor([1]), momentum=0.5)
        >>> memory[1].tolist()
        [0.6000000238418579, 0.800000011920929]
    """
    mixed = memory.float()[index] * momentum + embed.detach().float() * (1 - momentum)
    mixed = mixed / mixed.pow(2).sum(dim=1, keepdim=True).pow(0.5)
    memory.index_copy_(0, index, mixed.to(memory.dtype))


class _ClassPools:
    """Each class's negatives, RepDistiller's ``cls_negative[c]``: the indices of every sample of another class, in
    class then index order; stored as the stable class sort ``order`` ``[N]``, each class's ``start`` and ``count``
    ``[C]`` (the pool of class ``c`` is ``order`` without its block ``[start_c, start_c + count_c)``)."""

    def __init__(self, labels: Tensor) -> None:
        self.labels = labels
        classes, self.klass, self.count = torch.unique(labels, return_inverse=True, return_counts=True)
        if len(classes) < 2:
            raise ValueError(
                f"CRDLoss with negatives='other_classes' draws each sample's negatives from the other classes but "
                f"every training sample has class {int(classes[0]) if len(classes) else None}; train on data of at "
                f"least two classes, or pass negatives: uniform."
            )
        self.order = torch.sort(self.klass, stable=True).indices
        self.start = torch.cumsum(self.count, 0) - self.count

    def draw(self, index: Tensor, k: int, generator: torch.Generator) -> Tensor:
        """``[B, k]`` negatives of the samples ``index`` (CPU) as ``np.random.choice(cls_negative[c], k, replace)``:
        without replacement unless ``k`` exceeds the pool."""
        klass = self.klass[index]
        pools = (len(self.labels) - self.count[klass]).tolist()
        positions = torch.zeros(len(pools), k, dtype=torch.long)
        for row, pool in enumerate(pools):
            if k > pool:
                positions[row] = torch.randint(0, pool, (k,), generator=generator)
            else:
                positions[row] = torch.randperm(pool, generator=generator)[:k]
        skip = torch.where(positions >= self.start[klass, None], self.count[klass, None], 0)
        return self.order[positions + skip]


def _linear_head(student_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> nn.Module:
    """RepDistiller's ``Embed`` without its L2 normalisation (applied by :class:`CRDLoss`): ``Linear(D, feat_dim)``."""
    return nn.Linear(student_shape[0], out_shape[0])


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"expected an integer {name} >= {minimum} but got {name}={value!r}; pass e.g. {name}=128.")


class CRDLoss(DistillationLoss):
    """Contrastive representation distillation (Tian et al. ICLR 2020), as RepDistiller trains it; weight 0.8.

    Each call:

    1. flattens the features to ``[B, D_s]`` / ``[B, D_t]`` (RepDistiller's ``feat[-1]``, the pooled penultimate
       features: tap ``pool``), maps them with two trainable linear heads to ``feat_dim`` and L2-normalises them
       (``Embed``; heads are :class:`~kd_lightning.losses.adapters.LazyAdapter` modules built from the first batch,
       trained with the student, saved in checkpoints; the teacher's features are detached before its head);
    2. draws ``K = nce_k`` negatives per sample; column 0 is the sample's own ``index``. ``negatives="other_classes"``
       (the default): among the samples of the *other* classes (``dataset_labels``), without replacement unless
       ``K`` exceeds them, as RepDistiller's CIFAR-100 runs (``CIFAR100InstanceSample``, ``--mode exact``:
       ``np.random.choice(cls_negative[target], k, replace=k > len(cls_negative[target]))``, in the dataset);
       ``negatives="uniform"``: uniformly over ``[0, N)``, with replacement (RepDistiller's ``ContrastMemory``
       fallback, ``AliasMethod`` with uniform unigrams), so a negative may be the sample itself;
    3. returns :func:`crd_loss` of the embeddings against the memory banks (student anchor against the teacher bank
       plus teacher anchor against the student bank), with ``Z`` fixed on the first training batch;
    4. in training, updates both banks at ``index`` with momentum ``nce_m`` (:func:`update_memory_bank`).

    State (all in the state dict, so a resumed run continues exactly): the heads; ``memory_student`` and
    ``memory_teacher`` ``[N, feat_dim]``, created on the first call with ``N = dataset_size`` and initialised as
    RepDistiller (uniform in ``[-stdv, stdv]``, ``stdv = 1 / sqrt(feat_dim / 3)``) from a generator seeded with
    ``seed``; ``normalisers`` (``[Z^s, Z^t]``, -1 until set); ``step``, the number of training calls. The negatives
    of training call ``step`` come from a generator seeded with ``(seed, step)``, so a resumed run draws the same.
    A fresh module restores a checkpoint with strict ``load_state_dict`` before any call. The class pools are not
    state: they are rebuilt from the ``dataset_labels`` of the first call (and again when the labels change).

    Training vs evaluation: the banks, ``Z`` and ``step`` change only when the module is in training mode and
    gradients are enabled. Otherwise (validation, the dry run) nothing changes and ``index`` is not read (a
    validation sample has no row in the training set's banks; its index, if any, counts in another split): each
    side's positive is the other network's embedding of the sample (``<s_i, t_i>`` in place of the bank row), the
    negatives are bank rows drawn uniformly, whatever ``negatives`` says, from a separate stream that never advances,
    ``Z`` is the stored one (this batch's estimate while unset, not stored). So ``val/crd`` measures how well held-out
    student embeddings pick out the teacher's among the bank's. Before the banks exist (no ``dataset_size`` seen yet)
    the loss is 0 with a zero gradient. RepDistiller computes no validation value.

    Departures from RepDistiller: its dataset draws the negatives with numpy's global generator in the loader
    workers; here they come from the seeded stream above (same distribution, other draws). Pass ``contrast_idx`` to
    use other negatives. The L2 normalisation divides by ``max(norm, 1e-12)`` (``F.normalize``), the same except for
    an all-zero embedding. The banks live where the module lives and are float32-computed; under DDP each process
    updates its own banks (the reference trains on one GPU).

    Args:
        feat_dim: size of the embeddings and of the bank rows (RepDistiller 128).
        nce_k: negatives per sample (RepDistiller 16384).
        nce_t: temperature (RepDistiller 0.07).
        nce_m: momentum of the bank update, in ``[0, 1)`` (RepDistiller 0.5).
        seed: seed of the banks' initialisation and of the negatives.
        negatives: ``"other_classes"`` (RepDistiller's ``--mode exact``; needs ``dataset_labels``) or ``"uniform"``.

    Example:
        >>> loss = CRDLoss(feat_dim=8, nce_k=4)
        >>> student, teacher, index = torch.randn(3, 16), torch.randn(3, 32), torch.tensor([0, 5, 9])
        >>> labels = torch.arange(10) % 2
        >>> loss(student, teacher, index=index, dataset_size=10, dataset_labels=labels).shape
        torch.Size([])
        >>> loss.memory_student.shape, int(loss.step)
        (torch.Size([10, 8]), 1)
    """

    batch_context: ClassVar[tuple[str, ...]] = ("index", "dataset_size", "dataset_labels")

    def __init__(
        self,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        seed: int = 0,
        negatives: str = "other_classes",
    ) -> None:
        super().__init__()
        _check_int("feat_dim", feat_dim, 1)
        _check_int("nce_k", nce_k, 1)
        check_positive("nce_t", nce_t)
        if not 0 <= nce_m < 1:  # also rejects NaN
            raise ValueError(f"expected 0 <= nce_m < 1 but got nce_m={nce_m}; pass a momentum such as 0.5.")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"expected an integer seed but got seed={seed!r}.")
        if negatives not in NEGATIVES:
            raise ValueError(
                f"expected negatives to be one of {list(NEGATIVES)} but got negatives={negatives!r}; 'other_classes' "
                f"draws from the other classes as RepDistiller's CIFAR-100 runs, 'uniform' from the whole training set."
            )
        self.negatives = negatives
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m, self.seed = int(feat_dim), int(nce_k), nce_t, nce_m, seed
        self.embed_student = LazyAdapter(_linear_head)
        self.embed_teacher = LazyAdapter(_linear_head)
        self.register_buffer("memory_student", torch.zeros(0, self.feat_dim))
        self.register_buffer("memory_teacher", torch.zeros(0, self.feat_dim))
        self.register_buffer("normalisers", torch.full((2,), -1.0))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._host_step: int | None = None  # ``step`` on the host: no device read at every call
        self._pools: _ClassPools | None = None  # the other-class pools of the labels last seen (not state)
        self._labels_seen: Tensor | None = None  # the tensor they were built from (no comparison when passed again)

    @property
    def dataset_size(self) -> int:
        """``N``, the rows of the memory banks (0 before the first call)."""
        return self.memory_student.shape[0]

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None = None,
        index: Tensor | None = None,
        dataset_size: int | None = None,
        dataset_labels: Tensor | None = None,
        contrast_idx: Tensor | None = None,
    ) -> Tensor:
        """Return the CRD loss of a batch (and, in training, update the memory banks).

        Args:
            student: student features ``[B, D_s]`` or ``[B, C, H, W]`` (flattened per sample).
            teacher: teacher features ``[B, D_t]`` or ``[B, C, H, W]`` (treated as a constant, detached).
            target: ignored.
            index: the samples' indices in the training set ``[B]`` (integers in ``[0, dataset_size)``); needed in
                training, not read in evaluation.
            dataset_size: ``N``, the number of training samples; needed on the first call and constant afterwards.
            dataset_labels: the class of every training sample ``[N]``; needed in training with
                ``negatives="other_classes"`` (the labels last seen serve when ``None``), not read in evaluation.
            contrast_idx: optional ``[B, K+1]`` bank indices (column 0 the positive, not read in evaluation)
                replacing the drawn negatives, like RepDistiller's ``contrast_idx`` argument.

        Returns:
            Scalar float32 tensor.
        """
        updating = self.training and torch.is_grad_enabled()
        check_ndim(student, (2, 3, 4), "CRDLoss", "student")
        check_ndim(teacher, (2, 3, 4), "CRDLoss", "teacher")
        check_same_batch(student, teacher)
        size = self._check_context(student.shape[0], index, dataset_size, updating)
        if contrast_idx is not None:
            self._check_contrast_idx(contrast_idx, student.shape[0], size)
        elif updating and self.negatives == "other_classes":
            self._class_pools(dataset_labels, size)
        elif dataset_labels is not None:
            self._check_labels(dataset_labels, size)
        flat_s, flat_t = student.flatten(1).float(), teacher.detach().flatten(1).float()
        self.embed_student.build((flat_s.shape[1],), (self.feat_dim,), device=flat_s.device)
        self.embed_teacher.build((flat_t.shape[1],), (self.feat_dim,), device=flat_t.device)
        if size is not None:
            self._build_memory(size)
        with full_precision(flat_s):
            embed_s = F.normalize(self.embed_student.net(flat_s).float(), dim=1)
            embed_t = F.normalize(self.embed_teacher.net(flat_t).float(), dim=1)
        if self.dataset_size == 0:
            return (embed_s.sum() + embed_t.sum()) * 0.0
        if not updating:
            draws = self._draw(student.shape[0], training=False) if contrast_idx is None else contrast_idx
            draws = draws.to(device=embed_s.device, dtype=torch.long)
            banks = (self.memory_student, self.memory_teacher)
            return _crd(embed_s, embed_t, *banks, draws, self.nce_t, self.normalisers, live_positives=True)[0]
        index = index.to(device=embed_s.device, dtype=torch.long)
        if contrast_idx is None:
            contrast_idx = self.contrast_indices(index)
        contrast_idx = contrast_idx.to(device=embed_s.device, dtype=torch.long)
        loss, z = _crd(
            embed_s, embed_t, self.memory_student, self.memory_teacher, contrast_idx, self.nce_t, self.normalisers
        )
        if updating:
            self.normalisers.copy_(z)
            update_memory_bank(self.memory_student, embed_s, index, self.nce_m)
            update_memory_bank(self.memory_teacher, embed_t, index, self.nce_m)
            self._host_step = self.current_step() + 1
            self.step.fill_(self._host_step)
        return loss

    def current_step(self) -> int:
        """The number of training calls so far (the ``step`` buffer, read from the device once)."""
        if self._host_step is None:
            self._host_step = int(self.step)
        return self._host_step

    def contrast_indices(
        self, index: Tensor, training: bool | None = None, dataset_labels: Tensor | None = None
    ) -> Tensor:
        """The ``[B, K+1]`` bank indices the next call would use: ``index``, then ``nce_k`` negatives.

        In training (``training=None``: the module's mode and grad mode, as :meth:`forward` decides) the negatives are
        drawn as ``negatives`` says (``"other_classes"`` reads ``dataset_labels``, or the labels last seen) from a CPU
        generator seeded with ``(seed, step)``; in evaluation (where column 0 is not read) uniformly in ``[0, N)`` from
        ``(seed, step, 1)``. The same on every device.
        """
        training = (self.training and torch.is_grad_enabled()) if training is None else training
        if not training or self.negatives == "uniform":
            draws = self._draw(index.shape[0], training).to(index.device)
            draws[:, 0] = index
            return draws
        pools = self._class_pools(dataset_labels, self.dataset_size or None)
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.current_step()))
        negatives = pools.draw(index.cpu(), self.nce_k, generator).to(index.device)
        return torch.cat([index[:, None].long(), negatives], dim=1)

    def _class_pools(self, dataset_labels: Tensor | None, size: int | None) -> _ClassPools:
        """The other-class pools of ``dataset_labels`` (checked; those last seen when ``None``), built once per set."""
        if dataset_labels is None:
            if self._pools is None:
                raise ValueError(
                    "CRDLoss with negatives='other_classes' draws each sample's negatives from the samples of the "
                    "other classes (RepDistiller's --mode exact) but got dataset_labels=None: the training dataset "
                    "exposes no `labels` or `targets` attribute of one class per sample. Train on a dataset that does "
                    "(the library's DigitsDataModule, CIFAR10DataModule and CIFAR100DataModule datasets do), or pass "
                    "negatives: uniform in the loss's init_args; called directly, pass dataset_labels=[N]."
                )
            return self._pools
        self._check_labels(dataset_labels, size)
        if dataset_labels is not self._labels_seen:
            labels = dataset_labels.detach().cpu().long()
            if self._pools is None or not torch.equal(self._pools.labels, labels):
                self._pools = _ClassPools(labels)
            self._labels_seen = dataset_labels
        return self._pools

    @staticmethod
    def _check_labels(dataset_labels: object, size: int | None) -> None:
        """``dataset_labels`` must hold one integer class per training sample."""
        fits = (
            isinstance(dataset_labels, Tensor) and dataset_labels.ndim == 1 and not dataset_labels.is_floating_point()
        )
        if not fits or dataset_labels.is_complex() or (size is not None and len(dataset_labels) != size):
            got = (
                f"shape {tuple(dataset_labels.shape)} and dtype {dataset_labels.dtype}"
                if isinstance(dataset_labels, Tensor)
                else repr(dataset_labels)
            )
            raise ValueError(
                f"CRDLoss expected dataset_labels, the class of every training sample, as an integer tensor of shape "
                f"[dataset_size] = [{size}] but got {got}; pass the training set's own labels (one per sample, in "
                f"its order)."
            )

    def _draw(self, batch: int, training: bool) -> Tensor:
        """``[B, K+1]`` uniform draws in ``[0, N)`` from this step's stream (the caller replaces column 0)."""
        stream = (self.seed, self.current_step()) if training else (self.seed, self.current_step(), _EVAL_STREAM)
        generator = torch.Generator().manual_seed(_mix_seed(*stream))
        return torch.randint(0, self.dataset_size, (batch, self.nce_k + 1), generator=generator)

    def _build_memory(self, dataset_size: int) -> None:
        """Create the banks for ``dataset_size`` samples (RepDistiller's initialisation, seeded); no-op once built."""
        if self.dataset_size > 0:
            return
        stdv = 1.0 / math.sqrt(self.feat_dim / 3)
        generator = torch.Generator().manual_seed(_mix_seed(self.seed))
        device = self.normalisers.device
        for name in ("memory_student", "memory_teacher"):
            bank = torch.rand(dataset_size, self.feat_dim, generator=generator).mul_(2 * stdv).add_(-stdv)
            setattr(self, name, bank.to(device))

    def _check_context(self, batch: int, index: Tensor | None, dataset_size: int | None, updating: bool) -> int | None:
        """Validate ``index`` and ``dataset_size`` (before any maths); return the dataset size to use, if any."""
        if dataset_size is not None:
            if isinstance(dataset_size, Tensor):
                dataset_size = int(dataset_size)
            if isinstance(dataset_size, bool) or not isinstance(dataset_size, numbers.Integral) or dataset_size < 1:
                raise ValueError(
                    f"CRDLoss expected dataset_size, the number of training samples, as an integer >= 1 but got "
                    f"dataset_size={dataset_size!r}."
                )
            if 0 < self.dataset_size != dataset_size:
                raise ValueError(
                    f"CRDLoss's memory banks hold {self.dataset_size} samples (the training set of its first call, or "
                    f"of the checkpoint) but got dataset_size={dataset_size}; the training set changed size: keep the "
                    f"same training data (and train_fraction / val_size) for a run, or start a fresh CRDLoss."
                )
        size = int(dataset_size) if dataset_size is not None else (self.dataset_size or None)
        if updating and (index is None or size is None):
            missing = "index=None" if index is None else "dataset_size=None"
            raise ValueError(
                f"CRDLoss needs each sample's index in the training set and the training set's size (its memory banks "
                f"hold one row per sample) but got {missing}; make the training datamodule return indices: "
                f"`return_index: true` in its init_args (DigitsDataModule, CIFAR10DataModule, CIFAR100DataModule, "
                f"ImageFolderDataModule, SyntheticImageDataModule and TextDataModule support it), so that the "
                f"DistillTerm passes index=[B] and dataset_size=N; called directly, pass both."
            )
        if index is None or not updating:  # evaluation reads no index: it may come from another split
            return size
        if not isinstance(index, Tensor) or index.shape != (batch,) or index.is_floating_point() or index.is_complex():
            got = f"shape {tuple(index.shape)} and dtype {index.dtype}" if isinstance(index, Tensor) else repr(index)
            raise ValueError(f"CRDLoss expected index as an integer tensor of shape [{batch}] but got {got}.")
        if size is not None and batch > 0:
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= size:
                raise ValueError(
                    f"CRDLoss expected sample indices in [0, dataset_size={size}) but got indices from {low} to "
                    f"{high}; pass each sample's position in the training set (return_index: true) and that set's "
                    f"size as dataset_size."
                )
        return size

    def _check_contrast_idx(self, contrast_idx: Tensor, batch: int, size: int | None) -> None:
        if contrast_idx.ndim != 2 or contrast_idx.shape[0] != batch or contrast_idx.shape[1] < 2:
            raise ValueError(
                f"CRDLoss expected contrast_idx of shape [B, K+1] = [{batch}, >= 2] (the positive, then K negatives) "
                f"but got {tuple(contrast_idx.shape)}."
            )
        if size is not None and (int(contrast_idx.min()) < 0 or int(contrast_idx.max()) >= size):
            raise ValueError(f"CRDLoss expected contrast_idx in [0, dataset_size={size}).")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        """Size the lazy banks as the checkpoint's (so strict loading works before any call)."""
        for name in ("memory_student", "memory_teacher"):
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            fits = isinstance(saved, Tensor) and saved.ndim == 2 and saved.shape[1] == self.feat_dim
            if fits and saved.shape != current.shape:
                setattr(self, name, torch.empty(saved.shape, dtype=current.dtype, device=current.device))
        self._host_step = None
        self._pools = self._labels_seen = None  # rebuilt from the next call's dataset_labels
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    def extra_repr(self) -> str:
        return (
            f"feat_dim={self.feat_dim}, nce_k={self.nce_k}, nce_t={self.nce_t}, nce_m={self.nce_m}, seed={self.seed}, "
            f"negatives={self.negatives!r}"
        )
