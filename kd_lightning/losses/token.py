"""Token-level logit losses for language-model distillation: the student matches the teacher token by token.

Every function takes logits ``[B, L, V]`` of the two models at the same token positions, treats the teacher as a
constant target (it is detached), and returns a float32 scalar: the sum of the per-token loss over the positions
selected by ``mask`` ``[B, L]``, divided by ``num_tokens`` (by default the number of selected positions, at least 1, so
an empty mask gives an exact 0 with a zero gradient). The Lightning modules pass as ``num_tokens`` the effective batch's
share of real tokens (:mod:`kd_lightning.core.tokens`), so padding, gradient accumulation and DDP give the loss of one
big batch. The losses never shift: for a causal LM the mask already leaves out the last position.

The KL-family losses (forward, reverse, generalized JSD, skew, skew reverse) are multiplied by ``T**2``, as Hinton's
KD and DistilBERT's ``loss_ce * T**2``, so their gradients keep their scale across temperatures (at ``T = 1``, the
TRL and DistiLLM default, nothing changes); the total variation distance is not (it stays in ``[0, 1]``).

Large vocabularies: unless ``chunk_size=None``, no float32 copy of the ``[B * L, V]`` logits is made. The selected
rows are processed ``chunk_size`` at a time, each chunk gathered in the logits' own dtype (e.g. bf16) and upcast alone;
when a gradient is needed and there is more than one chunk, each chunk runs under ``torch.utils.checkpoint``
(non-reentrant), so autograd keeps no float32 tensor and recomputes one chunk's softmax at a time in the backward pass
(torchtune's ``ForwardKLWithChunkedOutputLoss`` upcasts one chunk at a time in the same spirit). Chunked and unchunked
results agree to float precision; ``benchmarks/token_loss_memory.py`` measures the memory saved.

Excluded vocabulary entries (``-inf`` logits: vocabulary padding, constrained decoding): the KL-family losses follow
the convention ``0 * log 0 = 0`` of ``KL(p || q) = sum_v p_v * log(p_v / q_v)``, so an entry that both models exclude
adds 0 to the value and 0 to the gradient, and the value and the gradient are finite wherever the formula's value is
(DistiLLM and torchtune mask infinite logits with an ``inf_mask`` to the same end). A log-ratio whose weight ``p_v``
is 0 is set to 0 *before* it is multiplied, never masked afterwards (``0 * NaN`` would still reach the gradient). An
entry only one model excludes follows the formula; each function says what it returns then (``+inf`` for forward KL
when only the student excludes an entry the teacher gives mass, and for reverse KL the other way round; the skew and
JSD mixtures and the total variation stay finite). Logits may not be ``+inf`` or NaN, and every selected position
needs a finite logit in each model (softmax over no entry is NaN).

Sparse teachers: every loss here (not the cross-entropy) also takes the teacher as :class:`SparseLogits`, the top-k
logits per token with the log-normaliser of the full logits (a token store's rows,
:class:`~kd_lightning.teachers.TokenStoreTeacher`). The teacher distribution they stand for places the mass outside
the top k by the ``missing_mass`` policy the target carries (``"tail"`` or ``"renormalise"``, see
:class:`SparseLogits`); there it is proportional to the student's distribution, so each loss over the ``V`` entries
equals the same loss over ``k + 1`` buckets, the k stored entries and "the rest", and that is how it is computed: per
chunk of ``n`` positions, the student's tempered log-softmax gathered at the k indices and ``log q_T(rest)`` (the
logsumexp of its tempered log-probabilities outside them), ``[n, k + 1]``, against the teacher's k log-probabilities
and ``log m_T`` (its missing mass), ``[n, k + 1]``. No ``[n, V]`` teacher tensor is made (the student's own softmax is
the only vocabulary-wide work), and at ``k = V`` the loss equals the dense one.

Which positions count: the modules' ``positions`` tells the Lightning objective which token positions to pass as
``mask`` (the rules live in :mod:`kd_lightning.core.tokens`). The default, ``"real"``, distils on every real
(non-padding) token: DistilBERT's convention, whose distiller computes its KL on every attention-masked token and
restricts it to the MLM-masked positions only when asked (``--restrict_ce_to_mask``). ``"labelled"`` reads only the
positions that carry a label (that restriction for an MLM batch; the completion tokens of a prompt-completion batch
whose prompt labels are ``-100``, as TRL's GKD); ``"auto"`` reads the labelled positions when the batch has labels and
every real token otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from kd_lightning.losses._checks import check_positive, token_normaliser
from kd_lightning.losses.base import TokenLoss

__all__ = [
    "MISSING_MASS",
    "ForwardKLLoss",
    "GeneralizedJSDLoss",
    "ReverseKLLoss",
    "SkewKLLoss",
    "SkewReverseKLLoss",
    "SparseLogits",
    "TVDLoss",
    "forward_kl_loss",
    "generalized_jsd_loss",
    "reverse_kl_loss",
    "skew_kl_loss",
    "skew_reverse_kl_loss",
    "token_cross_entropy",
    "total_variation_loss",
]

IGNORE_INDEX = -100
POSITIONS = ("real", "labelled", "auto")
RowsLoss = Callable[[Tensor, Tensor], Tensor]
"""``(student rows [n, V], second rows [n, ...]) -> sum over the rows of the per-token loss`` (float32 scalar); the
divergences also take ``normalised=True``: rows that are already log-probabilities (a sparse teacher's ``k + 1``
buckets, :func:`_chunk_loss`)."""
MISSING_MASS = ("tail", "renormalise")


@dataclass(frozen=True)
class SparseLogits:
    """A teacher's next-token distributions stored sparsely: the top-k logits per token and their log-normaliser.

    ``values[..., j]`` is the teacher's logit of token ``indices[..., j]`` and ``logsumexp`` the log-normaliser of the
    full logits (over all ``vocab_size`` entries), so on the k stored entries ``p_i = exp(v_i - logsumexp)`` exactly
    and the missing mass ``m = 1 - sum_i p_i`` is known. The token losses rebuild, one chunk of positions at a time,
    the teacher distribution ``p_T`` at their temperature ``T`` by the ``missing_mass`` policy:

    * ``"tail"`` (default): the k stored entries keep the teacher's own probabilities and the missing mass goes to
      the other entries in proportion to the student's probabilities there (treated as a constant), ``p_T[j] = m_T *
      q_T[j] / q_T(rest)``. For forward KL this is the KL over ``k + 1`` buckets (the top k and "the rest"), the
      sparse-logit KD of DistillKit; every loss stays finite (reverse KL too). At ``T != 1`` the tempered normaliser
      is not stored: it is computed as if the missing mass (at ``T = 1``) were spread evenly over the ``V - k`` other
      entries, ``log Z_T = logaddexp(logsumexp(v / T), log(V - k) + t / T)`` with ``t = logsumexp + log(m / (V -
      k))``; at ``T = 1`` it is the stored log-normaliser. The missing mass is taken as at least float32's ``eps``
      (below it, float32 logits cannot resolve it), so the tail never has probability 0; at ``T > 1`` the tempered
      tail mass grows as a power of ``m``, so it is as precise as the stored float32 values resolve ``m``.
    * ``"renormalise"``: the missing mass is dropped and the k entries renormalised, ``p_T = softmax(v / T)`` on them,
      0 elsewhere. The losses weighted by the student (reverse KL, skew reverse KL with ``skew = 0``) are then
      ``+inf`` whenever the student gives mass outside the top k: use ``"tail"`` with them.

    At ``k = V`` both policies give the dense teacher's distribution (to float rounding, any temperature).

    The token losses never build ``p_T`` over the vocabulary (:meth:`log_probs` does, for reading it). Outside the top
    k it is proportional to the student's distribution (``"tail"``: ``p_T[j] = m_T * q_T[j] / q_T(rest)``;
    ``"renormalise"``: ``0 * q_T[j]``), and each loss sums per entry a term ``f(p_j, q_j)`` homogeneous of degree 1
    (``p log(p / q)``, ``q log(q / p)``, the skew and JSD mixtures' KL terms, ``|p - q| / 2``), so the ``V - k`` other
    entries sum to ``f(m_T, q_T(rest))``, in value and, ``p_T`` holding the student detached, in gradient w.r.t. the
    student's logits (forward KL: ``m_T * (log m_T - log q_T(rest))``, whose gradient is the dense sum's). The losses
    are computed over the ``k + 1`` buckets of :meth:`bucket_log_probs` (``[n, k + 1]``: the top k, then the rest)
    against the student's (its tempered log-probabilities gathered at ``indices``, then ``log q_T(rest)``, the
    logsumexp of its tempered log-probabilities outside them). Under ``"renormalise"`` the teacher's rest bucket is
    ``-inf``, so forward KL reads only the k gathered log-probabilities (``sum_i p_i * (log p_i - log q_i)``) and the
    losses weighted by the student stay ``+inf``. The indices of a row are taken to be distinct (a top k).

    Attributes:
        values: ``[B, L, k]`` top-k logits (any float dtype; read in float32).
        indices: ``[B, L, k]`` their token ids (any integer dtype).
        logsumexp: ``[B, L]`` float32, ``logsumexp`` of the full logits of each position.
        vocab_size: ``V``, the size of the full vocabulary.
        missing_mass: ``"tail"`` or ``"renormalise"`` (above).

    Example:
        >>> logits = torch.randn(2, 3, 5)
        >>> top = logits.topk(5, dim=-1)
        >>> sparse = SparseLogits(top.values, top.indices, logits.logsumexp(-1), vocab_size=5)
        >>> student = torch.randn(2, 3, 5)
        >>> bool(torch.isclose(forward_kl_loss(student, sparse), forward_kl_loss(student, logits), atol=1e-6))
        True
    """

    values: Tensor
    indices: Tensor
    logsumexp: Tensor
    vocab_size: int
    missing_mass: str = "tail"

    def __post_init__(self) -> None:
        if self.missing_mass not in MISSING_MASS:
            raise ValueError(
                f"expected missing_mass in {list(MISSING_MASS)} but got {self.missing_mass!r}; 'tail' spreads the "
                f"teacher's mass outside the top k over the student's other entries, 'renormalise' drops it."
            )
        k = self.values.shape[-1]
        if self.indices.shape != self.values.shape or self.logsumexp.shape != self.values.shape[:-1]:
            raise ValueError(
                f"expected SparseLogits values and indices of one shape [..., k] and logsumexp [...] but got "
                f"{tuple(self.values.shape)}, {tuple(self.indices.shape)} and {tuple(self.logsumexp.shape)}."
            )
        if not 1 <= k <= self.vocab_size:
            raise ValueError(f"expected 1 <= k <= vocab_size but got k={k}, vocab_size={self.vocab_size}.")

    @property
    def shape(self) -> torch.Size:
        """The shape of the dense logits these stand for: ``[..., V]``."""
        return torch.Size((*self.values.shape[:-1], self.vocab_size))

    @property
    def ndim(self) -> int:
        return self.values.ndim

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    def detach(self) -> SparseLogits:
        return replace(self, values=self.values.detach(), logsumexp=self.logsumexp.detach())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseLogits:
        def move(tensor: Tensor) -> Tensor:
            return tensor.to(device, non_blocking=non_blocking)

        return replace(self, values=move(self.values), indices=move(self.indices), logsumexp=move(self.logsumexp))

    def flatten(self, start_dim: int, end_dim: int) -> SparseLogits:
        """The positions flattened as a tensor's (``flatten(0, 1)``: rows ``[B * L, k]``)."""
        return replace(
            self,
            values=self.values.flatten(start_dim, end_dim),
            indices=self.indices.flatten(start_dim, end_dim),
            logsumexp=self.logsumexp.flatten(start_dim, end_dim),
        )

    def __getitem__(self, rows: slice) -> SparseLogits:
        return replace(self, values=self.values[rows], indices=self.indices[rows], logsumexp=self.logsumexp[rows])

    def log_probs(self, student: Tensor, temperature: float = 1.0) -> Tensor:
        """The rebuilt teacher log-probabilities ``log p_T`` ``[n, V]`` float32 of rows ``[n, k]`` (see the class).

        The dense form of the rebuilt distribution, for reading and checking it: the losses never build it, they
        compute the same divergence over the ``k + 1`` buckets of :meth:`bucket_log_probs`.

        Args:
            student: the student's logits of the same rows ``[n, V]`` (read, detached, by the ``"tail"`` policy).
            temperature: ``T > 0``.
        """
        top, log_missing = self._top_log_probs(temperature)
        indices = self.indices.long()
        if log_missing is None:
            dense = torch.full(student.shape, -math.inf, dtype=torch.float32, device=student.device)
            return dense.scatter_(1, indices, top)
        log_q = _log_probs(student.detach(), temperature)
        log_q_rest = log_q.scatter(1, indices, -math.inf).logsumexp(-1)
        tail = log_missing[:, None] + (log_q - log_q_rest[:, None])
        tail = tail.masked_fill_(torch.isnan(tail), -math.inf)
        return tail.scatter_(1, indices, top)

    def bucket_log_probs(self, temperature: float = 1.0) -> Tensor:
        """The rebuilt teacher distribution over ``k + 1`` buckets, ``[n, k + 1]`` float32 log-probabilities of rows.

        Buckets ``0 .. k - 1`` are the stored entries (``log p_T[indices[:, i]]``), bucket ``k`` the other ``V - k``
        entries together: ``log m_T`` (the tempered missing mass, at least float32's ``eps``) under ``"tail"``,
        ``-inf`` under ``"renormalise"`` and at ``k = V``. On the other entries the rebuilt distribution is
        proportional to the student's (``"tail"``: ``p_T[j] = m_T * q_T[j] / q_T(rest)``; ``"renormalise"``: 0), so
        every token loss over the ``V`` entries equals the same loss over these buckets against the student's buckets
        (its ``k`` gathered log-probabilities and ``log q_T(rest)``), in value and in gradient.
        """
        top, log_missing = self._top_log_probs(temperature)
        if log_missing is None:
            log_missing = torch.full_like(top[:, 0], -math.inf)
        return torch.cat([top, log_missing[:, None]], dim=1)

    def _top_log_probs(self, temperature: float) -> tuple[Tensor, Tensor | None]:
        """``log p_T`` ``[n, k]`` on the stored entries and ``log m_T`` ``[n]`` (``None`` when no mass is outside)."""
        values = self.values.float() / temperature
        rest = self.vocab_size - self.k
        if self.missing_mass == "renormalise" or rest == 0:
            if self.missing_mass == "tail" and temperature == 1:
                return values - self.logsumexp.float()[:, None], None
            return values - values.logsumexp(-1, keepdim=True), None
        lse = self.logsumexp.float()
        if temperature != 1:
            tail_logit = lse + _log_missing(self.values.float().logsumexp(-1), lse) - math.log(rest)
            lse = torch.logaddexp(values.logsumexp(-1), math.log(rest) + tail_logit / temperature)
        return values - lse[:, None], _log_missing(values.logsumexp(-1), lse)


