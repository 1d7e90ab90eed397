"""The first training batch, checked before the first optimizer step: its structure and values, its labels, and
whether its inputs fit the networks (token ids within every embedding, sequences within every network's position
embeddings, images with the channels of every network's first layer, labels of the task every trained language model
learns).

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

from kd_lightning.core.batch import LABELS, METADATA, Batch
from kd_lightning.modules._agreement import check_data_task, position_limit, positions_error

LABEL_LIKE_KEYS = ("label", "label_ids", "target", "targets", "y", "class", "class_labels")
"""Keys of a dict batch that hold labels under another name than ``labels`` (they would go to the model as inputs)."""


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
    misnamed = [key for key in LABEL_LIKE_KEYS if key in batch]
    if misnamed and LABELS not in batch:
        raise ValueError(
            f"expected {where}dict batches to hold their labels under the key 'labels' but got {sorted(batch)}: the "
            f"key {misnamed[0]!r} is not read as labels (it would be passed to the model as an input); rename the key "
            f"to 'labels' in the dataset or collate function (Hugging Face datasets: "
            f"dataset.rename_column({misnamed[0]!r}, 'labels'))."
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
    """Raise when a batch's inputs cannot go into a network, or its labels train another task than a network's:
    token ids beyond an input embedding (a model built for another tokenizer), sequences longer than the position
    embeddings, images with other channels (or pixels) than the first layer takes, masked-LM labels for a causal LM
    (or the reverse). Each message names the network, both sizes or kinds and the fix, instead of an error deep
    inside the model, or a run that trains the wrong thing.

    A cross-tokenizer batch (:attr:`~kd_lightning.core.batch.Batch.teacher_view`) is checked view by view: the
    teacher's networks against the teacher's tokens."""
    if batch.teacher_view is not None:
        theirs = {name: network for name, network in networks.items() if name.startswith("teacher")}
        ours = {name: network for name, network in networks.items() if name not in theirs}
        check_token_ids(batch.teacher_view, theirs, None)
        check_positions(batch.teacher_view, theirs)
        networks = ours
    check_token_ids(batch, networks, num_classes)
    check_positions(batch, networks)
    check_channels(batch, networks)
    check_data_task(batch, networks)


def dataset_context(loader: Any) -> dict[str, Any]:
    """What a loss with per-sample state may ask of a training loader's dataset (:mod:`kd_lightning.core.context`):
    ``dataset_size`` (``None`` without a sized dataset: a ``CombinedLoader``, an iterable) and ``dataset_labels``
    ``[N]`` (its ``labels`` or ``targets`` attribute when it has one of that length, else ``None``)."""
    dataset = getattr(loader, "dataset", None)
    try:
        size = len(dataset) if dataset is not None else None
    except TypeError:
        size = None
    labels = None
    for name in ("labels", "targets"):
        found = getattr(dataset, name, None)
        if size is not None and found is not None and not callable(found):
            found = torch.as_tensor(found)
            if found.ndim == 1 and len(found) == size and not found.is_floating_point():
                labels = found.long()
                break
    return {"dataset_size": size, "dataset_labels": labels}


def check_token_ids(batch: Batch, networks: Mapping[str, nn.Module], num_classes: int | None) -> None:
    """Raise when a batch's ``input_ids`` do not fit a network's input embedding (a model built for another
    tokenizer), naming the network, both sizes and the fix, instead of an ``IndexError`` deep inside the model.
    ``num_classes`` ``None``: the ids are the teacher's own tokens of a cross-tokenizer batch."""
    ids = batch.inputs.get("input_ids") if isinstance(batch.inputs, Mapping) else None
    if not isinstance(ids, Tensor) or ids.numel() == 0:
        return
    largest = int(ids.max())
    for name, network in networks.items():
        embeddings = getattr(network, "get_input_embeddings", None)
        table = embeddings() if callable(embeddings) else None
        size = getattr(table, "num_embeddings", None)
        if size is not None and largest >= size and num_classes is None:
            raise ValueError(
                f"the teacher's tokens (data.init_args.teacher_tokenizer) hold id {largest} but the {name} embeds only "
                f"{size} tokens (vocab_size {size}); set teacher_tokenizer to the tokenizer the {name} was trained "
                f"with, or build the {name} for that tokenizer (model_from_config vocab_size: its length)."
            )
        if size is not None and largest >= size:
            raise ValueError(
                f"the batches hold token id {largest} but the {name} embeds only {size} tokens (vocab_size {size}); "
                f"the data's tokenizer has num_classes={num_classes} tokens: build the {name} for that tokenizer "
                f"(model_from_config vocab_size: {num_classes}, or student_from_teacher), or use the tokenizer the "
                f"model was trained with."
            )


