"""``Batch``: what a training or evaluation batch holds, parsed once at the top of every step.

A loader may yield any of these forms; :meth:`Batch.parse` reads each into one :class:`Batch` and nothing below the
modules looks at the raw form again:

* tuples or lists ``(x,)``, ``(x, y)``, ``(x, y, index)`` — images or any tensor input; ``(x,)`` is a label-free
  transfer set, and a label of ``-100`` marks an unlabelled sample in a mixed set;
* dicts of tensors, as Hugging Face collators make them: ``input_ids``, ``attention_mask``, ``token_type_ids``,
  ``pixel_values``, ... are the model's keyword arguments; ``labels`` (optional), ``index`` and
  :data:`~kd_lightning.core.tokens.WINDOW_COUNTS` are metadata and never passed to the model;
* a dict of token batches for two tokenizers (cross-tokenizer distillation, ``TextDataModule(teacher_tokenizer=...)``):
  the keys prefixed ``teacher_`` (``teacher_input_ids``, ``teacher_attention_mask``, ``teacher_labels``,
  ``teacher_span_groups``) are the same texts as the teacher's tokenizer cuts them: :attr:`Batch.teacher_view`, what
  a frozen teacher runs on (:meth:`Batch.for_teacher`); ``span_groups`` ``[B, L]`` numbers the aligned character spans
  of each side (``-1``: in no span) and is metadata, as ``labels``;
* a dict of such batches, as Lightning's ``CombinedLoader`` yields when ``train_dataloader`` returns a dict of loaders
  (``{"labelled": (x, y), "unlabelled": (x,)}``): :func:`parse_parts` gives each part as its own ``Batch``.

Per-sample context a loss needs (the sample indices for CRD's memory bank, PS-KD's stored predictions, a teacher
cache's rows) is ``Batch.index``; the token counts of the gradient-accumulation window are ``Batch.window_counts``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from kd_lightning.core.tokens import WINDOW_COUNTS, Targets

Inputs = Tensor | Mapping[str, Tensor]
"""A model input: one tensor, or the keyword arguments of a Hugging Face model."""
LABELS, INDEX, ATTENTION_MASK, SPAN_GROUPS = "labels", "index", "attention_mask", "span_groups"
TEACHER_PREFIX = "teacher_"
"""The prefix of the keys of a dict batch that hold the teacher's own tokenization (:attr:`Batch.teacher_view`)."""
METADATA = frozenset({LABELS, INDEX, WINDOW_COUNTS, SPAN_GROUPS})
"""Keys of a dict batch that are not model inputs."""
SEQUENCE_KEYS = ("input_ids", "attention_mask")


def is_combined(raw: Any) -> bool:
    """Whether ``raw`` is a dict of batches (Lightning's ``CombinedLoader`` over a dict of loaders).

    Example:
        >>> import torch
        >>> is_combined({"labelled": (torch.zeros(2, 3), torch.zeros(2)), "unlabelled": (torch.zeros(2, 3),)})
        True
        >>> is_combined({"input_ids": torch.zeros(2, 3)})
        False
    """
    return (
        isinstance(raw, Mapping)
        and bool(raw)
        and all(isinstance(part, (Mapping, tuple, list, Batch)) for part in raw.values())
    )