def _log_missing(top: Tensor, full: Tensor) -> Tensor:
    """``log(1 - exp(top - full))``: the log of the mass outside the top k from the log-normalisers of the top k and
    of all entries, at least float32's ``eps`` (a smaller mass is below the resolution of float32 logits)."""
    return (-torch.expm1(top - full)).clamp_min(torch.finfo(torch.float32).eps).log()


# ---------------------------------------------------------------- checks


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"expected chunk_size None or an integer >= 1 but got chunk_size={chunk_size!r}; pass the number of "
            f"token positions to upcast at a time (e.g. 1024), or None for a single chunk."
        )


def _check_fraction(name: str, value: float, upper_closed: bool) -> None:
    """Raise unless ``0 <= value <= 1`` (``< 1`` when not ``upper_closed``)."""
    inside = 0 <= value <= 1 if upper_closed else 0 <= value < 1
    if not inside:
        interval = "[0, 1]" if upper_closed else "[0, 1)"
        raise ValueError(f"expected {name} in {interval} but got {name}={value}; pass a {name} in {interval}.")


def _check_logits(logits: Tensor, loss: str, role: str) -> None:
    if getattr(logits, "ndim", None) != 3:  # a tensor, or SparseLogits (top-k values and indices [B, L, k])
        shape = f"shape {tuple(logits.shape)}" if hasattr(logits, "shape") else type(logits).__name__
        raise ValueError(
            f"{loss} expected {role} logits of shape [B, L, V] (3-d) but got {shape}; for class logits [B, C] use "
            f"kd_lightning.losses.KDLoss."
        )


