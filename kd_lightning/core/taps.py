"""``FeatureTap``: capture intermediate outputs of named submodules with forward hooks, on unmodified models.

Names are ``model.named_modules()`` paths (``layer3``, ``blocks.4``, ``features.7``), as in timm's ``FeatureHooks``,
and two outputs that need no hook: ``"logits"`` (the model output) and ``"pooled"`` (a text encoder's sentence
embedding, :data:`POOLED`). The tap is a plain object, not an ``nn.Module``: nothing of it is registered on the model or
saved in checkpoints.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

LOGITS = "logits"
POOLED = "pooled"
"""Output name of a text encoder's sentence embedding ``[B, H]``: its last hidden states averaged over the real tokens,
``sum_l mask[b, l] * h[b, l] / sum_l mask[b, l]`` (float32; ``mask`` the batch's ``attention_mask``, every token when
there is none) — the mean pooling of sentence-transformers models such as all-MiniLM-L6-v2, before their L2
normalisation (which a cosine ignores)."""


HIDDEN = "hidden"
"""Output kind of a network without logits (a Hugging Face base model: its ``last_hidden_state`` ``[B, L, H]``)."""


def first_tensor(output: Any) -> Tensor | None:
    """A module output's main tensor: the tensor itself, the first item of a tuple or list, or the first tensor of a
    ``ModelOutput``/dict (``last_hidden_state`` of a Hugging Face model); ``None`` when there is none."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping):
        return next((value for value in output.values() if isinstance(value, Tensor)), None)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


def primary_output(output: Any) -> tuple[Tensor, str]:
    """A model output's logits and their kind: ``(logits, "logits")``, or ``(hidden states, "hidden")`` for a model
    without logits (a Hugging Face ``BertModel``/``GPT2Model``: its ``last_hidden_state``)."""
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits, LOGITS
    if isinstance(output, Tensor) or (isinstance(output, (tuple, list)) and first_tensor(output) is not None):
        return first_tensor(output), LOGITS
    hidden = getattr(output, "last_hidden_state", None)
    if isinstance(hidden, Tensor):
        return hidden, HIDDEN
    raise TypeError(
        f"expected the model to return logits (a Tensor, an object with .logits or .last_hidden_state, or a tuple "
        f"starting with logits) but got {type(output).__name__}; wrap the model so that forward returns logits."
    )


def mean_pool(states: Tensor, mask: Tensor | None) -> Tensor:
    """``states`` ``[B, L, H]`` averaged over the positions where ``mask`` ``[B, L]`` is nonzero (every position when
    ``mask`` is None): ``[B, H]`` float32. A row without a real token gives zeros. Positions outside the mask never
    reach the value (they may hold NaN)."""
    states = states.float()
    if mask is None:
        return states.mean(1)
    keep = mask.to(device=states.device, dtype=torch.bool)
    total = torch.where(keep.unsqueeze(-1), states, 0.0).sum(1)
    return total / keep.sum(1, keepdim=True).clamp_min(1).to(total.dtype)


def extract_logits(output: Any) -> Tensor:
    """Return the logits of a model output: a tensor, an object with ``.logits`` (or ``.last_hidden_state``), or a
    tuple starting with logits."""
    return primary_output(output)[0]


def resolve_module(model: nn.Module, name: str, role: str = "model") -> nn.Module:
    """Return ``model``'s submodule at ``name`` or raise a ``ValueError`` listing the nearest valid names.

    The nearest names include ``"logits"``, the model output, which a term can always read without a hook.
    """
    modules = dict(model.named_modules())
    if name and name in modules:
        return modules[name]
    valid = [LOGITS, POOLED, *(n for n in modules if n)]
    nearest = difflib.get_close_matches(name, valid, n=5, cutoff=0.4) or valid[:5]
    note = f"{LOGITS!r} is the model output; " if LOGITS in nearest else ""
    raise ValueError(
        f"{role} {type(model).__name__} has no submodule named {name!r}; nearest valid names: "
        f"{', '.join(repr(n) for n in nearest)} ({note}all names: `[n for n, _ in model.named_modules()]`)."
    )


class FeatureTap:
    """Run a model and return its logits plus the outputs of the named submodules, in one forward pass.

    Args:
        model: any ``nn.Module`` (ours, timm, torchvision); it is not modified beyond forward hooks.
        names: ``named_modules()`` paths to capture; ``"logits"`` is the model output and needs no hook.
        role: "student"/"teacher"/... used in error messages.

    Calling the tap returns ``{"logits": [B, C], name: feature, ...}``. Captured features are the module outputs
    themselves (no copy): tap modules whose output is not modified in place afterwards. A module returning a tuple or
    a ``ModelOutput`` (a transformer block: ``encoder.layer.3``, ``transformer.h.5``) gives its first tensor, the
    hidden states ``[B, L, H]``. After a call, ``output_kind`` is ``"logits"``, or ``"hidden"`` for a model without
    logits (a Hugging Face base model), whose ``last_hidden_state`` is then returned under ``"logits"``.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
        >>> tap = FeatureTap(net, ["1"])
        >>> {k: tuple(v.shape) for k, v in tap(torch.randn(2, 4)).items()}
        {'logits': (2, 3), '1': (2, 8)}
        >>> tap.remove()
    """

    def __init__(self, model: nn.Module, names: Iterable[str] = (), role: str = "model") -> None:
        self.model, self.role = model, role
        names = tuple(dict.fromkeys(names))
        self.pooled = POOLED in names
        self.names = tuple(n for n in names if n not in (LOGITS, POOLED))
        self._captured: dict[str, Tensor] = {}
        self.output_kind = LOGITS
        self._handles: list[RemovableHandle] = []
        for name in self.names:
            module = resolve_module(model, name, role)
            self._handles.append(module.register_forward_hook(functools.partial(self._capture, name)))

    def _capture(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        """Forward hook (a partial of a bound method, so models with taps stay picklable for ``ddp_spawn``).

        A transformer block returning a tuple or a ``ModelOutput`` is captured by its hidden states (the first tensor).
        """
        captured = first_tensor(output)
        if captured is None:
            raise TypeError(
                f"{self.role} submodule {name!r} ({type(module).__name__}) returned {type(output).__name__}, "
                f"which holds no tensor to capture; tap one of its submodules that returns a tensor instead."
            )
        self._captured[name] = captured

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        self._captured = {}
        logits, self.output_kind = primary_output(self.model(*args, **kwargs))
        outputs = {LOGITS: logits}
        if self.pooled:
            outputs[POOLED] = self._pool(logits, kwargs.get("attention_mask"))
        missing = [n for n in self.names if n not in self._captured]
        if missing:
            raise RuntimeError(f"{self.role} submodules {missing} were not called in forward; tap modules on the path.")
        outputs.update(self._captured)
        self._captured = {}
        return outputs

    def _pool(self, states: Tensor, mask: Tensor | None) -> Tensor:
        """:data:`POOLED` of the last hidden states ``[B, L, H]`` and the attention mask ``[B, L]``: ``[B, H]``."""
        if self.output_kind != HIDDEN or states.ndim != 3:
            raise ValueError(
                f"{self.role} {type(self.model).__name__} returns {self.output_kind} of shape "
                f"{tuple(states.shape)} but {POOLED!r} averages an encoder's last hidden states [B, L, H]; "
                f"load the model without a head (pretrained_model(..., task: base)) or read another output."
            )
        return mean_pool(states, mask)

    def remove(self) -> None:
        """Remove all hooks; the model is left exactly as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"FeatureTap({type(self.model).__name__}, names={list(self.names)})"
