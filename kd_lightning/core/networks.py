"""Small helpers on networks: check an argument is one, freeze it, count its parameters, copy it without the
library's forward hooks, and the mark a pretrained builder leaves on the network it returns."""

from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from typing import Any

from torch import nn

PRETRAINED_ATTRIBUTE = "kd_lightning_pretrained"
"""Attribute a pretrained builder sets on the network it returns: where its weights came from (a folder, a hub)."""


def require_network(value: Any, argument: str) -> nn.Module:
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


def check_not_wrapped(network: nn.Module, argument: str) -> None:
    """Refuse a ``torch.compile(network)`` wrapper: name the in-place option that keeps keys and taps."""
    if isinstance(getattr(network, "_orig_mod", None), nn.Module):
        raise TypeError(
            f"expected {argument} to be a plain network but got a torch.compile(...) wrapper (OptimizedModule): its "
            f"state-dict keys gain '_orig_mod.' and feature taps would miss it; pass the network itself and set "
            f"compile: [{argument}] in the module's arguments (compiled in place with nn.Module.compile(), keys and "
            f"checkpoints unchanged)."
        )


def mark_pretrained(network: nn.Module, source: str) -> nn.Module:
    """Record on ``network`` that its weights are trained ones from ``source`` (a folder, ``timm:resnet18``)."""
    object.__setattr__(network, PRETRAINED_ATTRIBUTE, str(source))
    return network


def pretrained_source(network: nn.Module) -> str | None:
    """Where a pretrained builder loaded ``network``'s weights from, or ``None`` (see :func:`mark_pretrained`)."""
    source = getattr(network, PRETRAINED_ATTRIBUTE, None)
    return source if isinstance(source, str) else None


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