def _check_pair(student: Tensor, teacher: Tensor, loss: str) -> None:
    """Raise unless student and teacher are ``[B, L, V]`` logits over the same positions and vocabulary."""
    _check_logits(student, loss, "student")
    _check_logits(teacher, loss, "teacher")
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"{loss} expected student and teacher logits at the same [B, L] token positions but got "
            f"{tuple(student.shape[:2])} (student) and {tuple(teacher.shape[:2])} (teacher); feed both models the "
            f"same input_ids."
        )
    v_s, v_t = student.shape[2], teacher.shape[2]
    if v_s != v_t:
        raise ValueError(
            f"{loss} expected student and teacher logits over the same vocabulary but got {v_s} (student) and {v_t} "
            f"(teacher); distil between models that share a tokenizer: build the student with "
            f"kd_lightning.models.text.student_from_teacher or model_from_config(vocab_size={v_t})."
        )


def _row_mask(mask: Tensor | None, shape: torch.Size, device: torch.device, loss: str) -> Tensor | None:
    """The selected positions as a flat bool mask ``[B * L]`` (``None``: every position)."""
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{loss} expected a mask of shape [B, L] = {tuple(shape)} but got {tuple(mask.shape)}; pass one boolean "
            f"per token position of the logits (True = counted), or mask=None to count every position."
        )
    return mask.to(device=device, dtype=torch.bool).flatten()


# ---------------------------------------------------------------- chunked sum over token positions


def _zero_rows_(tensor: Tensor, rows: Tensor) -> Tensor:
    """Set the rows of ``tensor`` ``[n, V]`` where ``rows`` ``[n]`` is True to 0, in place (NaN and ``inf`` included).

    On a CPU the rows are found with ``nonzero`` (there is no device to wait for, and ``index_fill_`` is several times
    faster than a broadcast ``masked_fill_`` there); elsewhere ``masked_fill_`` keeps the selection on the device.
    """
    if tensor.device.type == "cpu":
        index = rows.nonzero().squeeze(1)
        return tensor.index_fill_(0, index, 0.0) if index.numel() else tensor
    return tensor.masked_fill_(rows[:, None], 0.0)


