"""Small helpers on networks: freeze one, count its parameters, copy it without the library's forward hooks."""

from __future__ import annotations

import copy
from collections import OrderedDict

from torch import nn


def freeze(model: nn.Module) -> nn.Module:
    """Turn off gradients and put the model in eval mode (BatchNorm statistics and dropout stay fixed)."""
    model.requires_grad_(False)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) of a network."""
    return sum(p.numel() for p in model.parameters())


def hookless_copy(module: nn.Module) -> nn.Module:
    """``copy.deepcopy(module)`` without forward hooks (feature taps), which deepcopy would otherwise copy.

    A tap's hook references the tap and, through it, the whole tapped model: copying the hook would copy that model
    too and keep capturing into a stale tap. Forward pre-hooks (weight norm and the like) are kept.
    """
    saved = {sub: sub._forward_hooks for sub in module.modules()}
    try:
        for sub in saved:
            sub._forward_hooks = OrderedDict()
        return copy.deepcopy(module)
    finally:
        for sub, hooks in saved.items():
            sub._forward_hooks = hooks
