"""Checks that stop a run before its first optimizer step, each with a message that names the problem and the fix.

Constructor arguments (networks, terms, factories), the structure and values of the first training batch, the
learning-rate schedule (stepped on a throw-away optimizer), and the Trainer budget (a run that can make no optimizer
step is refused). The modules call these from ``__init__`` and from the dry run in ``setup()``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from kd_lightning.core.batch import METADATA
from kd_lightning.core.objective import DistillTerm


def check_network(value: Any, argument: str) -> nn.Module:
    """Return ``value`` if it is an ``nn.Module`` instance; otherwise say what was given and what to pass."""
    if isinstance(value, nn.Module):
        return value
    if value is None:
        got = "None"
    elif inspect.isclass(value):
        got = f"the class {value.__name__} itself, not an instance; pass {value.__name__}(...)"
    elif callable(value):
        got = f"the function {getattr(value, '__name__', value)!r}; pass the network it builds (call it)"
    else:
        got = f"a {type(value).__name__}"
    raise TypeError(
        f"expected {argument} to be a network (an nn.Module instance) but got {got}. In YAML: "
        f"{argument}: {{class_path: kd_lightning.models.DigitsMLP, init_args: {{...}}}}."
    )


def check_terms(terms: Any, argument: str = "terms") -> list[DistillTerm] | None:
    """Return ``terms`` as a list of :class:`DistillTerm` (``None`` stays ``None``), or raise naming the bad item."""
    if terms is None:
        return None
    if isinstance(terms, DistillTerm):
        raise TypeError(
            f"expected {argument} to be a list of DistillTerm but got a single DistillTerm; wrap it in a list: "
            f"{argument}=[DistillTerm(...)] (in YAML, a list item `- class_path: kd_lightning.DistillTerm`)."
        )
    if isinstance(terms, (str, bytes, Mapping)) or not isinstance(terms, Sequence):
        raise TypeError(f"expected {argument} to be a list of DistillTerm but got a {type(terms).__name__}.")
    for index, term in enumerate(terms):
        if not isinstance(term, DistillTerm):
            hint = (
                f"wrap the loss: DistillTerm({type(term).__name__}(...), weight=...)"
                if isinstance(term, nn.Module)
                else "each item is DistillTerm(loss=..., weight=..., student=..., teacher=...)"
            )
            raise TypeError(f"expected {argument}[{index}] to be a DistillTerm but got {type(term).__name__}; {hint}.")
    return list(terms)


def check_factory(value: Any, argument: str, example: str, optional: bool = False) -> None:
    """Raise unless ``value`` is a callable factory (an optimizer or scheduler class or partial), or ``None``."""
    if value is None and optional:
        return
    if isinstance(value, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
        raise TypeError(
            f"expected {argument} to be a factory called with the parameters (or the optimizer) but got an already "
            f"built {type(value).__name__}; pass the class or a functools.partial, e.g. {example}."
        )
    if not callable(value):
        raise TypeError(f"expected {argument} to be callable, e.g. {example}, but got {type(value).__name__}.")


def check_number(value: Any, argument: str, minimum: float = 0.0, integer: bool = False) -> None:
    """Raise unless ``value`` is a finite number (an ``int`` when ``integer``) of at least ``minimum``."""
    kind = "an integer" if integer else "a number"
    valid = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not valid or not math.isfinite(value) or value < minimum:
        raise ValueError(f"expected {argument} >= {minimum:g} ({kind}) but got {argument}={value!r}.")


def check_something_to_learn(ce_weight: float, term_weights: Sequence[float], module: str) -> None:
    """Raise when every loss weight is zero: the objective is the constant 0 and training would change nothing."""
    if ce_weight == 0 and not any(weight > 0 for weight in term_weights):
        kind = "every term has weight 0" if term_weights else "there are no distillation terms"
        raise ValueError(
            f"{module} has nothing to learn from: ce_weight=0 and {kind}, so the loss is always 0; give ce_weight > 0 "
            f"(the labels) or at least one DistillTerm with weight > 0."
        )


# ----------------------------------------------------------------- the first batch
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


def check_token_ids(batch: Any, networks: Mapping[str, nn.Module], num_classes: int) -> None:
    """Raise when a batch's ``input_ids`` do not fit a network's input embedding (a model built for another
    tokenizer), naming the network, both sizes and the fix, instead of an ``IndexError`` deep inside the model."""
    ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
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


# ----------------------------------------------------------------- schedule and budget
def check_scheduler(
    optimizer_factory: Callable[..., torch.optim.Optimizer],
    scheduler_factory: Callable[..., Any] | None,
    steps: int,
) -> None:
    """Build the optimizer and scheduler on one throw-away parameter and step them ``steps`` times.

    Catches schedules that fail only once training has begun (``CosineAnnealingLR(T_max=0)`` divides by zero at its
    first step) or that produce a non-finite learning rate.
    """
    if scheduler_factory is None:
        return
    probe = nn.Parameter(torch.zeros(1))
    optimizer = optimizer_factory([probe])
    name = getattr(scheduler_factory, "__name__", None) or type(scheduler_factory).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler = scheduler_factory(optimizer)
            name = type(scheduler).__name__
            for _ in range(max(steps, 1)):
                optimizer.step()
                scheduler.step()
                rates = [group["lr"] for group in optimizer.param_groups]
                if not all(math.isfinite(float(lr)) for lr in rates):
                    raise ValueError(f"the learning rate became {rates}")
    except Exception as error:
        raise ValueError(
            f"lr_scheduler {name} fails when it is stepped ({type(error).__name__}: {error}); fix its init_args "
            f"(e.g. CosineAnnealingLR needs T_max >= 1, usually T_max = max_epochs)."
        ) from error


def check_budget(trainer: Any) -> None:
    """Refuse a fit that can make no optimizer step (``max_epochs=0``, ``max_steps=0``, ``limit_train_batches=0``)."""
    reasons = []
    if trainer.max_epochs == 0:
        reasons.append("trainer.max_epochs=0")
    if trainer.max_steps == 0:
        reasons.append("trainer.max_steps=0")
    if trainer.limit_train_batches == 0:
        reasons.append(f"trainer.limit_train_batches={trainer.limit_train_batches}")
    if reasons:
        raise ValueError(
            f"this fit can make no optimizer step ({', '.join(reasons)}): nothing would be trained, and checkpoints "
            f"or exports would hold untrained weights; set it to at least 1 (or use `validate`/`test` to evaluate)."
        )


# ----------------------------------------------------------------- non-finite losses
NONFINITE_ACTIONS = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite; raised before ``backward``, so the weights are those of the last step."""