class _StudentBuckets(torch.autograd.Function):
    """The student's tempered log-probabilities over the ``k + 1`` buckets of sparse teacher rows, ``[N, k + 1]``.

    With ``x = z / T`` (``z`` the logits ``[N, V]``, any float dtype, read in float32), ``I`` the ``k`` stored indices
    of each row and ``R`` the other ``V - k`` entries: ``lse_R = logsumexp_{j in R} x_j`` (``-inf`` when ``R`` is
    empty or excluded), ``lse = logaddexp(lse_R, logsumexp_{i in I} x_i)`` (the full log-normaliser, with no
    cancellation) and the buckets ``log q_T[I] = x_I - lse`` and ``log q_T(rest) = lse_R - lse``.

    The vocabulary-wide work runs ``chunk_size`` rows at a time (``None``: all at once): per chunk, ``x`` in float32
    with ``I`` set to ``-inf``, and ``r = softmax(x)``, so ``r_j = exp(x_j - lse_R) = q_j / q_T(rest)`` on ``R`` and
    ``lse_R = max_R x - log max_R r``. The backward pass, with ``g`` the gradient of the buckets and ``G`` its row
    sum, is ``dL/dx_j = g_i - q_j * G`` on the stored entry ``j = I_i`` and ``(g_rest - q_T(rest) * G) * r_j`` on the
    others, written chunk by chunk into the one ``[N, V]`` gradient: with a single chunk ``r`` is kept for it; with
    several only ``[N]`` and ``[N, k + 1]`` tensors and a reference to ``z`` are, and each chunk's ``r`` is recomputed
    from ``z`` (no checkpoint, no float32 ``[N, V]`` kept). Rows outside ``keep`` are read as zeros: their NaN or
    infinite logits reach neither the buckets nor the gradient, which is 0 there.
    """

    @staticmethod
    def rest_softmax(
        chunk: Tensor, indices: Tensor, temperature: float, keep: Tensor | None, empty: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        """``r`` (0 in the ``empty`` rows, those with no finite entry outside ``indices``), the gathered ``x[indices]``,
        ``max_R x`` and ``empty`` of one chunk of logits; given ``empty`` (the backward pass), only ``r``."""
        x = chunk.to(torch.float32, copy=True)
        if keep is not None:
            _zero_rows_(x, ~keep)
        if temperature != 1:
            x.div_(temperature)
        top = x.gather(1, indices) if empty is None else None
        x.scatter_(1, indices, -math.inf)
        peak = x.amax(-1) if empty is None else None
        empty = torch.isneginf(peak) if empty is None else empty
        r = torch.softmax(x, dim=-1)
        return _zero_rows_(r, empty), top, peak, empty

    @staticmethod
    def forward(
        ctx, logits: Tensor, indices: Tensor, temperature: float, keep: Tensor | None, chunk_size: int | None
    ) -> Tensor:
        rows = logits.shape[0]
        step = rows if chunk_size is None else max(chunk_size, 1)
        tops, lse_rests = [], []
        for start in range(0, rows, step):
            chunk = slice(start, start + step)
            kept = None if keep is None else keep[chunk]
            r, top, peak, empty = _StudentBuckets.rest_softmax(logits[chunk], indices[chunk], temperature, kept)
            tops.append(top)  # lse_R = max_R x - log(max_R r), -inf where R has no finite entry
            lse_rests.append(torch.where(empty, -math.inf, peak - r.amax(-1).log()))
        top = tops[0] if len(tops) == 1 else torch.cat(tops)
        lse_rest = lse_rests[0] if len(lse_rests) == 1 else torch.cat(lse_rests)
        lse = torch.logaddexp(lse_rest, top.logsumexp(-1))
        buckets = torch.cat([top - lse[:, None], (lse_rest - lse)[:, None]], dim=1)
        ctx.temperature, ctx.step, ctx.dtype = temperature, step, logits.dtype
        ctx.kept = rows <= step
        if ctx.kept:
            ctx.save_for_backward(buckets, indices, r)
        else:
            ctx.save_for_backward(buckets, indices, logits, keep, torch.isneginf(lse_rest))
        return buckets

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        buckets, indices, *saved = ctx.saved_tensors
        scale = 1 / ctx.temperature
        total = grad.sum(-1, keepdim=True)
        q = buckets.exp()
        rest_coef = (grad[:, -1:] - q[:, -1:] * total) * scale  # [N, 1]: dL/dx_j = rest_coef * r_j on R
        top_grad = (grad[:, :-1] - q[:, :-1] * total) * scale  # [N, k]
        if ctx.kept:
            (r,) = saved
            return (r * rest_coef).scatter_(1, indices, top_grad).to(ctx.dtype), None, None, None, None
        logits, keep, empty = saved
        dx = torch.empty_like(logits, memory_format=torch.contiguous_format)
        for start in range(0, logits.shape[0], ctx.step):
            chunk = slice(start, start + ctx.step)
            kept = None if keep is None else keep[chunk]
            r = _StudentBuckets.rest_softmax(logits[chunk], indices[chunk], ctx.temperature, kept, empty[chunk])[0]
            if dx.dtype == torch.float32:
                torch.mul(r, rest_coef[chunk], out=dx[chunk]).scatter_(1, indices[chunk], top_grad[chunk])
            else:
                dx[chunk] = r.mul_(rest_coef[chunk]).scatter_(1, indices[chunk], top_grad[chunk])
        return dx, None, None, None, None


def _sparse_buckets(
    student: Tensor, teacher: SparseLogits, temperature: float, keep: Tensor | None, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """The student's and the rebuilt teacher's log-probabilities over the ``k + 1`` buckets, ``[n, k + 1]`` each.

    The student's are :class:`_StudentBuckets`, the teacher's :meth:`SparseLogits.bucket_log_probs`; where the
    student excludes every entry outside the top k (``log q_T(rest) = -inf``) the teacher's rest bucket is ``-inf``
    too, as the dense rebuild (whose tail is then 0). The teacher's buckets are then normalised (``log_softmax`` over
    the ``k + 1``), as the dense path's tempered softmax of ``T * log p_T`` normalised the rebuilt distribution: a
    no-op but where the ``eps`` floor raised the missing mass or the student has no rest. Rows outside ``keep`` are
    uniform on both sides (equal rows: every loss is 0 there, to float rounding of the mixtures, as the dense path's
    zero logits, with a zero gradient).
    """
    indices = teacher.indices.long()
    student_buckets = _StudentBuckets.apply(student, indices, temperature, keep, chunk_size)
    teacher_buckets = teacher.bucket_log_probs(temperature)
    teacher_buckets[:, -1].masked_fill_(torch.isneginf(student_buckets[:, -1].detach()), -math.inf)
    teacher_buckets = teacher_buckets.log_softmax(-1)
    if keep is not None:
        uniform = -math.log(teacher.k + 1)
        student_buckets = student_buckets.masked_fill(~keep[:, None], uniform)
        teacher_buckets = teacher_buckets.masked_fill(~keep[:, None], uniform)
    return student_buckets, teacher_buckets


def _chunk_loss(
    rows_loss: RowsLoss,
    first: Tensor,
    second: Tensor | SparseLogits,
    keep: Tensor | None,
    temperature: float = 1.0,
    chunk_size: int | None = None,
) -> Tensor:
    """The sum of one chunk's per-token losses; rows outside ``keep`` count 0.

    Sparse teacher rows (:class:`SparseLogits`, ``[n, k]``) never become a dense ``[n, V]`` teacher: the loss is
    computed over ``k + 1`` buckets (the k stored entries and the rest of the vocabulary), from the student's bucket
    log-probabilities ``[n, k + 1]`` (its tempered log-softmax gathered at the k indices, and ``log q_T(rest)``, the
    logsumexp of its tempered log-probabilities outside them) and the teacher's (its k log-probabilities and ``log
    m_T``, the missing mass; ``-inf`` under ``"renormalise"``). Because the rebuilt teacher is proportional to the
    student outside the top k (``"tail"``: ``p_T[j] = m_T * q_T[j] / q_T(rest)``, the student detached;
    ``"renormalise"``: 0), and every loss here sums a term that is homogeneous of degree 1 in ``(p_j, q_j)``, the sum
    over the other ``V - k`` entries is the one term of the rest bucket: the bucket loss equals the dense loss
    against :meth:`SparseLogits.log_probs` in value and in gradient (e.g. forward KL's ``m_T * (log m_T - log
    q_T(rest))``), for ``O(n * V)`` work on the student and no ``[n, V]`` teacher tensor.

    An unselected row is neutralised before the maths, never masked after it: its logits become zeros on both sides
    (two equal distributions: every KL-family loss and the TVD are 0, to float rounding of the mixtures, with a zero
    gradient) and its label becomes ``-100`` (ignored by the cross-entropy). So a padded position holding NaN or
    ``-inf`` logits reaches neither the value nor the gradient.
    """
    if isinstance(second, SparseLogits):
        student_buckets, teacher_buckets = _sparse_buckets(first, second, temperature, keep, chunk_size)
        return rows_loss(student_buckets, teacher_buckets, normalised=True)
    if keep is not None:
        first = first.masked_fill(~keep[:, None], 0)
        second = second.masked_fill(~keep, IGNORE_INDEX) if second.ndim == 1 else second.masked_fill(~keep[:, None], 0)
    return rows_loss(first, second)


def _sum_over_rows(
    rows_loss: RowsLoss,
    first: Tensor,
    second: Tensor | SparseLogits,
    keep: Tensor | None,
    chunk_size: int | None,
    temperature: float = 1.0,
) -> Tensor:
    """Sum of ``rows_loss`` over the rows of ``first`` / ``second`` selected by ``keep``, ``chunk_size`` rows at a time.

    Every row is visited and the unselected ones count 0 (:func:`_chunk_loss`): the selection is never read on the
    host (no ``nonzero``), so a training step on a GPU does not wait for it; padded positions cost their share of the
    per-token maths instead. Under autograd, when there is more than one chunk, each chunk of a dense teacher (or of
    labels) is checkpointed: only references to the inputs are kept, and the chunk's float32 maths is recomputed in
    the backward pass (a single chunk is not: its backward would recompute the same float32 tensors it saves, at the
    same peak). The rows are split into chunks with ``Tensor.split`` (their gradients are concatenated once), a single
    chunk is the rows themselves, and no rows give ``first.sum()`` over none, a 0 that still belongs to the graph (its
    gradient is 0). A sparse teacher's rows go to :func:`_chunk_loss` at once: only its vocabulary-wide work is chunked,
    inside :class:`_StudentBuckets` (no checkpoint, no float32 ``[n, V]`` kept between the passes when chunked, the
    gradient written chunk by chunk), and its loss over the ``[N, k + 1]`` buckets is computed for all rows together.
    """
    rows = first.shape[0]
    if rows == 0:
        return first.float().sum()  # 0, still in the graph (its gradient is 0)
    if isinstance(second, SparseLogits):  # one call: its vocabulary-wide work is chunked inside (_StudentBuckets)
        return _chunk_loss(rows_loss, first, second, keep, temperature, chunk_size)
    step = rows if chunk_size is None else chunk_size
    chunked = rows > step
    checkpointed = chunked and torch.is_grad_enabled() and first.requires_grad
    # split, not sliced: one concatenation of the chunks' gradients (a slice's backward is a zero-filled full copy)
    pieces = first.split(step) if chunked else (first,)
    total = None
    for index, piece in enumerate(pieces):
        chunk = slice(index * step, (index + 1) * step)
        kept = None if keep is None else keep[chunk]
        rest = second[chunk] if chunked else second
        if checkpointed:
            part = checkpoint(
                _chunk_loss, rows_loss, piece, rest, kept, temperature, use_reentrant=False, preserve_rng_state=False
            )
        else:
            part = _chunk_loss(rows_loss, piece, rest, kept, temperature)
        total = part if total is None else total + part
    return total


def _token_loss(
    loss: str,
    rows_loss: RowsLoss,
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None,
    num_tokens: Tensor | float | None,
    chunk_size: int | None,
    scale: float = 1.0,
    temperature: float = 1.0,
) -> Tensor:
    """Check the pair, sum the per-token losses of the selected positions chunk by chunk, scale and normalise.

    ``teacher`` may be :class:`SparseLogits`, rebuilt chunk by chunk at ``temperature`` (the loss's own).
    """
    _check_pair(student, teacher, loss)
    keep = _row_mask(mask, student.shape[:2], student.device, loss)
    teacher_rows = teacher.detach().flatten(0, 1)
    total = _sum_over_rows(rows_loss, student.flatten(0, 1), teacher_rows, keep, chunk_size, temperature)
    count = keep.sum() if keep is not None else student.shape[0] * student.shape[1]
    return total * scale / token_normaliser(num_tokens, count, total, loss)


# ---------------------------------------------------------------- per-chunk maths (float32, summed over rows)


def _log_probs(logits: Tensor, temperature: float) -> Tensor:
    """``log softmax(z / T)`` over the vocabulary, in float32."""
    logits = logits.float()
    return F.log_softmax(logits if temperature == 1 else logits / temperature, dim=-1)


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum_rows KL(p || q) = sum p * (log p - log q)`` from log-probabilities ``[n, V]``, with ``0 * log 0 = 0``.

    Where ``p = 0`` (a ``-inf`` log-probability, or one that underflows) the log-ratio is set to 0 before it is
    multiplied by ``p``, so the term is 0 whatever ``q`` is: ``-inf - (-inf) = NaN`` never reaches a product, and
    ``masked_fill``'s backward sends a plain 0 there (masking the product afterwards would still send ``0 * NaN = NaN``
    back through autograd). Where ``p > 0`` and ``q = 0`` the term is ``+inf``, the divergence's value. The log-ratio
    is masked in place: the same float32 temporaries as ``F.kl_div`` (``p``, the log-ratio, their product), plus a
    bool mask.
    """
    p = log_p.exp()
    ratio = (log_p - log_q).masked_fill_(p == 0, 0.0)
    return (p * ratio).sum()


def _log_mixture(log_p: Tensor, log_q: Tensor, weight: float) -> Tensor:
    """``log(weight * p + (1 - weight) * q)`` for ``0 < weight < 1``, in log space (``logaddexp``).

    An entry both distributions exclude (both log-probabilities ``-inf``) gets ``-inf``; its inputs are set to 0 first,
    because ``logaddexp``'s gradient at ``(-inf, -inf)`` is NaN even when nothing flows back to it.
    """
    both = torch.isneginf(log_p) & torch.isneginf(log_q)
    first = (log_p + math.log(weight)).masked_fill_(both, 0.0)
    second = (log_q + math.log1p(-weight)).masked_fill_(both, 0.0)
    return torch.logaddexp(first, second).masked_fill_(both, -math.inf)


def _rows_log_probs(student: Tensor, teacher: Tensor, temperature: float, normalised: bool) -> tuple[Tensor, Tensor]:
    """The two rows' log-probabilities: ``log softmax(z / T)`` of logits, or the rows as they are when ``normalised``
    (the ``[n, k + 1]`` bucket log-probabilities of a sparse teacher, already tempered)."""
    if normalised:
        return student, teacher
    return _log_probs(student, temperature), _log_probs(teacher, temperature)


def _skew_kl_rows(
    student: Tensor, teacher: Tensor, temperature: float, skew: float, reverse: bool, normalised: bool = False
) -> Tensor:
    """``KL(p || skew * p + (1 - skew) * q)``, ``p`` the teacher (the student when ``reverse``); plain KL at 0."""
    log_s, log_t = _rows_log_probs(student, teacher, temperature, normalised)
    log_p, log_q = (log_s, log_t) if reverse else (log_t, log_s)
    return _kl(log_p, log_q if skew == 0 else _log_mixture(log_p, log_q, skew))


def _jsd_rows(student: Tensor, teacher: Tensor, temperature: float, beta: float, normalised: bool = False) -> Tensor:
    """``beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)``, ``m = beta * p_t + (1 - beta) * p_s``, ``0 < beta < 1``."""
    log_s, log_t = _rows_log_probs(student, teacher, temperature, normalised)
    log_m = _log_mixture(log_t, log_s, beta)
    return beta * _kl(log_t, log_m) + (1 - beta) * _kl(log_s, log_m)


def _tvd_rows(student: Tensor, teacher: Tensor, temperature: float, normalised: bool = False) -> Tensor:
    """``sum_rows 1/2 * sum_v |p_t - p_s|``."""
    log_s, log_t = _rows_log_probs(student, teacher, temperature, normalised)
    p_s, p_t = log_s.exp(), log_t.exp()
    return 0.5 * (p_t - p_s).abs().sum()


def _cross_entropy_rows(logits: Tensor, labels: Tensor, label_smoothing: float) -> Tensor:
    return F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=label_smoothing)


# ---------------------------------------------------------------- functions


def forward_kl_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    num_tokens: Tensor | float | None = None,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Token-level forward KL: the teacher's distribution is the target (mode-covering).

    Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network", applied per token (DistilBERT's
    ``loss_ce``, the word-level KD of Kim and Rush 2016, DistiLLM's and torchtune's ``forward_kl``).

    ``T**2 / num_tokens * sum_{(b, l) in mask} KL(p_t || p_s)`` with ``p = softmax(z[b, l] / T)`` over the vocabulary.
    The ``T**2`` (DistilBERT's ``loss_ce * T**2``) keeps the gradient's scale across temperatures; at ``T = 1`` this
    is torchtune's ``ForwardKLLoss`` and DistiLLM's ``forward_kl`` plus the teacher's entropy (they return the
    cross-entropy form, which has the same gradient; this returns the KL, 0 when the student equals the teacher).

    Excluded entries (``-inf`` logits): an entry the teacher excludes (``p_t = 0``) adds 0 whatever the student gives
    it (``0 * log 0 = 0``) and gets a zero gradient. An entry only the student excludes while the teacher gives it
    mass makes ``KL(p_t || p_s)`` infinite: the function returns ``+inf`` (not NaN). Departure from torchtune's and
    DistiLLM's ``forward_kl``, which drop every entry whose student logit is infinite and so return a finite value
    that is no longer the KL. Exclude such an entry in both models, or use :func:`skew_kl_loss`, which stays finite.

    Args:
        student: student logits ``[B, L, V]`` (any float dtype; each chunk is upcast to float32).
        teacher: teacher logits ``[B, L, V]`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the positions that count (padding and unlabelled positions False); ``None``: all.
        temperature: softmax temperature ``T > 0``.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the number of selected
            positions (at least 1). The Lightning modules pass the effective batch's share of tokens.
        chunk_size: positions upcast to float32 at a time (checkpointed under autograd); ``None``: one chunk.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
        >>> forward_kl_loss(teacher, teacher).item()
        0.0
        >>> round(forward_kl_loss(torch.zeros(1, 2, 3), teacher, mask=torch.tensor([[True, False]])).item(), 4)
        0.5743
        >>> padded = torch.tensor([[[2.0, 0.0, float("-inf")]]])  # an entry both models exclude adds 0, not NaN
        >>> forward_kl_loss(padded, padded).item()
        0.0
    """
    check_positive("temperature", temperature)
    _check_chunk_size(chunk_size)
    rows_loss = partial(_skew_kl_rows, temperature=temperature, skew=0.0, reverse=False)
    return _token_loss(
        "forward_kl_loss", rows_loss, student, teacher, mask, num_tokens, chunk_size, temperature**2, temperature
    )


