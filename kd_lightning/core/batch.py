"""What a training or evaluation batch holds, whatever its form, and how a network is called on it.

Three forms are understood (see the design's batch contract):

* tuples or lists ``(x,)``, ``(x, y)``, ``(x, y, index)`` — images or any tensor input; ``(x,)`` is a label-free
  transfer set, and a label of ``-100`` marks an unlabelled sample in a mixed set;
* dicts of tensors, as Hugging Face collators make them: ``input_ids``, ``attention_mask``, ``token_type_ids``,
  ``pixel_values``, ... are the model's keyword arguments; ``labels`` (optional), ``index`` and
  :data:`~kd_lightning.core.tokens.WINDOW_COUNTS` are metadata and never passed to the model;
* a dict of such batches, as Lightning's ``CombinedLoader`` yields when ``train_dataloader`` returns a dict of loaders
  (``{"labelled": (x, y), "unlabelled": (x,)}``): each part is its own batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from kd_lightning.core.tokens import WINDOW_COUNTS

Batch = Sequence[Tensor] | Mapping[str, Tensor]
Inputs = Tensor | Mapping[str, Tensor]
LABELS = "labels"
INDEX = "index"
ATTENTION_MASK = "attention_mask"
METADATA = frozenset({LABELS, INDEX, WINDOW_COUNTS})
"""Keys of a dict batch that are not model inputs."""


def is_combined(batch: Any) -> bool:
    """Whether ``batch`` is a dict of batches (Lightning's ``CombinedLoader`` over a dict of loaders).

    Example:
        >>> import torch
        >>> is_combined({"labelled": (torch.zeros(2, 3), torch.zeros(2)), "unlabelled": (torch.zeros(2, 3),)})
        True
        >>> is_combined({"input_ids": torch.zeros(2, 3)})
        False
    """
    return (
        isinstance(batch, Mapping)
        and bool(batch)
        and all(isinstance(part, (Mapping, tuple, list)) for part in batch.values())
    )


def parts(batch: Any) -> list[Batch]:
    """The batches a training batch is made of: the parts of a combined batch, else the batch itself."""
    return list(batch.values()) if is_combined(batch) else [batch]


def inputs_of(batch: Batch) -> Inputs:
    """The model input: ``x`` of a tuple batch, or the model's keyword arguments of a dict batch."""
    if isinstance(batch, Mapping):
        return {key: value for key, value in batch.items() if key not in METADATA}
    return batch[0]


def labels_of(batch: Batch) -> Tensor | None:
    """The labels: ``y`` of ``(x, y[, index])``, ``batch["labels"]``; ``None`` for a label-free batch."""
    if isinstance(batch, Mapping):
        return batch.get(LABELS)
    return batch[1] if len(batch) > 1 else None


def index_of(batch: Batch) -> Tensor | None:
    """The samples' indices in their dataset: ``index`` of ``(x, y, index)`` or ``batch["index"]``, else ``None``."""
    if isinstance(batch, Mapping):
        return batch.get(INDEX)
    return batch[2] if len(batch) > 2 else None


def attention_mask_of(batch: Batch) -> Tensor | None:
    """``batch["attention_mask"]`` ``[B, L]`` of a dict batch, else ``None``."""
    return batch.get(ATTENTION_MASK) if isinstance(batch, Mapping) else None


def size_of(batch: Batch) -> int:
    """The number of samples in the batch (the first dimension of its first input tensor)."""
    inputs = inputs_of(batch)
    if isinstance(inputs, Mapping):
        inputs = next((value for value in inputs.values() if isinstance(value, Tensor)), None)
    return len(inputs) if isinstance(inputs, Tensor) else 0


def call(network: Any, inputs: Inputs) -> Any:
    """``network(x)`` for a tensor input, ``network(**inputs)`` for keyword inputs."""
    return network(**inputs) if isinstance(inputs, Mapping) else network(inputs)


def map_inputs(batch: Batch, function: Any) -> Batch:
    """The batch with ``function`` applied to every model-input tensor (labels, index and metadata unchanged)."""
    if isinstance(batch, Mapping):
        return {key: value if key in METADATA else function(value) for key, value in batch.items()}
    items = [function(batch[0]), *batch[1:]]
    return tuple(items) if isinstance(batch, tuple) else items


def head(batch: Batch, count: int) -> Batch:
    """The first ``count`` samples of a batch (every tensor sliced along dim 0; window counts kept)."""
    if isinstance(batch, Mapping):
        return {
            key: value[:count] if isinstance(value, Tensor) and key != WINDOW_COUNTS and value.ndim else value
            for key, value in batch.items()
        }
    return [item[:count] if isinstance(item, Tensor) else item for item in batch]
