"""DeiT students with a distillation token.

Touvron, Cord, Douze, Massa, Sablayrolles, Jégou, ICML 2021, "Training data-efficient image transformers &
distillation through attention".

A distilled ViT (timm's ``VisionTransformerDistilled``, the ``*_distilled_*`` architectures) reads two tokens: the
class token into ``head`` and the distillation token into ``head_dist``. DeiT trains the class head on the labels and
the distillation head on the teacher, and predicts with the average of the two heads. :class:`DistilledViT` gives such
a network the library's contract, so ``OfflineDistillation`` trains it with no new mode:

* in training, ``forward`` returns the **class head's** logits, which the hard-label cross-entropy reads, while the
  distillation head's logits are the output of the submodule ``model.head_dist`` (:data:`DISTILLATION_HEAD`), which a
  :class:`~kd_lightning.DistillTerm` reads by name (``student: model.head_dist``, ``teacher: logits``);
* in eval mode (validation, test, predictions, the report, every export) ``forward`` returns ``(head + head_dist) / 2``,
  DeiT's prediction, so the deployed network averages the heads with no extra step.

DeiT's hard distillation (the paper's best setting, ``alpha = 0.5``) in YAML::

    student:
      class_path: kd_lightning.models.deit.cifar_deit_tiny
      init_args: {num_classes: 100}
    ce_weight: 0.5
    terms:
      - class_path: kd_lightning.DistillTerm
        init_args:
          loss: {class_path: kd_lightning.losses.deit.HardDistillationLoss}
          weight: 0.5
          student: model.head_dist
          teacher: logits

For the soft setting see :mod:`kd_lightning.losses.deit` (``KDLoss`` with weight ``alpha / num_classes``).
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import Tensor, nn

from kd_lightning.models.hub import HUB_PREFIXES, timm_model

DISTILLATION_HEAD = "model.head_dist"
"""The ``named_modules()`` path of a :class:`DistilledViT`'s distillation head: what a ``DistillTerm`` reads."""
CLASS_HEAD = "model.head"
"""The path of its class head (the training output, ``logits``)."""


def _not_distilled(model: nn.Module, missing: str) -> TypeError:
    return TypeError(
        f"expected a ViT with a distillation token (a head_dist head and set_distilled_training, as timm's "
        f"VisionTransformerDistilled) but got {type(model).__name__}, which {missing}; build a distilled architecture: "
        f"deit_student(name='deit_tiny_distilled_patch16_224', ...) or cifar_deit_tiny(...) (all names: "
        f"timm.list_models('*distilled*')), or distil into a network without the token with a DistillTerm on its "
        f"logits."
    )