def reverse_kl_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    num_tokens: Tensor | float | None = None,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Token-level reverse KL: the student's distribution weighs the log-ratio (mode-seeking).

    Gu, Dong, Wei, Huang, ICLR 2024, "MiniLLM: Knowledge Distillation of Large Language Models" (its token-level
    form); GKD's ``beta = 1`` end (Agarwal et al. ICLR 2024); DistiLLM's ``reverse_kl``.

    ``T**2 / num_tokens * sum_{(b, l) in mask} KL(p_s || p_t)`` with ``p = softmax(z[b, l] / T)``. Same value as
    DistiLLM's ``reverse_kl`` at ``T = 1`` (already a KL there).

    Excluded entries (``-inf`` logits): an entry the student excludes (``p_s = 0``) adds 0 whatever the teacher gives
    it (``0 * log 0 = 0``) and gets a zero gradient. An entry only the teacher excludes while the student gives it
    mass makes ``KL(p_s || p_t)`` infinite: the function returns ``+inf`` (not NaN) and its gradient is not finite.
    Give the student's logits the teacher's exclusions (e.g. the same logits processor), or use
    :func:`skew_reverse_kl_loss` or :func:`generalized_jsd_loss`, which stay finite.

    Args:
        student: student logits ``[B, L, V]`` (any float dtype; each chunk is upcast to float32).
        teacher: teacher logits ``[B, L, V]`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the positions that count; ``None``: all.
        temperature: softmax temperature ``T > 0``.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the selected positions.
        chunk_size: positions upcast to float32 at a time (checkpointed under autograd); ``None``: one chunk.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[[2.0, 0.0, -1.0]]])
        >>> round(reverse_kl_loss(torch.zeros(1, 1, 3), teacher).item(), 4)
        0.7379
        >>> reverse_kl_loss(torch.zeros(1, 1, 3), torch.tensor([[[2.0, 0.0, float("-inf")]]])).item()  # teacher only
        inf
    """
    check_positive("temperature", temperature)
    _check_chunk_size(chunk_size)
    rows_loss = partial(_skew_kl_rows, temperature=temperature, skew=0.0, reverse=True)
    return _token_loss(
        "reverse_kl_loss", rows_loss, student, teacher, mask, num_tokens, chunk_size, temperature**2, temperature
    )


def generalized_jsd_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    num_tokens: Tensor | float | None = None,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Generalized Jensen-Shannon divergence per token: GKD's interpolation between forward and reverse KL.

    Agarwal, Vieillard, Zhou, Stanczyk, Ramos, Geist, Bachem, ICLR 2024, "On-Policy Distillation of Language Models:
    Learning from Self-Generated Mistakes" (GKD), eq. (1), as TRL's ``GKDTrainer.generalized_jsd_loss``.

    With ``P_t = softmax(t / T)``, ``P_s = softmax(s / T)`` and ``M = beta * P_t + (1 - beta) * P_s`` (its log taken
    with ``logaddexp``), ``JSD_beta = beta * KL(P_t || M) + (1 - beta) * KL(P_s || M)`` per token; the loss is
    ``T**2 / num_tokens * sum_{(b, l) in mask} JSD_beta``. ``JSD_beta -> 0`` as ``beta -> 0`` or ``1``, so, as TRL,
    the two ends are special-cased: ``beta = 0`` is exactly :func:`forward_kl_loss` (``KL(P_t || P_s)``) and
    ``beta = 1`` exactly :func:`reverse_kl_loss` (``KL(P_s || P_t)``). TRL runs GKD at ``T = 1`` (its temperature only
    affects sampling), where this equals TRL's value with labels ``-100`` outside ``mask``.

    Excluded entries (``-inf`` logits): for ``0 < beta < 1``, ``M > 0`` wherever ``P_t`` or ``P_s`` is, so
    ``JSD_beta`` and its gradient are finite whatever either model excludes; an entry both exclude adds 0. The ends
    ``beta = 0`` and ``1`` follow :func:`forward_kl_loss` and :func:`reverse_kl_loss` (``+inf`` where only the
    student, resp. only the teacher, excludes an entry the other gives mass).

    Args:
        student: student logits ``[B, L, V]`` (any float dtype; each chunk is upcast to float32).
        teacher: teacher logits ``[B, L, V]`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the positions that count (TRL: the labelled completion tokens); ``None``: all.
        beta: mixture weight of the teacher, in ``[0, 1]`` (TRL's default 0.5).
        temperature: softmax temperature ``T > 0``.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the selected positions.
        chunk_size: positions upcast to float32 at a time (checkpointed under autograd); ``None``: one chunk.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[[2.0, 0.0, -1.0]]])
        >>> round(generalized_jsd_loss(torch.zeros(1, 1, 3), teacher).item(), 4)
        0.1495
        >>> student = torch.zeros(1, 1, 3)
        >>> bool(generalized_jsd_loss(student, teacher, beta=0.0) == forward_kl_loss(student, teacher))
        True
    """
    _check_fraction("beta", beta, upper_closed=True)
    check_positive("temperature", temperature)
    _check_chunk_size(chunk_size)
    if beta in (0, 1):
        rows_loss = partial(_skew_kl_rows, temperature=temperature, skew=0.0, reverse=beta == 1)
    else:
        rows_loss = partial(_jsd_rows, temperature=temperature, beta=beta)
    return _token_loss(
        "generalized_jsd_loss", rows_loss, student, teacher, mask, num_tokens, chunk_size, temperature**2, temperature
    )


def skew_kl_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    skew: float = 0.1,
    temperature: float = 1.0,
    num_tokens: Tensor | float | None = None,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Skew KL divergence per token: forward KL against a mixture that keeps the student's zeros finite.

    Ko, Kim, Chen, Yun, ICML 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models", eq. (3)
    (``skewed_forward_kl`` in jongwooko/distillm).

    With ``p = softmax(t / T)`` (teacher), ``q = softmax(s / T)`` (student) and ``lambda = skew``,
    ``SKL_lambda(p, q) = KL(p || lambda * p + (1 - lambda) * q)`` per token; the loss is
    ``T**2 / num_tokens * sum_{(b, l) in mask} SKL_lambda``. ``skew = 0`` is :func:`forward_kl_loss`.

    Departure from DistiLLM's code: this returns the KL form (0 when the student equals the teacher); DistiLLM's
    ``skewed_forward_kl`` returns the cross-entropy form ``-sum_v p * log(lambda * p + (1 - lambda) * q)``, which
    differs by the teacher's entropy (a constant for the student: same gradient, different value).

    Excluded entries (``-inf`` logits): for ``skew > 0`` the mixture is at least ``lambda * p > 0`` wherever the
    teacher gives mass, so the value and its gradient are finite whatever the student excludes (the point of the
    skew); an entry the teacher excludes adds 0. ``skew = 0`` follows :func:`forward_kl_loss` (``+inf`` where only the
    student excludes an entry the teacher gives mass).

    Args:
        student: student logits ``[B, L, V]`` (any float dtype; each chunk is upcast to float32).
        teacher: teacher logits ``[B, L, V]`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the positions that count; ``None``: all.
        skew: the teacher's weight ``lambda`` in the mixture, in ``[0, 1)`` (DistiLLM's 0.1).
        temperature: softmax temperature ``T > 0``.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the selected positions.
        chunk_size: positions upcast to float32 at a time (checkpointed under autograd); ``None``: one chunk.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[[2.0, 0.0, -1.0]]])
        >>> round(skew_kl_loss(torch.zeros(1, 1, 3), teacher).item(), 4)
        0.4657
    """
    _check_fraction("skew", skew, upper_closed=False)
    check_positive("temperature", temperature)
    _check_chunk_size(chunk_size)
    rows_loss = partial(_skew_kl_rows, temperature=temperature, skew=skew, reverse=False)
    return _token_loss(
        "skew_kl_loss", rows_loss, student, teacher, mask, num_tokens, chunk_size, temperature**2, temperature
    )


