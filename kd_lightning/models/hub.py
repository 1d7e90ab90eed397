"""timm and torchvision networks by name, as typed factories that YAML can configure by ``class_path``.

``timm.create_model`` takes the architecture's arguments (``num_classes``, ``drop_rate``, ...) through ``**kwargs``
that jsonargparse cannot follow, so ``init_args: {num_classes: 10}`` is refused ("Option 'num_classes' is not
accepted"), and timm's model classes (``timm.models.resnet.ResNet``) take block *classes* where their type hints say
instances. :func:`timm_model` gives the common arguments types::

    teacher:
      class_path: kd_lightning.models.timm_model
      init_args: {name: resnet18, num_classes: 100}

torchvision's builders (``class_path: torchvision.models.resnet18``, ``init_args: {num_classes: 10}``) work as they
are; :func:`torchvision_model` adds a name check and a clear message when pretrained weights cannot be downloaded.
Both check the name (an unknown one lists the nearest), say what to do when pretrained weights need a network that
is not there, and load a local ``checkpoint_path`` strictly through the library's defensive loader.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from torch import nn

from kd_lightning.core.networks import mark_pretrained
from kd_lightning.files import CheckpointFileError
from kd_lightning.files.weights import load_weights, read_state_dict, strip_prefixes

HUB_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
NETWORK_MODULES = ("huggingface_hub", "requests", "urllib3", "httpx", "urllib")


def _nearest(name: str, valid: Sequence[str], limit: int = 5) -> str:
    return ", ".join(difflib.get_close_matches(name, valid, n=limit, cutoff=0.5) or list(valid)[:limit])


def _check_name(name: str, valid: Sequence[str], library: str, listing: str) -> None:
    if name not in valid:
        raise ValueError(f"unknown {library} model {name!r}; nearest: {_nearest(name, valid)} (all: `{listing}`).")


def _check_timm_name(name: str) -> None:
    """Check a timm architecture name, with an optional pretrained tag (``resnet18.a1_in1k``)."""
    import timm

    if name.startswith(HUB_PREFIXES):
        return
    architecture, _, tag = name.partition(".")
    _check_name(architecture, timm.list_models(), "timm", "timm.list_models()")
    tags = [full.partition(".")[2] for full in timm.list_pretrained(f"{architecture}.*")]
    if tag and tag not in tags:
        raise ValueError(
            f"unknown pretrained tag {tag!r} of timm model {architecture!r}; expected one of: {', '.join(tags)} "
            f"(or the bare name {architecture!r})."
        )


def _is_network_error(error: BaseException) -> bool:
    return isinstance(error, (OSError, ConnectionError)) or type(error).__module__.startswith(NETWORK_MODULES)


def _offline_error(what: str, where: str, error: BaseException) -> RuntimeError:
    detail = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    return RuntimeError(
        f"{what}: pretrained weights need the network ({where}); download them elsewhere and pass "
        f"checkpoint_path: <file> (a .safetensors/.pt/.pth state dict) instead. ({type(error).__name__}: {detail})"
    )


def _classifier(model: nn.Module) -> str | None:
    """The classifier's module name: timm's ``pretrained_cfg['classifier']``, else the last ``nn.Linear``."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(name, str):
        return name
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def load_checkpoint_file(model: nn.Module, path: str, what: str, num_classes: int) -> nn.Module:
    """Load a local state-dict file into ``model`` strictly (read with ``weights_only`` by ``read_tensors``).

    A file that does not fit is a ``ValueError`` naming the missing, unexpected and mis-shaped keys; when the
    classifier is what differs, it says which ``num_classes`` the file was saved with.
    """
    try:
        return load_weights(model, path, role="model")
    except CheckpointFileError:
        raise
    except ValueError as error:
        message = f"{what}: {error}"
        classifier = _classifier(model)
        saved = strip_prefixes(read_state_dict(path, what="model weights"), set(model.state_dict()))
        weight = saved.get(f"{classifier}.weight")
        if weight is not None and weight.shape[0] != num_classes:
            message += (
                f" The file's classifier {classifier!r} has {weight.shape[0]} outputs but num_classes={num_classes}: "
                f"pass num_classes: {weight.shape[0]} to load it (the classifier's size follows num_classes)."
            )
        raise ValueError(message) from None