def _check_distilled(model: Any) -> None:
    """Raise unless ``model`` is a distilled ViT with two real heads (before training: here, when it is wrapped)."""
    if isinstance(model, DistilledViT):
        raise TypeError(
            "expected a timm distilled ViT but got a DistilledViT, already wrapped; pass it as it is (without wrapping "
            "it again)."
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a network (an nn.Module) but got {type(model).__name__}.")
    head_dist = getattr(model, "head_dist", None)
    if not isinstance(head_dist, nn.Module):
        raise _not_distilled(model, "has no head_dist module (no distillation token)")
    if not callable(getattr(model, "set_distilled_training", None)):
        raise _not_distilled(model, "has no set_distilled_training method to return both heads in training")
    if not isinstance(getattr(model, "head", None), nn.Linear) or not isinstance(head_dist, nn.Linear):
        raise ValueError(
            f"expected a distilled ViT with two classifier heads but its head and head_dist are "
            f"{type(getattr(model, 'head', None)).__name__} and {type(head_dist).__name__} (num_classes=0); build it "
            f"with num_classes > 0."
        )


def _check_distilled_name(name: str) -> None:
    """Refuse a timm architecture without a distillation token, naming the distilled ones nearest to it."""
    import timm

    architecture = name.partition(".")[0]
    if name.startswith(HUB_PREFIXES) or architecture not in timm.list_models() or "distilled" in architecture:
        return  # hub names are checked once built; an unknown name gets timm_model's own message
    distilled = timm.list_models("*distilled*")
    nearest = difflib.get_close_matches(architecture, distilled, n=3, cutoff=0.3) or distilled[:3]
    raise ValueError(
        f"deit_student({name!r}): {architecture} has no distillation token; expected a distilled architecture such as "
        f"{', '.join(nearest)} (all: timm.list_models('*distilled*')), or use timm_model({name!r}) with a DistillTerm "
        f"on its logits."
    )


def _check_image_size(model: nn.Module, x: Tensor) -> None:
    """Raise when images of another size than the position embeddings' reach a ViT that needs its own size."""
    patch_embed = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    strict = getattr(patch_embed, "strict_img_size", False) and not getattr(model, "dynamic_img_size", False)
    if strict and size is not None and x.ndim == 4 and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(
            f"the DistilledViT student was built for {size[0]}x{size[1]} images (img_size) but got "
            f"{x.shape[-2]}x{x.shape[-1]}; build it with img_size: {x.shape[-2]} (and a patch_size dividing it), or "
            f"resize the data."
        )


class DistilledViT(nn.Module):
    """A distilled ViT trained as DeiT: class head for the labels, distillation head for the teacher, their average
    at inference.

    Args:
        model: a ViT with a distillation token: ``head`` and ``head_dist`` ``nn.Linear`` heads and
            ``set_distilled_training`` (timm's ``VisionTransformerDistilled``, built by :func:`deit_student` or
            :func:`cifar_deit_tiny`). It is switched to distilled training and kept as ``self.model``, so its
            submodules keep their timm names under ``model.`` (``model.blocks.11``, ``model.head_dist``).

    ``forward(x)`` takes images ``[B, C, H, W]`` and returns logits ``[B, num_classes]``: the class head's in training,
    ``(head + head_dist) / 2`` in eval mode. Read the distillation head with ``student: model.head_dist``
    (:data:`DISTILLATION_HEAD`); without such a term only the class head trains (DeiT without distillation).

    Example:
        >>> import torch
        >>> net = cifar_deit_tiny(num_classes=10, depth=1, embed_dim=16, num_heads=2)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> heads = net.heads(x)
        >>> bool(torch.allclose(net.eval()(x), (heads[0] + heads[1]) / 2))
        True
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        _check_distilled(model)
        model.set_distilled_training(True)
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        """The class head's logits ``[B, C]`` in training; the average of the two heads in eval mode."""
        _check_image_size(self.model, x)
        output = self.model(x)
        if isinstance(output, (tuple, list)):
            return output[0]  # training: the distillation head's logits reached model.head_dist's forward hooks
        if self.training:
            raise RuntimeError(
                f"the DistilledViT student is in training mode but its {type(self.model).__name__} returned one "
                f"tensor (the average of its heads) instead of (class, distillation) logits; leave it in distilled "
                f"training (do not call set_distilled_training(False) on it)."
            )
        return output

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Both heads' logits ``([B, C], [B, C])``: class and distillation, in any mode, without timm's head dropout
        (for analysis and tests)."""
        features = self.model.forward_features(x)
        return self.model.head(features[:, 0]), self.model.head_dist(features[:, 1])

    @property
    def num_classes(self) -> int:
        """The number of classes of the two heads."""
        return self.model.head.out_features


def deit_student(
    name: str = "deit_tiny_distilled_patch16_224",
    num_classes: int = 1000,
    img_size: int | None = None,
    patch_size: int | None = None,
    in_chans: int = 3,
    pretrained: bool = False,
    checkpoint_path: str | None = None,
    model_args: dict[str, Any] | None = None,
    **kwargs: Any,
) -> DistilledViT:
    """A timm distilled ViT by name, wrapped in :class:`DistilledViT`: ``timm_model(name, ...)`` typed for YAML.

    Args:
        name: a timm architecture with a distillation token (``deit_tiny_distilled_patch16_224``,
            ``deit_small_distilled_patch16_224``, ``deit_base_distilled_patch16_384``; all of them:
            ``timm.list_models('*distilled*')``); another one is an error naming the nearest.
        num_classes: outputs of each head.
        img_size: input height and width (``None``: the architecture's, 224 or 384); the position embeddings are
            built for it.
        patch_size: patch side (``None``: the architecture's, 16); must divide ``img_size``.
        in_chans: input channels.
        pretrained: timm's pretrained weights from the Hugging Face hub (needs the network; DeiT's distilled
            checkpoints were trained with a RegNetY-16GF teacher on ImageNet).
        checkpoint_path: a local state dict of the timm network loaded strictly (keys of the timm model, or of the
            wrapper with a ``model.`` prefix).
        model_args: other arguments of the timm model (``embed_dim``, ``depth``, ``num_heads``, ``drop_path_rate``).
        **kwargs: the same, as keywords, from Python.

    Example:
        >>> import torch
        >>> net = deit_student(num_classes=10, img_size=8, patch_size=2, in_chans=1,
        ...                    model_args={"embed_dim": 16, "depth": 1, "num_heads": 2})
        >>> net(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    _check_distilled_name(name)
    sizes = {"img_size": img_size, "patch_size": patch_size}
    arguments = {key: value for key, value in sizes.items() if value is not None} | dict(model_args or {})
    model = timm_model(name, num_classes, pretrained, checkpoint_path, in_chans, arguments, **kwargs)
    return DistilledViT(model)


def cifar_deit_tiny(
    num_classes: int = 100,
    img_size: int = 32,
    patch_size: int = 4,
    embed_dim: int = 192,
    depth: int = 12,
    num_heads: int = 3,
    mlp_ratio: float = 4.0,
    drop_path_rate: float = 0.1,
    in_chans: int = 3,
    checkpoint_path: str | None = None,
) -> DistilledViT:
    """DeiT-tiny with a distillation token sized for CIFAR: 32x32 images in 4x4 patches (64 patches + 2 tokens).

    DeiT-tiny's width (192, 3 heads, 12 blocks, 5.4M parameters), timm's ``deit_tiny_distilled_patch16_224`` built
    for ``img_size`` and ``patch_size``; smaller ``embed_dim``/``depth`` give the tiny networks of the tests.

    Args:
        num_classes: outputs of each head.
        img_size: input height and width.
        patch_size: patch side; must divide ``img_size``.
        embed_dim: token width (a multiple of ``num_heads``).
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: hidden width of the blocks' MLP over ``embed_dim``.
        drop_path_rate: stochastic depth at the last block (0.1 in DeiT).
        in_chans: input channels.
        checkpoint_path: a local state dict loaded strictly.

    Example:
        >>> import torch
        >>> cifar_deit_tiny(num_classes=10, depth=1)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    if img_size % patch_size:
        raise ValueError(
            f"expected a patch_size that divides img_size but got patch_size={patch_size}, img_size={img_size}; "
            f"pass e.g. patch_size: 4 for 32x32 images."
        )
    if embed_dim % num_heads:
        raise ValueError(
            f"expected an embed_dim divisible by num_heads but got embed_dim={embed_dim}, num_heads={num_heads}."
        )
    model_args = {"embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio}
    return deit_student(
        "deit_tiny_distilled_patch16_224",
        num_classes=num_classes,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        checkpoint_path=checkpoint_path,
        model_args={**model_args, "drop_path_rate": drop_path_rate},
    )


__all__ = ["CLASS_HEAD", "DISTILLATION_HEAD", "DistilledViT", "cifar_deit_tiny", "deit_student"]