def skew_reverse_kl_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    skew: float = 0.1,
    temperature: float = 1.0,
    num_tokens: Tensor | float | None = None,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Skew reverse KL divergence per token: reverse KL against a student-teacher mixture.

    Ko, Kim, Chen, Yun, ICML 2024, "DistiLLM: Towards Streamlined Distillation for Large Language Models", eq. (4)
    (``skewed_reverse_kl`` in jongwooko/distillm).

    With ``p = softmax(t / T)`` (teacher), ``q = softmax(s / T)`` (student) and ``lambda = skew``,
    ``SRKL_lambda(q, p) = KL(q || lambda * q + (1 - lambda) * p)`` per token; the loss is
    ``T**2 / num_tokens * sum_{(b, l) in mask} SRKL_lambda``. ``skew = 0`` is :func:`reverse_kl_loss`. DistiLLM's
    ``skewed_reverse_kl`` already returns this KL form (0 when the student equals the teacher).

    Excluded entries (``-inf`` logits): for ``skew > 0`` the mixture is at least ``lambda * q > 0`` wherever the
    student gives mass, so the value and its gradient are finite whatever the teacher excludes; an entry the student
    excludes adds 0. ``skew = 0`` follows :func:`reverse_kl_loss` (``+inf`` where only the teacher excludes an entry
    the student gives mass).

    Args:
        student: student logits ``[B, L, V]`` (any float dtype; each chunk is upcast to float32).
        teacher: teacher logits ``[B, L, V]`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the positions that count; ``None``: all.
        skew: the student's weight ``lambda`` in the mixture, in ``[0, 1)`` (DistiLLM's 0.1).
        temperature: softmax temperature ``T > 0``.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the selected positions.
        chunk_size: positions upcast to float32 at a time (checkpointed under autograd); ``None``: one chunk.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[[2.0, 0.0, -1.0]]])
        >>> round(skew_reverse_kl_loss(torch.zeros(1, 1, 3), teacher).item(), 4)
        0.5246
    """
    _check_fraction("skew", skew, upper_closed=False)
    check_positive("temperature", temperature)
    _check_chunk_size(chunk_size)
    rows_loss = partial(_skew_kl_rows, temperature=temperature, skew=skew, reverse=True)
    return _token_loss(
        "skew_reverse_kl_loss", rows_loss, student, teacher, mask, num_tokens, chunk_size, temperature**2, temperature
    )


def total_variation_loss(
    student: Tensor,
    teacher: Tensor,
    mask: Tensor | None = None,
    temperature: float = 1.0,
    num_tokens: Tensor | float | None = None,
    chunk_size: int | None = 1024,
) -> Tensor:
    """Total variation distance per token between the teacher's and the student's next-token distributions.

    Wen, Li, Du, Mou, ACL 2023, "f-Divergence Minimization for Sequence-Level Knowledge Distillation" (TVD);
    DistiLLM's ``tv_distance``.

    ``1 / num_tokens * sum_{(b, l) in mask} 1/2 * sum_v |p_t[v] - p_s[v]|`` with ``p = softmax(z[b, l] / T)``. Not
    multiplied by ``T**2``: each token's distance is bounded in ``[0, 1]``.

    Excluded entries (``-inf`` logits) have probability 0 on their side: the value stays in ``[0, 1]`` per token,
    with a finite gradient, whichever model excludes them.

    Args:
        student: student logits ``[B, L, V]`` (any float dtype; each chunk is upcast to float32).
        teacher: teacher logits ``[B, L, V]`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the positions that count; ``None``: all.
        temperature: softmax temperature ``T > 0``.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the selected positions.
        chunk_size: positions upcast to float32 at a time (checkpointed under autograd); ``None``: one chunk.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> teacher = torch.tensor([[[2.0, 0.0, -1.0]]])
        >>> round(total_variation_loss(torch.zeros(1, 1, 3), teacher).item(), 4)
        0.5105
    """
    check_positive("temperature", temperature)
    _check_chunk_size(chunk_size)
    rows_loss = partial(_tvd_rows, temperature=temperature)
    return _token_loss(
        "total_variation_loss", rows_loss, student, teacher, mask, num_tokens, chunk_size, temperature=temperature
    )


def token_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    mask: Tensor | None = None,
    num_tokens: Tensor | float | None = None,
    chunk_size: int | None = 1024,
    label_smoothing: float = 0.0,
) -> Tensor:
    """The hard masked- / causal-LM loss: cross-entropy of the logits against the labels, per token.

    Devlin et al. 2019 (BERT's masked-LM loss) and Radford et al. 2019 (GPT-2's causal-LM loss), as Hugging Face's
    ``ForMaskedLMLoss`` / ``ForCausalLMLoss`` but without their shift: ``labels`` are already aligned with the logits
    (for a causal LM, label ``t`` is the token at ``t + 1``; :meth:`kd_lightning.core.tokens.Targets.aligned_labels`).

    ``1 / num_tokens * sum_{(b, l) selected} -log softmax(logits[b, l])[labels[b, l]]`` (with ``label_smoothing``,
    torch's smoothed cross-entropy per token), where the selected positions have ``labels != -100`` and ``mask``
    True. With ``num_tokens=None`` this equals ``F.cross_entropy(..., ignore_index=-100, reduction="mean")`` over those
    positions (and 0, not NaN, when none is selected).

    Excluded entries (``-inf`` logits) add nothing and get a zero gradient, unless the label itself is excluded
    (``-log 0 = +inf``) or ``label_smoothing > 0``: the smoothed target puts ``label_smoothing / V`` on every entry,
    excluded ones too, so the value is ``+inf``, as ``F.cross_entropy``'s.

    Args:
        logits: logits ``[B, L, V]`` (any float dtype; each chunk is upcast to float32).
        labels: token ids ``[B, L]`` aligned with ``logits``; ``-100`` = ignored.
        mask: ``[B, L]`` bool, further positions to drop (False); ``None``: every labelled position.
        num_tokens: the divisor of the summed loss (a number or a 0-d tensor); ``None``: the selected positions.
        chunk_size: positions upcast to float32 at a time (checkpointed under autograd); ``None``: one chunk.
        label_smoothing: in ``[0, 1]``, as ``F.cross_entropy``.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])
        >>> round(token_cross_entropy(logits, torch.tensor([[0, -100]])).item(), 4)
        0.1698
    """
    _check_fraction("label_smoothing", label_smoothing, upper_closed=True)
    _check_chunk_size(chunk_size)
    _check_logits(logits, "token_cross_entropy", "student")
    if tuple(labels.shape) != tuple(logits.shape[:2]) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"token_cross_entropy expected integer labels of shape [B, L] = {tuple(logits.shape[:2])} but got a "
            f"{labels.dtype} tensor of shape {tuple(labels.shape)}; pass one token id per logit position (-100 = "
            f"ignored), already aligned with the logits (no shift)."
        )
    keep = _row_mask(mask, labels.shape, logits.device, "token_cross_entropy")
    labels = labels.to(logits.device).flatten()
    keep = labels != IGNORE_INDEX if keep is None else keep & (labels != IGNORE_INDEX)
    rows_loss = partial(_cross_entropy_rows, label_smoothing=label_smoothing)
    total = _sum_over_rows(rows_loss, logits.flatten(0, 1), labels, keep, chunk_size)
    return total / token_normaliser(num_tokens, keep.sum(), total, "token_cross_entropy")


# ---------------------------------------------------------------- modules


class _TokenLogitLoss(TokenLoss):
    """Shared hyperparameters of the token-level logit losses (temperature, chunk size, the positions rule) and their
    ``forward``: the module's ``function`` called with its hyperparameters (:meth:`hyperparameters`).

    ``positions`` defaults to ``"real"``, every real (non-padding) token: DistilBERT's convention (its distiller's KL
    reads every attention-masked token; ``--restrict_ce_to_mask`` is the opt-in that keeps only the MLM-masked ones).
    """

    token_kind = "logits"
    function: ClassVar[Callable[..., Tensor]]

    def __init__(self, temperature: float = 1.0, chunk_size: int | None = 1024, positions: str = "real") -> None:
        super().__init__()
        check_positive("temperature", temperature)
        _check_chunk_size(chunk_size)
        if positions not in POSITIONS:
            raise ValueError(
                f"expected positions in {list(POSITIONS)} but got {positions!r}; 'real' (the default) reads every "
                f"real (non-padding) token, as DistilBERT, 'labelled' only the labelled tokens (DistilBERT's "
                f"--restrict_ce_to_mask, TRL GKD's completion), 'auto' the labelled tokens when the batch has labels "
                f"and every real token otherwise."
            )
        self.temperature, self.chunk_size, self.positions = temperature, chunk_size, positions

    def hyperparameters(self) -> dict[str, float]:
        """The loss function's own keyword arguments (besides the mask, the normaliser and the chunk size)."""
        return {"temperature": self.temperature}

    def forward(
        self,
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        num_tokens: Tensor | float | None = None,
    ) -> Tensor:
        """The loss of logits ``[B, L, V]`` over ``mask`` ``[B, L]`` divided by ``num_tokens`` (``target``: unused)."""
        function = type(self).function
        return function(
            student, teacher, mask, num_tokens=num_tokens, chunk_size=self.chunk_size, **self.hyperparameters()
        )

    def _options(self) -> str:
        return f"temperature={self.temperature}, chunk_size={self.chunk_size}, positions={self.positions!r}"

    def extra_repr(self) -> str:
        return self._options()


