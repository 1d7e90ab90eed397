"""The first training batch, checked before the first optimizer step: its structure and values, its labels, and
whether its inputs fit the networks (token ids within every embedding).

Expected: a tuple or list ``(x,)``, ``(x, y)`` or ``(x, y, index)`` of tensors with the same first dimension, ``x``
floating point and finite, ``y`` integer class indices (``-100`` = unlabelled); or a dict of tensors (``input_ids``
``[B, L]`` integer, ``attention_mask`` ``[B, L]``, optional ``labels``, ``pixel_values``, ...); or a dict of those
(Lightning's ``CombinedLoader``). See :mod:`kd_lightning.core.batch`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import METADATA, Batch


def first_training_batch(loader: Any) -> dict[str | None, Batch]:
    """The first batch of the training loader (each loader of a dict of loaders), checked and parsed by part."""
    loaders = loader if isinstance(loader, Mapping) else {None: loader}
    parts = {}
    for name, part in loaders.items():
        raw = _first(part, name)
        check_batch(raw, part=name)
        parts[name] = Batch.parse(raw)
    return parts


def _first(loader: Any, name: str | None) -> Any:
    try:
        return next(iter(loader))
    except StopIteration:
        which = f"the {name!r} training dataloader" if name is not None else "the training dataloader"
        raise ValueError(
            f"{which} is empty: there is nothing to train on; check the dataset's size, train_fraction/split "
            f"settings, and that batch_size is not larger than the dataset with drop_last."
        ) from None


def check_batch(batch: Any, part: str | None = None) -> None:
    """Check a training batch's structure and values before the first step (see :mod:`kd_lightning.core.batch`).

    Expected: a tuple or list ``(x,)``, ``(x, y)`` or ``(x, y, index)`` of tensors with the same first dimension,
    ``x`` floating point and finite, ``y`` integer class indices (``-100`` = unlabelled); or a dict of tensors
    (``input_ids`` ``[B, L]`` integer, ``attention_mask`` ``[B, L]``, optional ``labels``, ``pixel_values``, ...).
    ``part`` names the loader of a combined batch, for the message.
    """
    where = f"the {part!r} loader's " if part is not None else ""
    if isinstance(batch, Mapping):
        _check_dict_batch(batch, where)
        return
    if isinstance(batch, Tensor) or not isinstance(batch, (tuple, list)) or not batch:
        raise ValueError(
            f"expected {where}training batches (x,), (x, y) or (x, y, index) — or dicts of tensors such as "
            f"{{input_ids, attention_mask, labels}} — but got {_describe(batch)}; make the dataset's __getitem__ "
            f"return (input, label) and keep the default collate function."
        )
    inputs = batch[0]
    if not isinstance(inputs, Tensor):
        raise ValueError(f"expected the batch's first item (the input) to be a Tensor but got {_describe(inputs)}.")
    if not (inputs.is_floating_point() or inputs.is_complex()):
        raise ValueError(
            f"expected floating-point inputs but got a {inputs.dtype} tensor of shape {tuple(inputs.shape)}; "
            f"convert images to float (e.g. torchvision's ToTensor / `x.float() / 255`) in the dataset (token ids go "
            f"in dict batches: {{input_ids, attention_mask, labels}})."
        )
    _check_finite(inputs, f"{where}inputs (the batch's first item)")
    if len(batch) < 2:
        return
    target = batch[1]
    if not isinstance(target, Tensor):
        raise ValueError(f"expected the batch's second item (the labels) to be a Tensor but got {_describe(target)}.")
    if target.is_floating_point() or target.ndim != 1 or len(target) != len(inputs):
        raise ValueError(
            f"expected integer class labels of shape ({len(inputs)},) but got a {target.dtype} tensor of shape "
            f"{tuple(target.shape)}; the dataset must return class indices (not one-hot or soft labels), one per input "
            f"(-100 for an unlabelled sample; a label-free transfer set returns (x,) alone)."
        )


def _check_dict_batch(batch: Mapping[str, Any], where: str) -> None:
    """A dict batch: tensors only, ``input_ids`` integer ``[B, L]``, masks and labels of matching shapes."""
    not_tensors = sorted(key for key, value in batch.items() if not isinstance(value, Tensor))
    if not_tensors:
        raise ValueError(
            f"expected {where}dict batches of tensors but {not_tensors} are not tensors; collate every field into a "
            f"tensor (e.g. a tokenizer's padding collator, or kd_lightning.data.text.TextDataModule)."
        )
    inputs = {key: value for key, value in batch.items() if key not in METADATA}
    if not inputs:
        raise ValueError(
            f"expected {where}dict batches with model inputs (input_ids, attention_mask, pixel_values, ...) but got "
            f"only {sorted(batch)}."
        )
    ids = batch.get("input_ids")
    if ids is not None and (ids.is_floating_point() or ids.ndim != 2):
        raise ValueError(
            f"expected input_ids to be integer token ids of shape [B, L] but got a {ids.dtype} tensor of shape "
            f"{tuple(ids.shape)}."
        )
    shape = tuple(ids.shape) if ids is not None else None
    for key in ("attention_mask", "labels"):
        value = batch.get(key)
        if value is not None and shape is not None and tuple(value.shape) != shape:
            raise ValueError(
                f"expected {key} of the shape of input_ids {shape} but got {tuple(value.shape)}; pad both with the "
                f"same collator."
            )
    for key, value in inputs.items():
        if value.is_floating_point():
            _check_finite(value, f"{where}input {key!r}")


def check_label_range(target: Tensor, num_classes: int) -> None:
    """Raise unless every label of the first training batch is a class index in ``[0, num_classes)`` or ``-100``."""
    target = target[target != -100]
    if target.numel() == 0:
        return
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"expected labels in [0, {num_classes}) (num_classes={num_classes}) but the first training batch has label "
            f"{bad}; set num_classes to the number of classes of the data (the datamodule's num_classes is linked "
            f"into the model by the CLI), or fix the dataset's labels."
        )


def _check_finite(tensor: Tensor, what: str) -> None:
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        count, first = int((~finite).sum()), tuple(int(i) for i in (~finite).nonzero()[0])
        raise ValueError(
            f"expected finite {what} but the first training batch holds {count} NaN/inf value(s), the first at index "
            f"{first}; fix the dataset or its transform (e.g. a division by a zero std, a corrupt file)."
        )


def _describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} Tensor of shape {tuple(value.shape)}"
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(map(str, value))}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"a {type(value).__name__}"


def check_inputs_fit(batch: Batch, networks: Mapping[str, nn.Module], num_classes: int) -> None:
    """Raise when a batch's inputs cannot go into a network: token ids beyond an input embedding (a model built for
    another tokenizer), naming the network, both sizes and the fix, instead of an ``IndexError`` deep inside it."""
    check_token_ids(batch, networks, num_classes)


def check_token_ids(batch: Batch, networks: Mapping[str, nn.Module], num_classes: int) -> None:
    """Raise when a batch's ``input_ids`` do not fit a network's input embedding (a model built for another
    tokenizer), naming the network, both sizes and the fix, instead of an ``IndexError`` deep inside the model."""
    ids = batch.inputs.get("input_ids") if isinstance(batch.inputs, Mapping) else None
    if not isinstance(ids, Tensor) or ids.numel() == 0:
        return
    largest = int(ids.max())
    for name, network in networks.items():
        embeddings = getattr(network, "get_input_embeddings", None)
        table = embeddings() if callable(embeddings) else None
        size = getattr(table, "num_embeddings", None)
        if size is not None and largest >= size:
            raise ValueError(
                f"the batches hold token id {largest} but the {name} embeds only {size} tokens (vocab_size {size}); "
                f"the data's tokenizer has num_classes={num_classes} tokens: build the {name} for that tokenizer "
                f"(model_from_config vocab_size: {num_classes}, or student_from_teacher), or use the tokenizer the "
                f"model was trained with."
            )


__all__ = ["check_batch", "check_inputs_fit", "check_label_range", "first_training_batch"]