def timm_model(
    name: str,
    num_classes: int = 1000,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    in_chans: int = 3,
    model_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A timm network by name: ``timm.create_model(name, num_classes=..., in_chans=..., **kwargs)``, typed for YAML.

    Feature layers are ``named_modules()`` paths of the timm model (ResNets: ``layer1`` ... ``layer4``, ``global_pool``
    (pooled ``[B, C]``), ``fc``).

    Args:
        name: a timm architecture (``timm.list_models()``), optionally with a pretrained tag (``resnet18.a1_in1k``);
            an unknown name is an error listing the nearest ones.
        num_classes: outputs of the classifier.
        pretrained: download timm's pretrained weights from the Hugging Face hub (needs the network, or a copy in
            the hub cache). Without network it is an error saying to pass ``checkpoint_path`` instead.
        checkpoint_path: a local ``.safetensors``/``.pt``/``.pth``/``.ckpt`` state dict loaded into the created
            model, strictly (its classifier must have ``num_classes`` outputs).
        in_chans: input channels.
        model_args: other arguments of the timm model (``drop_rate``, ``drop_path_rate``, ``layers``, ...), as a
            dict: the way to give them in YAML (``init_args: {name: resnet18, model_args: {drop_rate: 0.1}}``),
            since jsonargparse cannot see through ``timm.create_model``'s ``**kwargs``.
        **kwargs: the same, as keywords, from Python.

    Example:
        >>> import torch
        >>> net = timm_model("resnet10t", num_classes=10)
        >>> net(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    import timm

    what = f"timm_model({name!r})"
    _check_timm_name(name)
    if pretrained and checkpoint_path is not None:
        raise ValueError(f"{what}: expected pretrained: true or a checkpoint_path but got both; keep one.")
    try:
        model = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **(model_args or {}), **kwargs
        )
    except Exception as error:
        if pretrained and _is_network_error(error):
            where = f"Hugging Face hub, https://huggingface.co/{_timm_hub_id(name)}"
            raise _offline_error(f"timm_model({name!r}, pretrained=True)", where, error) from None
        raise
    if checkpoint_path is not None:
        load_checkpoint_file(model, checkpoint_path, what, num_classes)
    elif pretrained:
        mark_pretrained(model, f"timm pretrained {name}")
    return model


def _timm_hub_id(name: str) -> str:
    import timm

    if name.startswith(HUB_PREFIXES):
        return name.partition(":")[2]
    return getattr(timm.models.get_pretrained_cfg(name), "hf_hub_id", None) or name


def _torchvision_weights(name: str, weights: str, num_classes: int) -> Any:
    """The torchvision weights enum member named ``weights`` (``DEFAULT``, ``IMAGENET1K_V1`` or its full name)."""
    from torchvision import models

    enum = models.get_model_weights(name)
    members = {member.name: member for member in enum} | {"DEFAULT": enum.DEFAULT}
    short = weights.removeprefix(f"{enum.__name__}.")
    if short not in members:
        raise ValueError(f"unknown weights {weights!r} of torchvision {name!r}; expected one of: {', '.join(members)}.")
    member = members[short]
    classes = len(member.meta["categories"])
    if num_classes != classes:
        raise ValueError(
            f"torchvision_model({name!r}): weights {short} have {classes} classes but num_classes={num_classes}; "
            f"pass num_classes: {classes} with these weights."
        )
    return member


def torchvision_model(
    name: str,
    num_classes: int = 1000,
    weights: str | None = None,
    checkpoint_path: str | None = None,
    model_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision classification network by name: ``torchvision.models.get_model(name, ...)``.

    ``class_path: torchvision.models.resnet18`` with ``init_args: {num_classes: 10}`` works as well; this factory
    adds a name check and a clear message when pretrained weights cannot be downloaded. Feature layers of ResNets:
    ``layer1`` ... ``layer4``, ``avgpool`` (``[B, C, 1, 1]``; relation losses flatten it), ``fc``.

    Args:
        name: a torchvision model (``torchvision.models.list_models()``); an unknown name lists the nearest ones.
        num_classes: outputs of the classifier.
        weights: ``None`` (random initialisation) or a weights name (``DEFAULT``, ``IMAGENET1K_V1``), downloaded
            from download.pytorch.org (needs the network, or a copy in the torch hub cache).
        checkpoint_path: a local state-dict file loaded into the created model, strictly.
        model_args: other arguments of the builder (``dropout``, ``width_per_group``, ...), as a dict: the way to
            give them in YAML (jsonargparse cannot see through ``torchvision.models.get_model``'s ``**config``).
        **kwargs: the same, as keywords, from Python.

    Example:
        >>> torchvision_model("resnet18", num_classes=10).fc
        Linear(in_features=512, out_features=10, bias=True)
    """
    from torchvision import models

    what = f"torchvision_model({name!r})"
    _check_name(name, models.list_models(), "torchvision", "torchvision.models.list_models()")
    if weights is not None and checkpoint_path is not None:
        raise ValueError(f"{what}: expected weights or a checkpoint_path but got both; keep one.")
    member = None if weights is None else _torchvision_weights(name, weights, num_classes)
    try:
        model = models.get_model(name, weights=member, num_classes=num_classes, **(model_args or {}), **kwargs)
    except Exception as error:
        if member is not None and _is_network_error(error):
            where = f"download.pytorch.org, {member.url}"
            raise _offline_error(f"torchvision_model({name!r}, weights={weights})", where, error) from None
        raise
    if checkpoint_path is not None:
        load_checkpoint_file(model, checkpoint_path, what, num_classes)
    elif member is not None:
        mark_pretrained(model, f"torchvision weights {member}")
    return model


__all__ = ["load_checkpoint_file", "timm_model", "torchvision_model"]