class ForwardKLLoss(_TokenLogitLoss):
    """Module form of :func:`forward_kl_loss`: ``T**2 * KL(p_t || p_s)`` per token (DistilBERT's ``loss_ce``).

    By default (``positions="real"``) it reads every real (non-padding) token, as DistilBERT's distiller, which
    computes its KL on every attention-masked token and restricts it to the MLM-masked positions only with the
    opt-in ``--restrict_ce_to_mask`` (here ``positions="labelled"``).

    Args:
        temperature: softmax temperature ``T > 0`` (DistilBERT: 2).
        chunk_size: positions upcast to float32 at a time, ``>= 1``; ``None``: one chunk.
        positions: the token positions the Lightning objective reads (:mod:`kd_lightning.core.tokens`): ``"real"``
            (default) every real token, DistilBERT's convention; ``"labelled"`` only the labelled tokens (DistilBERT's
            opt-in ``--restrict_ce_to_mask``, TRL GKD's completion tokens); ``"auto"`` the labelled tokens when the
            batch has labels, else every real token.

    Example:
        >>> ForwardKLLoss(temperature=2.0)(torch.randn(2, 5, 11), torch.randn(2, 5, 11)).shape
        torch.Size([])
    """

    function = staticmethod(forward_kl_loss)


class ReverseKLLoss(_TokenLogitLoss):
    """Module form of :func:`reverse_kl_loss`: ``T**2 * KL(p_s || p_t)`` per token (mode-seeking).

    Args:
        temperature: softmax temperature ``T > 0``.
        chunk_size: positions upcast to float32 at a time, ``>= 1``; ``None``: one chunk.
        positions: the token positions the Lightning objective reads (:mod:`kd_lightning.core.tokens`): ``"real"``
            (default) every real token, DistilBERT's convention; ``"labelled"`` only the labelled tokens (DistilBERT's
            opt-in ``--restrict_ce_to_mask``, TRL GKD's completion tokens); ``"auto"`` the labelled tokens when the
            batch has labels, else every real token.

    Example:
        >>> ReverseKLLoss()(torch.randn(2, 5, 11), torch.randn(2, 5, 11)).shape
        torch.Size([])
    """

    function = staticmethod(reverse_kl_loss)


