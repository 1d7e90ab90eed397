"""Hidden-state losses: the student's transformer layers match the teacher's hidden states ``[B, L, H]`` token by token.

DistilBERT's cosine loss and TinyBERT's MSE, averaged over the real (attention-masked) tokens. The module forms take a
*layer map*: a tuple of student layers and a tuple of as many teacher layers (``student: [encoder.layer.0,
encoder.layer.1]``, ``teacher: [encoder.layer.0, encoder.layer.2]`` pairs student layer ``j`` with the ``j``-th teacher
layer), and average the per-pair losses. Where a pair's widths differ, a trainable ``Linear(H_s, H_t)`` that the loss
owns (a :class:`~kd_lightning.losses.adapters.LazyAdapter`, built from the first batch, saved in checkpoints) projects
the student onto the teacher's width, as TinyBERT's ``W_h``. Every loss treats the teacher as a constant target (it is
detached), computes in float32 and returns an unweighted scalar; the weight lives in the caller's ``DistillTerm``.
The states at positions outside the mask are never read: they may hold anything, NaN included, and still give a
finite value and a finite gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_lightning.losses._checks import token_normaliser
from kd_lightning.losses.adapters import LazyAdapter
from kd_lightning.losses.base import ANY_LAYERS, TokenLoss

__all__ = ["HiddenCosineLoss", "HiddenMSELoss", "hidden_cosine_loss", "hidden_mse_loss"]

HiddenStates = Tensor | Sequence[Tensor]
_MODULE_FORMS = {"hidden_cosine_loss": "HiddenCosineLoss", "hidden_mse_loss": "HiddenMSELoss"}


def _check_states(student: Tensor, teacher: Tensor, loss: str, pair: str = "") -> None:
    """Raise unless student and teacher are ``[B, L, H]`` hidden states of the same batch and length."""
    for role, tensor in (("student", student), ("teacher", teacher)):
        if tensor.ndim != 3:
            hint = (
                "; for [B, C, H, W] feature maps use the feature losses (FitNetsLoss, ATLoss)"
                if tensor.ndim == 4
                else "; tap a transformer layer whose output is the hidden states [B, L, H]"
            )
            raise ValueError(
                f"{loss} expected 3-d [B, L, H] {role} hidden states{pair} but got shape {tuple(tensor.shape)}{hint}."
            )
    if student.shape[:2] != teacher.shape[:2]:
        raise ValueError(
            f"{loss} expected student and teacher hidden states{pair} of the same batch size and length [B, L] but "
            f"got {tuple(student.shape)} (student) and {tuple(teacher.shape)} (teacher); feed both networks the same "
            f"tokenised batch."
        )


def _zero_outside(states: Tensor, mask: Tensor | None) -> Tensor:
    """``states`` ``[B, L, H]`` with the rows outside ``mask`` ``[B, L]`` set to 0 (unchanged when ``mask`` is None).

    Padding rows may hold anything (a fully padded sequence gets NaN hidden states from some attention kernels):
    replacing them before any maths keeps them out of the value and the gradient alike, where masking the per-token
    loss afterwards would still send ``0 * NaN = NaN`` back to the student and to a projection's weights.
    """
    if mask is None:
        return states
    return torch.where(mask.to(device=states.device, dtype=torch.bool).unsqueeze(-1), states, 0.0)


def _check_mask(mask: Tensor | None, states: Tensor, loss: str) -> None:
    if mask is not None and tuple(mask.shape) != tuple(states.shape[:2]):
        raise ValueError(
            f"{loss} expected a mask of shape [B, L] = {tuple(states.shape[:2])} but got {tuple(mask.shape)}; pass "
            f"the batch's attention mask."
        )


def _check_inputs(student: Tensor, teacher: Tensor, mask: Tensor | None, loss: str) -> tuple[Tensor, Tensor]:
    """Validate one pair of equal-width hidden states and the mask; return them float32 with the rows outside the
    mask set to 0 (:func:`_zero_outside`), the teacher detached."""
    _check_states(student, teacher, loss)
    if student.shape[2] != teacher.shape[2]:
        raise ValueError(
            f"{loss} expected student and teacher hidden states of the same width H but got {tuple(student.shape)} "
            f"(student) and {tuple(teacher.shape)} (teacher); use {_MODULE_FORMS[loss]}(project=True), which learns "
            f"a Linear(H_s, H_t) projection, or pair layers of equal width."
        )
    _check_mask(mask, student, loss)
    return _zero_outside(student.float(), mask), _zero_outside(teacher.detach().float(), mask)


def _token_mean(per_token: Tensor, mask: Tensor | None, num_tokens: Tensor | float | None, loss: str) -> Tensor:
    """``sum over selected positions of per_token [B, L] / num_tokens`` (default: the count of selected positions).

    A zero count or ``num_tokens`` becomes 1 (as in :mod:`kd_lightning.losses.token`), so an empty mask gives 0 with
    zero gradient instead of ``0 / 0``. ``per_token`` must be finite everywhere (the callers zero the unselected rows
    of their inputs first).
    """
    if mask is None:
        total, count = per_token.sum(), per_token.new_tensor(float(per_token.numel()))
    else:
        mask = mask.to(device=per_token.device, dtype=torch.bool)
        total, count = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(), mask.sum()
    return total / token_normaliser(num_tokens, count, total, loss)


def hidden_cosine_loss(
    student: Tensor, teacher: Tensor, mask: Tensor | None = None, num_tokens: Tensor | float | None = None
) -> Tensor:
    """DistilBERT's cosine loss: one minus the cosine similarity of student and teacher hidden states, per token.

    Sanh, Debut, Chaumond, Wolf, NeurIPS EMC2 workshop 2019, "DistilBERT, a distilled version of BERT: smaller,
    faster, cheaper and lighter".

    ``loss = sum_{(b, l) in mask} (1 - cos(s_bl, t_bl)) / num_tokens``; with the default ``num_tokens`` (the number of
    selected tokens) this is ``nn.CosineEmbeddingLoss`` with target 1 on the attention-masked rows, DistilBERT's
    ``cosine_loss_fct`` (its recipe: weight 1.0 on the last hidden states, beside KD 5.0 and MLM 2.0). Ranges over
    ``[0, 2]``; the cosine uses ``F.cosine_similarity`` (``eps = 1e-8``; ``CosineEmbeddingLoss`` adds ``1e-12`` to the
    squared norms, the same value for non-degenerate states).

    Args:
        student: student hidden states ``[B, L, H]``.
        teacher: teacher hidden states ``[B, L, H]`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the tokens that count (the attention mask); ``None`` selects every token.
        num_tokens: the normaliser (the effective batch's share of tokens under gradient accumulation or DDP);
            ``None`` uses the number of selected tokens; a zero count becomes 1, so an empty mask gives 0.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])
        >>> hidden_cosine_loss(student, teacher).item()
        0.5
        >>> hidden_cosine_loss(student, teacher, mask=torch.tensor([[True, False]])).item()
        0.0
    """
    student, teacher = _check_inputs(student, teacher, mask, "hidden_cosine_loss")
    return _token_mean(1 - F.cosine_similarity(student, teacher, dim=-1), mask, num_tokens, "hidden_cosine_loss")


def hidden_mse_loss(
    student: Tensor, teacher: Tensor, mask: Tensor | None = None, num_tokens: Tensor | float | None = None
) -> Tensor:
    """TinyBERT's hidden-state loss: the squared error of student and teacher hidden states, averaged per token.

    Jiao, Yin, Shang, Jiang, Chen, Li, Wang, Liu, Findings of EMNLP 2020, "TinyBERT: Distilling BERT for Natural
    Language Understanding".

    ``loss = sum_{(b, l) in mask} mean_h (s_blh - t_blh)^2 / num_tokens``: with the default ``num_tokens`` the mean
    over the selected tokens and the hidden units. Departure from TinyBERT, which averages over every position
    (``MSELoss`` on ``[B, L, H]``, padding included): padding tokens are masked out here.

    Args:
        student: student hidden states ``[B, L, H]`` (already projected to the teacher's width).
        teacher: teacher hidden states ``[B, L, H]`` (treated as a constant, detached).
        mask: ``[B, L]`` bool, the tokens that count (the attention mask); ``None`` selects every token.
        num_tokens: the normaliser (the effective batch's share of tokens under gradient accumulation or DDP);
            ``None`` uses the number of selected tokens; a zero count becomes 1, so an empty mask gives 0.

    Returns:
        Scalar float32 tensor.

    Example:
        >>> student = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
        >>> teacher = torch.tensor([[[2.0, 0.0], [1.0, 0.0]]])
        >>> hidden_mse_loss(student, teacher).item()
        0.75
        >>> hidden_mse_loss(student, teacher, mask=torch.tensor([[False, True]])).item()
        1.0
    """
    student, teacher = _check_inputs(student, teacher, mask, "hidden_mse_loss")
    return _token_mean((student - teacher).pow(2).mean(dim=-1), mask, num_tokens, "hidden_mse_loss")


def linear_projection(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> nn.Module:
    """LazyAdapter factory: ``nn.Linear(H_s, H_t)`` from the widths ``(H_s,)`` and ``(H_t,)``."""
    return nn.Linear(student_shape[-1], teacher_shape[-1])


def _as_layers(states: HiddenStates, role: str, loss: str) -> tuple[Tensor, ...]:
    if isinstance(states, Tensor):
        return (states,)
    if isinstance(states, Sequence) and states and all(isinstance(state, Tensor) for state in states):
        return tuple(states)
    raise ValueError(
        f"{loss} expected {role} hidden states as a [B, L, H] tensor or a non-empty tuple of them (one per layer of "
        f"the layer map) but got {type(states).__name__}; list the {role}'s layers in the DistillTerm."
    )


class _HiddenStateLoss(TokenLoss):
    """A per-pair hidden-state loss averaged over a layer map, with a lazy ``Linear(H_s, H_t)`` per wider pair."""

    token_kind: ClassVar[str] = "hidden"
    layers_per_network: ClassVar[int] = ANY_LAYERS
    positions: str = "hidden"
    function: ClassVar[Callable[..., Tensor]]

    def __init__(self, project: bool = True) -> None:
        super().__init__()
        self.project = project
        self.projections = nn.ModuleList()
        self.register_buffer("widths", torch.zeros(0, 2, dtype=torch.long))
        self._widths: tuple[tuple[int, int], ...] | None = None

    def _build(self, widths: tuple[tuple[int, int], ...], device: torch.device | None) -> None:
        """Record the layer map's widths ``((H_s, H_t), ...)`` and create one projection per pair."""
        self._widths = widths
        self.widths = torch.tensor(widths, dtype=torch.long, device=device).view(-1, 2)
        if self.project:
            for width_s, width_t in widths:
                if width_s == width_t:
                    self.projections.append(nn.Identity())
                else:
                    adapter = LazyAdapter(linear_projection)
                    adapter.build((width_s,), (width_t,), device=device)
                    adapter.train(self.training)
                    self.projections.append(adapter)

    def _check_widths(self, student: tuple[Tensor, ...], teacher: tuple[Tensor, ...]) -> None:
        name = type(self).__name__
        if len(student) != len(teacher):
            raise ValueError(
                f"{name} expected as many teacher as student layers (a layer map of pairs) but got {len(student)} "
                f"student and {len(teacher)} teacher hidden states; list one teacher layer per student layer."
            )
        for index, (s, t) in enumerate(zip(student, teacher, strict=True)):
            _check_states(s, t, name, f" of pair {index}")
            if not self.project and s.shape[2] != t.shape[2]:
                raise ValueError(
                    f"{name} expected equal widths in pair {index} but got student {tuple(s.shape)} and teacher "
                    f"{tuple(t.shape)} (H_s={s.shape[2]}, H_t={t.shape[2]}); set project: true to learn a "
                    f"Linear(H_s, H_t) projection, or pair layers of equal width."
                )
        widths = tuple((s.shape[2], t.shape[2]) for s, t in zip(student, teacher, strict=True))
        if self._widths is None:
            self._build(widths, student[0].device)
        elif len(widths) != len(self._widths):
            raise ValueError(
                f"{name} expected {len(self._widths)} layer pairs (as in its first batch or checkpoint) but got "
                f"{len(widths)}; keep one layer map per loss instance (one DistillTerm per map)."
            )
        elif widths != self._widths:
            raise ValueError(
                f"{name} expected the (H_s, H_t) widths {list(self._widths)} of its first batch or checkpoint but got "
                f"{list(widths)}; keep one layer map per loss instance (one DistillTerm per map)."
            )

    def forward(
        self,
        student: HiddenStates,
        teacher: HiddenStates,
        target: Tensor | None = None,
        mask: Tensor | None = None,
        num_tokens: Tensor | float | None = None,
    ) -> Tensor:
        """Project each student layer where needed (building the projections on the first call) and return the mean
        over the layer pairs of the per-pair loss; ``target`` is ignored.

        Args:
            student: student hidden states ``[B, L, H_s]``, or a tuple of them (one per pair of the layer map).
            teacher: teacher hidden states ``[B, L, H_t]``, or a tuple of as many (treated as constants, detached).
            target: ignored.
            mask: ``[B, L]`` bool, the tokens that count (the attention mask); ``None`` selects every token.
            num_tokens: the normaliser of each pair's sum; ``None`` uses the number of selected tokens.
        """
        name = type(self).__name__
        student_layers = _as_layers(student, "student", name)
        teacher_layers = _as_layers(teacher, "teacher", name)
        self._check_widths(student_layers, teacher_layers)
        losses = []
        for index, (s, t) in enumerate(zip(student_layers, teacher_layers, strict=True)):
            if self.project:
                _check_mask(mask, s, name)
                projection = self.projections[index]
                net = projection.net if isinstance(projection, LazyAdapter) else projection
                s = net(_zero_outside(s.float(), mask)).float()
            losses.append(type(self).function(s, t, mask, num_tokens))
        return torch.stack(losses).mean()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        code = state_dict.get(prefix + "widths")
        if code is not None and code.numel() > 0:
            widths = tuple((int(s), int(t)) for s, t in code.view(-1, 2).tolist())
            if self._widths is None:
                self._build(widths, self.widths.device)
            elif widths != self._widths:
                errors.append(
                    f"{type(self).__name__} was built for the (H_s, H_t) widths {list(self._widths)} but the state "
                    f"dict holds {list(widths)}; load it into a fresh loss."
                )
                return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)

    def extra_repr(self) -> str:
        return f"project={self.project}"


class HiddenCosineLoss(_HiddenStateLoss):
    """Module form of :func:`hidden_cosine_loss` over a layer map; DistilBERT uses weight 1.0 on the last layer.

    The value is the MEAN over the layer pairs of :func:`hidden_cosine_loss` (so the term's weight does not grow with
    the number of pairs; TinyBERT sums its per-layer losses). The pairs' widths ``(H_s, H_t)`` are kept in the
    ``widths`` buffer ``[P, 2]``, so a checkpoint loads with strict ``load_state_dict`` before any forward.

    Args:
        project: when ``True`` (default), a pair whose widths differ (``H_s != H_t``) gets a trainable
            ``Linear(H_s, H_t)`` applied to the student's states, in ``projections[i]`` (a
            :class:`~kd_lightning.losses.adapters.LazyAdapter` built from the first batch and saved in checkpoints;
            ``nn.Identity`` for pairs of equal width). With ``False`` every pair must have equal widths.

    Example:
        >>> loss = HiddenCosineLoss()
        >>> student = (torch.randn(2, 5, 8), torch.randn(2, 5, 16))
        >>> teacher = (torch.randn(2, 5, 16), torch.randn(2, 5, 16))
        >>> loss(student, teacher, mask=torch.ones(2, 5, dtype=torch.bool)).shape
        torch.Size([])
        >>> [type(projection).__name__ for projection in loss.projections], loss.projections[0].net
        (['LazyAdapter', 'Identity'], Linear(in_features=8, out_features=16, bias=True))
    """

    function = staticmethod(hidden_cosine_loss)


class HiddenMSELoss(_HiddenStateLoss):
    """Module form of :func:`hidden_mse_loss` over a layer map (TinyBERT's hidden-state loss with its ``W_h``).

    The value is the MEAN over the layer pairs of :func:`hidden_mse_loss` (so the term's weight does not grow with
    the number of pairs; TinyBERT sums its per-layer losses, which equals this times the number of pairs). The pairs'
    widths ``(H_s, H_t)`` are kept in the ``widths`` buffer ``[P, 2]``, so a checkpoint loads with strict
    ``load_state_dict`` before any forward.

    Args:
        project: when ``True`` (default), a pair whose widths differ (``H_s != H_t``) gets a trainable
            ``Linear(H_s, H_t)`` applied to the student's states (TinyBERT's ``W_h``, one per pair here), in
            ``projections[i]`` (a :class:`~kd_lightning.losses.adapters.LazyAdapter` built from the first batch and
            saved in checkpoints; ``nn.Identity`` for pairs of equal width). With ``False`` every pair must have
            equal widths.

    Example:
        >>> loss = HiddenMSELoss()
        >>> states = torch.randn(2, 5, 8)
        >>> loss(states, states).item()
        0.0
        >>> loss(states, states.flip(0)).item() > 0
        True
    """

    function = staticmethod(hidden_mse_loss)
