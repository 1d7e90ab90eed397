"""Parts of a module that must agree, checked before the first optimizer step: the networks' numbers of classes
(or tokens) and ``num_classes``, a hard-label loss and a network with logits, the networks and their feature taps,
and the trainable parameters and the optimizer."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from kd_lightning.core.taps import HIDDEN, LOGITS
from kd_lightning.files.weights import describe_keys
from kd_lightning.modules import _evaluation

try:  # FSDP2 (fully_shard modules under ModelParallelStrategy)
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # a torch without it: nothing to reshard
    FSDPModule = ()


def check_classes(module: Any, student: dict[str, Tensor], teacher: dict[str, Tensor] | None) -> None:
    """Raise before training when the student, teacher and ``num_classes`` disagree on the number of classes (or
    tokens), or when a hard-label loss is asked of a network without logits."""
    kind = module.output_kind(student[LOGITS])
    if kind == HIDDEN:
        if module.objective.ce_weight > 0:
            raise ValueError(
                f"the student returns hidden states {tuple(student[LOGITS].shape)} (a model without logits, such "
                f"as a Hugging Face BertModel), so there is no hard-label loss to compute but ce_weight="
                f"{module.objective.ce_weight:g}; set ce_weight: 0 (hidden-state terms only), or give the model a "
                f"head (kd_lightning.models.text with task: masked_lm or causal_lm)."
            )
        return
    student_classes, num_classes = student[LOGITS].shape[-1], module.num_classes
    if teacher is not None and teacher[LOGITS].shape[-1] != student_classes:
        if kind == _evaluation.TOKENS:
            raise ValueError(
                f"teacher and student must share a vocabulary but the teacher predicts "
                f"{teacher[LOGITS].shape[-1]} tokens and the student {student_classes}; build the student for the "
                f"teacher's tokenizer: kd_lightning.models.text.student_from_teacher, or model_from_config with "
                f"vocab_size: {teacher[LOGITS].shape[-1]}."
            )
        raise ValueError(
            f"teacher and student must predict the same classes but the teacher has "
            f"{teacher[LOGITS].shape[-1]} outputs and the student {student_classes}; set the same num_classes "
            f"in both networks' init_args."
        )
    if kind == _evaluation.TOKENS:
        if student_classes < num_classes:
            raise ValueError(
                f"the student predicts {student_classes} tokens but the data's tokenizer has num_classes="
                f"{num_classes} tokens; build the model for that tokenizer (model_from_config vocab_size: "
                f"{num_classes}), or use the tokenizer the model was trained with."
            )
        return
    if student_classes != num_classes:
        raise ValueError(
            f"expected the student to output num_classes={num_classes} logits but it has "
            f"{student_classes}; set num_classes={num_classes} in the student's init_args."
        )


def check_taps(module: Any) -> None:
    """Raise when a network was replaced after construction (the taps, and so training, would use the old one)."""
    for name, network, tap in module.tapped_networks():
        if tap is None or tap.model is network:
            continue
        wrapped = hasattr(network, "_orig_mod")
        wrapper = f" by a torch.compile wrapper (set compile: [{name}] instead)" if wrapped else ""
        raise ValueError(
            f"module.{name} was replaced after the module was built{wrapper}: the feature taps and the losses "
            f"still read the network given to __init__, so training would silently use that one; build a new "
            f"{type(module).__name__} with the network as its argument instead of assigning it."
        )


def check_optimized(module: Any, expected: set[int] | None = None) -> set[int]:
    """Raise when a trainable parameter is in no optimizer (e.g. an adapter built after the optimizer)."""
    for sub in module.modules():  # FSDP2 leaves a root's unsharded parameters registered after an eval forward
        if isinstance(sub, FSDPModule):
            sub.reshard()  # register the sharded parameters again: those are the optimizer's
    optimizers = module.trainer.optimizers
    optimized = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    if not optimized:
        return optimized
    left_out = [name for name, p in module.named_parameters() if p.requires_grad and id(p) not in optimized]
    if left_out:
        when = "during the first training step" if expected is not None else "after the optimizer was built"
        raise RuntimeError(
            f"{len(left_out)} trainable parameter(s) are in no optimizer and would never be trained: "
            f"{describe_keys(left_out, 4)} (created {when}). Build every loss module in compute_losses, which the "
            f"dry run in setup() calls before the optimizer exists, or freeze them with requires_grad_(False)."
        )
    return optimized