@dataclass(frozen=True)
class Batch:
    """One batch, whatever form the loader yielded.

    Attributes:
        inputs: the model input: ``x`` ``[B, ...]``, or a dict of keyword tensors (``input_ids`` ``[B, L]``, ...).
        labels: class indices ``[B]`` or token labels ``[B, L]`` (``-100`` = no label); ``None`` for a label-free batch.
        index: each sample's index in its dataset ``[B]``, when the loader gives it.
        window_counts: token counts of the batch's gradient-accumulation window (a ``TokenWindowLoader``), or
            ``None``.
        part: the name of this batch in a combined training batch (:func:`parse_parts`), ``None`` for a whole batch.
        span_groups: ``[B, L]`` the aligned character span of each token (cross-tokenizer batches; ``-1``: none).
        teacher_view: the same samples as the teacher's tokenizer cuts them (cross-tokenizer batches), else ``None``.

    Example:
        >>> import torch
        >>> batch = Batch.parse((torch.zeros(4, 1, 8, 8), torch.arange(4)))
        >>> batch.size, batch.labels.tolist(), batch.index is None
        (4, [0, 1, 2, 3], True)
    """

    inputs: Inputs
    labels: Tensor | None = None
    index: Tensor | None = None
    window_counts: Tensor | None = None
    part: str | None = None
    span_groups: Tensor | None = None
    teacher_view: Batch | None = None

    @classmethod
    def parse(cls, raw: Any) -> Batch:
        """Read a tuple/list or dict batch (a ``Batch`` is returned as it is); see the module docstring."""
        if isinstance(raw, Batch):
            return raw
        if isinstance(raw, Mapping):
            own = {key: value for key, value in raw.items() if not key.startswith(TEACHER_PREFIX)}
            theirs = {key[len(TEACHER_PREFIX) :]: value for key, value in raw.items() if key.startswith(TEACHER_PREFIX)}
            teacher_view = None
            if theirs:
                teacher_view = cls.parse({**theirs, INDEX: raw.get(INDEX)} if INDEX in raw else theirs)
            inputs = {key: value for key, value in own.items() if key not in METADATA}
            return cls(
                inputs,
                raw.get(LABELS),
                raw.get(INDEX),
                raw.get(WINDOW_COUNTS),
                span_groups=raw.get(SPAN_GROUPS),
                teacher_view=teacher_view,
            )
        if isinstance(raw, Tensor):
            return cls(raw)
        items = list(raw)
        return cls(items[0], items[1] if len(items) > 1 else None, items[2] if len(items) > 2 else None)

    # ----------------------------------------------------------------- what it holds
    @property
    def size(self) -> int:
        """The number of samples (the first dimension of the first input tensor)."""
        inputs = self.inputs
        if isinstance(inputs, Mapping):
            inputs = next((value for value in inputs.values() if isinstance(value, Tensor)), None)
        return len(inputs) if isinstance(inputs, Tensor) else 0

    @property
    def is_sequence(self) -> bool:
        """Whether this is a batch of token sequences (dict inputs with ``input_ids`` or ``attention_mask``)."""
        return isinstance(self.inputs, Mapping) and any(key in self.inputs for key in SEQUENCE_KEYS)

    @property
    def attention_mask(self) -> Tensor | None:
        """``attention_mask`` ``[B, L]`` of a dict batch, else ``None``."""
        return self.inputs.get(ATTENTION_MASK) if isinstance(self.inputs, Mapping) else None

    @property
    def sequence_shape(self) -> tuple[int, int]:
        """``(B, L)`` of a sequence batch."""
        for value in (*(self.inputs.get(key) for key in SEQUENCE_KEYS), self.labels):
            if isinstance(value, Tensor):
                return tuple(value.shape[:2])
        raise ValueError("expected a sequence batch with input_ids, attention_mask or labels [B, L].")

    @property
    def device(self) -> Any:
        """The device of the inputs."""
        inputs = self.inputs
        if isinstance(inputs, Mapping):
            inputs = next(value for value in inputs.values() if isinstance(value, Tensor))
        return inputs.device

    def for_teacher(self) -> Batch:
        """The batch a teacher network runs on: its own tokenization (:attr:`teacher_view`) when there is one."""
        return self.teacher_view if self.teacher_view is not None else self

    def targets(
        self,
        causal: bool = False,
        normalizers: Mapping[str, Tensor] | None = None,
        teacher_causal: bool | None = None,
        dataset: Mapping[str, Any] | None = None,
    ) -> Targets:
        """What the objective compares with (see :class:`~kd_lightning.core.tokens.Targets`): the labels, and for a
        sequence batch the attention mask, the causal shift of the student and the token normalisers.

        Its ``context`` carries what a loss may ask for per batch (:mod:`kd_lightning.core.context`): the sample
        indices, what ``dataset`` says of the training dataset (``dataset_size``, ``dataset_labels``), and for token
        batches the input ids, the span groups and the teacher's own targets (``teacher_causal``: the teacher is a
        causal LM; default ``causal``).
        """
        context: dict[str, Any] = {"index": self.index, **(dataset or {})}
        if not self.is_sequence:
            return Targets(self.labels, context=context)
        context |= {"input_ids": self.inputs.get("input_ids"), "span_groups": self.span_groups}
        if self.teacher_view is not None:
            context["teacher"] = self.teacher_view.targets(causal if teacher_causal is None else teacher_causal)
        return Targets(
            self.labels,
            self.attention_mask,
            causal=causal,
            normalizers=normalizers,
            shape=self.sequence_shape,
            device=self.device,
            sequence=True,
            context=context,
        )

    # ----------------------------------------------------------------- derived batches
    def call(self, network: Callable[..., Any]) -> Any:
        """``network(x)`` for a tensor input, ``network(**inputs)`` for keyword inputs."""
        return call(network, self.inputs)

    def map_inputs(self, function: Callable[[Tensor], Tensor]) -> Batch:
        """The batch with ``function`` applied to every model-input tensor (labels, index and counts unchanged), the
        teacher's view included."""
        view = None if self.teacher_view is None else self.teacher_view.map_inputs(function)
        if isinstance(self.inputs, Mapping):
            return replace(self, inputs={key: function(value) for key, value in self.inputs.items()}, teacher_view=view)
        return replace(self, inputs=function(self.inputs), teacher_view=view)

    def head(self, count: int) -> Batch:
        """The first ``count`` samples (window counts kept: they describe the whole window)."""

        def first(value: Any) -> Any:
            return value[:count] if isinstance(value, Tensor) and value.ndim else value

        if isinstance(self.inputs, Mapping):
            inputs = {key: first(value) for key, value in self.inputs.items()}
        else:
            inputs = first(self.inputs)
        view = None if self.teacher_view is None else self.teacher_view.head(count)
        return replace(
            self,
            inputs=inputs,
            labels=first(self.labels),
            index=first(self.index),
            span_groups=first(self.span_groups),
            teacher_view=view,
        )

    def as_tuple(self) -> tuple[Any, ...]:
        """``(inputs, labels, index)`` without the trailing ``None`` items (the loader's tuple form)."""
        items = [self.inputs, self.labels, self.index]
        while items and items[-1] is None:
            items.pop()
        return tuple(items)

    def __getitem__(self, position: int) -> Any:
        """``batch[0]`` inputs, ``batch[1]`` labels, ``batch[2]`` index: research code written for tuple batches."""
        return (self.inputs, self.labels, self.index)[position]

    def __len__(self) -> int:
        """The length of the tuple form (:meth:`as_tuple`): 1 for ``(x,)``, 2 for ``(x, y)``, 3 with the index."""
        return len(self.as_tuple())


def parse_parts(raw: Any) -> dict[str | None, Batch]:
    """The batches a training batch is made of: ``{name: Batch}`` of a combined batch, else ``{None: Batch}``."""
    if is_combined(raw):
        return {name: replace(Batch.parse(part), part=name) for name, part in raw.items()}
    return {None: Batch.parse(raw)}


def call(network: Callable[..., Any], inputs: Inputs) -> Any:
    """``network(x)`` for a tensor input, ``network(**inputs)`` for keyword inputs."""
    return network(**inputs) if isinstance(inputs, Mapping) else network(inputs)