def describe_nonfinite(losses: Mapping[str, Tensor], batch: Any, epoch: int, step: int, batch_idx: int) -> str:
    """Which loss components are not finite, where (epoch, step, batch) and whether the batch's inputs are the cause."""
    bad = [name for name, value in losses.items() if not bool(torch.isfinite(value.detach()).all())]
    inputs = batch[0] if isinstance(batch, (tuple, list)) and batch else None
    if isinstance(batch, Mapping):
        inputs = next(
            (value for value in batch.values() if isinstance(value, Tensor) and value.is_floating_point()), None
        )
    cause = ""
    if isinstance(inputs, Tensor) and inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        count = int((~torch.isfinite(inputs)).sum())
        cause = f" The batch's inputs hold {count} NaN/inf value(s): fix the data (dataset or transform)."
    else:
        cause = (
            " The inputs are finite: lower the learning rate, clip gradients (trainer.gradient_clip_val), or check the "
            "term's inputs (e.g. a temperature or feature scale that overflows under mixed precision)."
        )
    components = ", ".join(f"{name}={float(losses[name].detach()):g}" for name in bad) or "the total"
    return (
        f"non-finite training loss at epoch {epoch}, global step {step}, batch {batch_idx}: {components}; the step was "
        f"not taken.{cause} To skip such steps instead of stopping, set the module's on_nonfinite: skip."
    )