class GeneralizedJSDLoss(_TokenLogitLoss):
    """Module form of :func:`generalized_jsd_loss` (GKD, Agarwal et al. ICLR 2024; TRL's default ``beta = 0.5``).

    Args:
        beta: mixture weight of the teacher, in ``[0, 1]``; 0 is forward KL, 1 reverse KL.
        temperature: softmax temperature ``T > 0`` (TRL's loss runs at 1).
        chunk_size: positions upcast to float32 at a time, ``>= 1``; ``None``: one chunk.
        positions: the token positions the Lightning objective reads (:mod:`kd_lightning.core.tokens`): ``"real"``
            (default) every real token, DistilBERT's convention; ``"labelled"`` only the labelled tokens (DistilBERT's
            opt-in ``--restrict_ce_to_mask``, TRL GKD's completion tokens); ``"auto"`` the labelled tokens when the
            batch has labels, else every real token.

    Example:
        >>> GeneralizedJSDLoss(beta=0.9)(torch.randn(2, 5, 11), torch.randn(2, 5, 11)).shape
        torch.Size([])
    """

    def __init__(
        self, beta: float = 0.5, temperature: float = 1.0, chunk_size: int | None = 1024, positions: str = "real"
    ) -> None:
        super().__init__(temperature, chunk_size, positions)
        _check_fraction("beta", beta, upper_closed=True)
        self.beta = beta

    function = staticmethod(generalized_jsd_loss)

    def hyperparameters(self) -> dict[str, float]:
        return {"beta": self.beta, "temperature": self.temperature}

    def extra_repr(self) -> str:
        return f"beta={self.beta}, {self._options()}"


class _SkewLoss(_TokenLogitLoss):
    """Shared hyperparameters of the two skew losses: the mixture weight ``skew`` in ``[0, 1)``."""

    def __init__(
        self, skew: float = 0.1, temperature: float = 1.0, chunk_size: int | None = 1024, positions: str = "real"
    ) -> None:
        super().__init__(temperature, chunk_size, positions)
        _check_fraction("skew", skew, upper_closed=False)
        self.skew = skew

    def hyperparameters(self) -> dict[str, float]:
        return {"skew": self.skew, "temperature": self.temperature}

    def extra_repr(self) -> str:
        return f"skew={self.skew}, {self._options()}"


class SkewKLLoss(_SkewLoss):
    """Module form of :func:`skew_kl_loss` (DistiLLM, Ko et al. ICML 2024), in KL form (0 at equality).

    Args:
        skew: the teacher's weight ``lambda`` in the mixture, in ``[0, 1)`` (DistiLLM's 0.1).
        temperature: softmax temperature ``T > 0``.
        chunk_size: positions upcast to float32 at a time, ``>= 1``; ``None``: one chunk.
        positions: the token positions the Lightning objective reads (:mod:`kd_lightning.core.tokens`): ``"real"``
            (default) every real token, DistilBERT's convention; ``"labelled"`` only the labelled tokens (DistilBERT's
            opt-in ``--restrict_ce_to_mask``, TRL GKD's completion tokens); ``"auto"`` the labelled tokens when the
            batch has labels, else every real token.

    Example:
        >>> SkewKLLoss(skew=0.1)(torch.randn(2, 5, 11), torch.randn(2, 5, 11)).shape
        torch.Size([])
    """

    function = staticmethod(skew_kl_loss)


class SkewReverseKLLoss(_SkewLoss):
    """Module form of :func:`skew_reverse_kl_loss` (DistiLLM, Ko et al. ICML 2024).

    Args:
        skew: the student's weight ``lambda`` in the mixture, in ``[0, 1)`` (DistiLLM's 0.1).
        temperature: softmax temperature ``T > 0``.
        chunk_size: positions upcast to float32 at a time, ``>= 1``; ``None``: one chunk.
        positions: the token positions the Lightning objective reads (:mod:`kd_lightning.core.tokens`): ``"real"``
            (default) every real token, DistilBERT's convention; ``"labelled"`` only the labelled tokens (DistilBERT's
            opt-in ``--restrict_ce_to_mask``, TRL GKD's completion tokens); ``"auto"`` the labelled tokens when the
            batch has labels, else every real token.

    Example:
        >>> SkewReverseKLLoss()(torch.randn(2, 5, 11), torch.randn(2, 5, 11)).shape
        torch.Size([])
    """

    function = staticmethod(skew_reverse_kl_loss)


class TVDLoss(_TokenLogitLoss):
    """Module form of :func:`total_variation_loss`: ``1/2 * sum_v |p_t - p_s|`` per token, not scaled by ``T**2``.

    Args:
        temperature: softmax temperature ``T > 0``.
        chunk_size: positions upcast to float32 at a time, ``>= 1``; ``None``: one chunk.
        positions: the token positions the Lightning objective reads (:mod:`kd_lightning.core.tokens`): ``"real"``
            (default) every real token, DistilBERT's convention; ``"labelled"`` only the labelled tokens (DistilBERT's
            opt-in ``--restrict_ce_to_mask``, TRL GKD's completion tokens); ``"auto"`` the labelled tokens when the
            batch has labels, else every real token.

    Example:
        >>> TVDLoss()(torch.randn(2, 5, 11), torch.randn(2, 5, 11)).shape
        torch.Size([])
    """

    function = staticmethod(total_variation_loss)