def check_positions(batch: Batch, networks: Mapping[str, nn.Module]) -> None:
    """Raise when a batch's sequences are longer than a network's learned position embeddings."""
    if not batch.is_sequence:
        return
    length = batch.sequence_shape[1]
    for name, network in networks.items():
        limit = position_limit(network)
        if limit is not None and length > limit[0]:
            raise positions_error(
                length, f"the first training batch holds sequences of {length} tokens", name, network, limit
            )


def _image_input(batch: Batch) -> Tensor | None:
    """The image tensor ``[B, C, H, W]`` of a batch (its input, or a dict batch's ``pixel_values``), if it has one."""
    inputs = batch.inputs.get("pixel_values") if isinstance(batch.inputs, Mapping) else batch.inputs
    return inputs if isinstance(inputs, Tensor) and inputs.ndim == 4 else None


def _first_layer(network: nn.Module) -> tuple[str, nn.Module] | None:
    """The network's first 2-d convolution, or, for a network without convolutions or embeddings, its first layer
    with parameters when that is an ``nn.Linear`` (registration order: the stem comes first in every zoo)."""
    modules = list(network.named_modules())
    convolution = next(
        ((n, m) for n, m in modules if isinstance(m, nn.modules.conv._ConvNd) and len(m.kernel_size) == 2), None
    )
    if convolution is not None:
        return convolution
    if any(isinstance(m, (nn.modules.conv._ConvNd, nn.Embedding)) for _, m in modules):
        return None
    leaf = next(((n, m) for n, m in modules if not list(m.children()) and any(True for _ in m.parameters())), None)
    return leaf if leaf is not None and isinstance(leaf[1], nn.Linear) else None


def check_channels(batch: Batch, networks: Mapping[str, nn.Module]) -> None:
    """Raise when a batch's images do not fit a network's first layer: other channels than its first convolution
    takes (a 3-channel zoo network on 1-channel digits), or, for a network of linear layers, another number of
    values than its first layer takes."""
    images = _image_input(batch)
    if images is None:
        return
    channels, shape = images.shape[1], tuple(images.shape[1:])
    shown = f"[B, {', '.join(map(str, shape))}]"
    for name, network in networks.items():
        found = _first_layer(network)
        if found is None:
            continue
        layer_name, layer = found
        model = f"the {name} ({type(network).__name__})"
        if isinstance(layer, nn.Linear):
            values = int(torch.tensor(shape).prod())
            if layer.in_features not in (values, shape[-1]):
                rebuild = (
                    f"DigitsMLP in_features: {values}"
                    if type(network).__name__ == "DigitsMLP"
                    else (f"a first layer of {values} inputs")
                )
                raise ValueError(
                    f"{model} takes {layer.in_features} input values (its first layer {layer_name} is Linear("
                    f"{layer.in_features}, {layer.out_features})) but the batches hold images {shown}, {values:,} "
                    f"values each; build it for this data ({rebuild}), or give it data of the shape it was built for."
                )
            continue
        takes = layer.in_channels
        if takes == channels or any(getattr(m, "in_channels", None) == channels for m in network.modules()):
            continue
        timm = type(network).__module__.startswith("timm.")
        rebuild = f"timm_model in_chans: {channels}" if timm else "replace its first convolution"
        convert = (
            "repeat the gray channel: torchvision.transforms.Grayscale(num_output_channels=3)"
            if channels == 1 and takes == 3
            else f"make the dataset return {takes}-channel images"
        )
        raise ValueError(
            f"{model} takes {takes}-channel images (its first convolution {layer_name} is Conv2d({takes}, "
            f"{layer.out_channels}, ...)) but the batches hold {channels}-channel images {shown}; build the {name} "
            f"for {channels} channel(s) ({rebuild}), or give it {takes}-channel data ({convert})."
        )


__all__ = ["check_batch", "check_inputs_fit", "check_label_range", "first_training_batch"]


def check_sample_indices(batch: Batch, terms: Any) -> None:
    """Raise when a loss keeps per-sample state (``"index"`` in its ``batch_context``: CRD's memory banks) but the
    training batches carry no sample indices, before the first step rather than inside it."""
    if batch.index is not None:
        return
    for term in terms:
        if "index" in getattr(term, "context_names", ()):
            raise ValueError(
                f"the distillation term {term.name!r} ({type(term.loss).__name__}) keeps a row per training sample and "
                f"reads each sample's index, but the training batches carry none; set return_index: true in the "
                f"datamodule's init_args (data.init_args.return_index), or give (x, y, index) batches."
            )
