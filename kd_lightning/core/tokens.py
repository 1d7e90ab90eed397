"""The targets of a batch (:class:`Targets`): labels, and for sequences the token positions a loss reads and the
number of real tokens it is normalised by.

Sequence losses (the hard masked-/causal-LM loss, token-level logit losses, hidden-state losses) are sums over token
positions divided by a token count. :class:`Targets` carries what decides the positions — the labels ``[B, L]``
(``-100`` = ignored), the attention mask ``[B, L]`` (0 = padding) and whether the model is a causal LM — and the
normalisers that make the loss a mean per real token of the *effective* batch (every micro-batch of a gradient
accumulation window, on every DDP process), so padding, accumulation and DDP never change the loss's scale.

Position rules (``Targets.mask``), all aligned with the logits ``[B, L, V]`` of the model (never shifted copies):

* ``"labelled"``: positions with a label. For a causal LM the logits at position ``t`` predict token ``t + 1``, so
  position ``t`` counts when label ``t + 1`` is not ``-100`` (the last position never counts) — the shift of
  Hugging Face's causal-LM loss, written as a mask so the logits are never copied.
* ``"real"``: every real (non-padding) token; for a causal LM, position ``t`` counts when tokens ``t`` and ``t + 1``
  are real.
* ``"hidden"``: every real token, unshifted (hidden states ``[B, L, H]`` are compared position by position).
* ``"auto"``: ``"labelled"`` when the batch has labels, else ``"real"``.

DistilBERT distils on every real (attention-masked) token by default and on the MLM-masked tokens only with
``--restrict_ce_to_mask``: here the token-logit losses default to ``"real"``, and ``"labelled"`` is that opt-in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor, nn

IGNORE_INDEX = -100
"""Label of a position (or sample) that no hard-label loss reads: padding, unmasked MLM tokens, unlabelled samples."""
RULES = ("auto", "labelled", "real", "hidden")
COUNT_KEYS = ("labelled", "labelled_next", "real", "real_next")
"""The four token counts of a batch (:func:`token_counts`): unshifted and shifted by one (causal LMs)."""
WINDOW_COUNTS = "window_token_counts"
"""Batch key of the :func:`token_counts` summed over the micro-batches of the batch's gradient-accumulation window
(added by :class:`~kd_lightning.data.token_window.TokenWindowLoader`); metadata, never a model input."""


def is_causal_lm(network: nn.Module) -> bool:
    """Whether ``network`` is a causal language model (its logits at position ``t`` predict token ``t + 1``).

    Hugging Face models: a config with ``is_decoder=True`` or a class named ``*ForCausalLM`` / ``*LMHeadModel``
    (``GPT2LMHeadModel``, ``LlamaForCausalLM``, ``BertLMHeadModel``). Other networks can set an attribute
    ``is_causal_lm = True``.

    Example:
        >>> is_causal_lm(nn.Linear(2, 2))
        False
    """
    flag = getattr(network, "is_causal_lm", None)
    if isinstance(flag, bool):
        return flag
    if bool(getattr(getattr(network, "config", None), "is_decoder", False)):
        return True
    return type(network).__name__.endswith(("ForCausalLM", "LMHeadModel"))


def _next(mask: Tensor) -> Tensor:
    """Position ``t`` takes ``mask[t + 1]``; the last position is False."""
    shifted = torch.zeros_like(mask)
    shifted[:, :-1] = mask[:, 1:]
    return shifted


def position_masks(
    labels: Tensor | None, attention_mask: Tensor | None, shape: tuple[int, int], device: torch.device | None = None
) -> dict[str, Tensor]:
    """The masks ``[B, L]`` (bool) of :data:`COUNT_KEYS`; the ``labelled*`` ones only when there are labels."""
    if attention_mask is not None:
        real = attention_mask.bool()
    else:
        real = torch.ones(shape, dtype=torch.bool, device=labels.device if labels is not None else device)
    masks = {"real": real, "real_next": _next(real) & real}
    if labels is not None:
        labelled = labels != IGNORE_INDEX
        masks |= {"labelled": labelled & real, "labelled_next": _next(labelled) & real}
    return masks


def token_counts(labels: Tensor | None, attention_mask: Tensor | None, shape: tuple[int, int]) -> Tensor:
    """Counts ``[4]`` (int64) of the positions of :data:`COUNT_KEYS` in one batch (0 for labels it lacks).

    A loader that looks ahead over a gradient-accumulation window sums them over the window's batches
    (:class:`~kd_lightning.data.token_window.TokenWindowLoader`), which makes the normalisers exact under accumulation.

    Example:
        >>> token_counts(torch.tensor([[-100, 5, 6, -100]]), torch.tensor([[1, 1, 1, 0]]), (1, 4)).tolist()
        [2, 2, 3, 2]
    """
    masks = position_masks(labels, attention_mask, shape)
    zero = torch.zeros((), dtype=torch.long, device=masks["real"].device)
    return torch.stack([masks[key].sum() if key in masks else zero for key in COUNT_KEYS]).long()


@dataclass
class Targets:
    """What the objective compares the networks' outputs with: the one target type of every batch.

    For a batch of samples, the class labels ``[B]`` (``-100`` = unlabelled sample; ``None``: a label-free batch).
    For a batch of token sequences (``sequence``), also what decides the token positions a sequence loss reads and
    its normaliser: the labels ``[B, L]``, the attention mask, whether the student is a causal LM, and the
    normalisers of the effective batch.

    Args:
        labels: ``[B]`` class labels or ``[B, L]`` token labels (``-100`` ignored), or ``None`` for a label-free batch.
        attention_mask: ``[B, L]`` (1 = real token, 0 = padding), or ``None`` (every position is real).
        causal: the student is a causal LM (labels and masks are shifted by one, see the module docstring).
        normalizers: ``{count key: n}``, the number of tokens each loss of this micro-batch divides its sum by; set by
            the Lightning modules to ``N_window / (accumulate_grad_batches * world_size)``, where ``N_window`` is the
            count over every micro-batch of the accumulation window on every process, so that after Lightning's
            division by ``accumulate_grad_batches`` and DDP's gradient averaging the gradient is that of
            ``sum / N_window``. ``None`` or a missing key: this micro-batch's own count.
        shape: ``(B, L)`` when there are neither labels nor an attention mask (every position is then real).
        device: where those all-real masks are made (the outputs' device).
        sequence: whether these are token targets; ``None`` decides from the arguments (labels ``[B, L]``, an
            attention mask or a shape).
        context: what a loss may ask for per batch beyond the labels (:mod:`kd_lightning.core.context`):
            ``index`` (the samples' dataset indices), ``dataset_size``, and for token batches ``input_ids``,
            ``span_groups`` and ``teacher`` (the teacher's own :class:`Targets` of a cross-tokenizer batch).

    Example:
        >>> tokens = Targets(torch.tensor([[5, 6, -100]]), torch.tensor([[1, 1, 0]]), causal=True)
        >>> tokens.mask("labelled").tolist(), tokens.aligned_labels().tolist(), float(tokens.num_tokens("real"))
        ([[True, False, False]], [[6, -100, -100]], 1.0)
        >>> Targets(torch.tensor([3, 1])).sequence
        False
    """

    labels: Tensor | None
    attention_mask: Tensor | None = None
    causal: bool = False
    normalizers: Mapping[str, Tensor | float] | None = None
    shape: tuple[int, ...] | None = None
    device: torch.device | None = None
    sequence: bool | None = None
    context: Mapping[str, Any] = field(default_factory=dict, repr=False)
    _masks: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.sequence is None:
            token_labels = self.labels is not None and self.labels.ndim == 2
            self.sequence = token_labels or self.attention_mask is not None or self.shape is not None
        if not self.sequence:
            return
        source = self.labels if self.labels is not None else self.attention_mask
        if source is not None:
            self.shape = tuple(source.shape[:2])
        elif self.shape is None:
            raise ValueError("token Targets need labels, an attention mask or a shape to know the token positions.")

    @property
    def has_labels(self) -> bool:
        """Whether there are labels (class indices, or token labels)."""
        return self.labels is not None

    def for_outputs(self, outputs: Tensor) -> Targets:
        """These targets as token targets for ``[B, L, ...]`` outputs (label-free ones: every position real), or a
        clear error for outputs or labels that are not sequences."""
        if self.sequence:
            return self
        if self.labels is not None and self.labels.ndim != 2:
            raise ValueError(
                f"a token-level loss compares [B, L, ...] sequence outputs but the batch's labels have shape "
                f"{tuple(self.labels.shape)}; feed token batches (dicts with input_ids, attention_mask, labels "
                f"[B, L]), or use a classification loss (KDLoss, ...) for [B, C] logits."
            )
        if outputs.ndim < 3:
            raise ValueError(
                f"a token-level loss compares [B, L, V] logits or [B, L, H] hidden states but got outputs of shape "
                f"{tuple(outputs.shape)}; for [B, C] class logits use kd_lightning.losses.KDLoss (or another "
                f"response loss)."
            )
        return Targets(
            self.labels,
            None,
            shape=tuple(outputs.shape[:2]),
            device=outputs.device,
            sequence=True,
            context=self.context,
        )

    def key(self, rule: str) -> str:
        """The count key of a position rule for this batch (``"auto"`` resolved, the causal shift applied)."""
        if rule not in RULES:
            raise ValueError(f"expected a token position rule in {list(RULES)} but got {rule!r}.")
        if rule == "auto":
            rule = "labelled" if self.labels is not None else "real"
        if rule == "labelled" and self.labels is None:
            raise ValueError(
                "a loss reads the labelled token positions but the batch has no labels; give the datamodule labels "
                "(TextDataModule task: mlm or clm), or make the loss read every real token (positions: real)."
            )
        if rule == "hidden":
            return "real"
        return f"{rule}_next" if self.causal else rule

    def mask(self, rule: str) -> Tensor:
        """The positions ``[B, L]`` (bool) a loss with this rule reads, aligned with the logits."""
        key = self.key(rule)
        if not self._masks:
            self._masks.update(position_masks(self.labels, self.attention_mask, self.shape, self.device))
        return self._masks[key]

    def num_tokens(self, rule: str) -> Tensor | float:
        """The normaliser of a loss with this rule: the effective batch's share (see ``normalizers``), else the
        micro-batch's own count of positions."""
        key = self.key(rule)
        if self.normalizers is not None and key in self.normalizers:
            return self.normalizers[key]
        return self.mask(rule).sum()

    def aligned_labels(self) -> Tensor:
        """Labels aligned with the logits: ``labels[t + 1]`` at position ``t`` for a causal LM (last = ``-100``)."""
        if self.labels is None:
            raise ValueError("the batch has no labels.")
        if not self.causal:
            return self.labels
        aligned = torch.full_like(self.labels, IGNORE_INDEX)
        aligned[:, :-1] = self.labels[:, 1:]
        return aligned


TokenTargets = Targets
"""The earlier name of :class:`Targets` (token targets were its only form)."""


def as_targets(target: Targets | Tensor | None) -> Targets:
    """``target`` as :class:`Targets`: labels ``[B]`` or ``[B, L]`` (or ``None``) are wrapped."""
    return target if isinstance(target, Targets) else Targets(target)


def window_normalizers(batch: Any, trainer: Any, warned: list[bool]) -> dict[str, Tensor] | None:
    """``{count key: N / (k * W)}`` for a training sequence batch (see the module docstring); ``None`` when every
    micro-batch is the whole effective batch and has no window counts (its own counts are then exact).

    ``batch`` is a :class:`~kd_lightning.core.batch.Batch` of sequences; ``trainer`` the fit's Trainer (its
    ``accumulate_grad_batches``, ``world_size`` and strategy's ``reduce``).
    """
    accumulate, world = int(trainer.accumulate_grad_batches), int(trainer.world_size)
    counts, window = batch.window_counts, accumulate
    if counts is None:
        if accumulate == 1 and world == 1:
            return None
        if accumulate > 1 and not warned[0]:
            warned[0] = True
            rank_zero_warn(
                f"token losses are normalised by each micro-batch's own token count: with accumulate_grad_batches="
                f"{accumulate} micro-batches of different padding are weighted unequally. Use kd_lightning's "
                f"TokenWindowLoader (TextDataModule does) for the exact mean per token of the effective batch."
            )
        counts, window = token_counts(batch.labels, batch.attention_mask, batch.sequence_shape), 1
    counts = counts.to(dtype=torch.float64, device=batch.device)
    if world > 1:
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
    share = counts / (window * world)
    return {key: share[index].float() for index, key in enumerate(COUNT_KEYS)}
