"""BYOT exits: auxiliary classifiers on intermediate layers of the student, their losses, and truncated exit networks.

Zhang et al., ICCV 2019, "Be Your Own Teacher: Improve the Performance of Convolutional Neural Networks via Self
Distillation". Exits are attached by ``named_modules()`` path (their inputs come from a feature tap on the unmodified
student); each one is a bottleneck, global pooling and a linear classifier, built from the feature shapes on the first
batch (the distillation modules' dry run, before the optimizer exists) by :class:`~kd_lightning.losses.LazyAdapter`,
which stores the shapes so strict checkpoint loading rebuilds them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

from rich.table import Table
from torch import Tensor, nn

from kd_lightning.core.networks import hookless_copy
from kd_lightning.core.objective import hard_label_loss
from kd_lightning.core.taps import LOGITS
from kd_lightning.core.tokens import Targets, as_targets
from kd_lightning.losses import LazyAdapter, kd_loss


def exit_key(layer: str) -> str:
    """The exit's name in module dicts and logged keys: ``layer2.1`` -> ``layer2_1`` (``val/acc_exit_layer2_1``)."""
    return layer.replace(".", "_")


def global_pool(feature: Tensor) -> Tensor:
    """Average ``[B, C, *spatial]`` over the spatial positions to ``[B, C]``; ``[B, D]`` is returned unchanged."""
    return feature if feature.ndim == 2 else feature.flatten(2).mean(dim=2)


def exit_bottleneck(feature_shape: tuple[int, ...], deepest_shape: tuple[int, ...]) -> nn.Module:
    """Per-sample ``[C, H, W]`` (or ``[D]``) -> ``[D_deep]``, the width of the deepest features (for the hint).

    Images: 1x1 conv to ``D_deep / 4`` channels + BN + ReLU, global average pool, linear to ``D_deep`` + BN + ReLU.
    Like BYOT's bottleneck (1x1 conv to ``D_deep / 4``, kxk conv with stride k, 1x1 conv to ``D_deep``) it narrows
    the channels before the spatial reduction and widens them after it, so an exit on an early, high-resolution layer
    stays cheap; the spatial reduction is a global pool rather than a strided conv. Vectors: linear + BN + ReLU.
    """
    width = deepest_shape[0]
    if len(feature_shape) == 3:
        narrow = max(width // 4, 1)
        return nn.Sequential(
            nn.Conv2d(feature_shape[0], narrow, kernel_size=1, bias=False),
            nn.BatchNorm2d(narrow),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(narrow, width, bias=False),
            nn.BatchNorm1d(width),
            nn.ReLU(),
        )
    if len(feature_shape) == 1:
        return nn.Sequential(nn.Linear(feature_shape[0], width, bias=False), nn.BatchNorm1d(width), nn.ReLU())
    raise ValueError(
        f"a BYOT exit expects [B, C, H, W] or [B, D] features from its layer but got per-sample shape "
        f"{tuple(feature_shape)}; attach the exit to a layer with image-like or vector outputs."
    )


def exit_classifier(feature_shape: tuple[int, ...], logits_shape: tuple[int, ...]) -> nn.Module:
    """The exit's classifier: ``[D_deep]`` -> ``[num_classes]``."""
    return nn.Linear(feature_shape[0], logits_shape[0])


class ExitHead(nn.Module):
    """One exit: ``feature [B, *S]`` -> bottleneck features ``[B, D_deep]`` -> logits ``[B, num_classes]``."""

    def __init__(self) -> None:
        super().__init__()
        self.bottleneck = LazyAdapter(exit_bottleneck)
        self.classifier = LazyAdapter(exit_classifier)

    def forward(self, feature: Tensor, deepest: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Bottleneck features and logits; ``deepest`` ``[B, D_deep]`` and ``logits`` only supply the shapes."""
        hidden = self.bottleneck(feature, deepest)
        return hidden, self.classifier(hidden, logits)

    def standalone(self) -> nn.Sequential:
        """A copy of the built head as one plain network: ``feature`` -> logits."""
        if not (self.bottleneck.is_built and self.classifier.is_built):
            raise ValueError(
                "this exit is not built yet: exits are built from the first batch, by trainer.fit (its dry run) or "
                "module.dry_run(batch), or restored from a checkpoint."
            )
        return nn.Sequential(hookless_copy(self.bottleneck.net), hookless_copy(self.classifier.net))


class BYOTExits(nn.Module):
    """Auxiliary exits on intermediate layers, taught by the network's own deepest output (layer-wise self-KD).

    For every exit ``i`` with logits ``z_i`` and bottleneck features ``f_i`` ``[B, D]``, with ``z`` the model's own
    logits and ``f`` its deepest features (``feature_layer``, globally pooled to ``[B, D]``), both detached::

        (1 - alpha) * CE(z_i, y) + alpha * T^2 * KL(softmax(z / T) || softmax(z_i / T)) + hint_weight * ||f_i - f||^2

    (``||.||^2`` summed over features, averaged over the batch) and the deepest classifier learns
    ``(1 - alpha) * CE(z, y)`` — BYOT's loss. Defaults follow the official code (``alpha=0.1``, ``T=3``); its hint is
    summed over the batch with weight 1e-6 at batch size 128, i.e. ``hint_weight`` of about ``1.3e-4`` here.

    Args:
        layers: ``named_modules()`` paths of the student layers that get an exit, shallow to deep.
        feature_layer: the module whose output is the deepest feature (the classifier's input), e.g. ``pool`` in
            this package's networks, ``global_pool`` in timm's, ``avgpool`` in torchvision's.
        alpha: weight of the distillation (KL) term; the cross-entropy of every classifier has weight ``1 - alpha``.
        temperature: softmax temperature ``T`` of the KL term.
        hint_weight: weight (lambda) of the L2 feature hint.
    """

    def __init__(
        self,
        layers: Sequence[str],
        feature_layer: str = "pool",
        alpha: float = 0.1,
        temperature: float = 3.0,
        hint_weight: float = 1.3e-4,
    ) -> None:
        super().__init__()
        if isinstance(layers, str) or not layers:
            raise ValueError(f"expected a non-empty list of layer names for the BYOT exits but got {layers!r}.")
        keys = [exit_key(layer) for layer in layers]
        if len(set(keys)) != len(keys) or feature_layer in layers:
            raise ValueError(
                f"expected distinct exit layers other than feature_layer={feature_layer!r} but got {list(layers)}."
            )
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"expected BYOT alpha in [0, 1] but got alpha={alpha}.")
        if not temperature > 0:
            raise ValueError(f"expected a BYOT temperature > 0 but got temperature={temperature}.")
        if not hint_weight >= 0:
            raise ValueError(f"expected a BYOT hint_weight >= 0 but got hint_weight={hint_weight}.")
        self.layers, self.feature_layer = tuple(layers), feature_layer
        self.alpha, self.temperature, self.hint_weight = float(alpha), float(temperature), float(hint_weight)
        self.heads = nn.ModuleDict({key: ExitHead() for key in keys})

    @property
    def tapped_layers(self) -> list[str]:
        """Student outputs the exits read: every exit layer and the deepest features."""
        return [*self.layers, self.feature_layer]

    def forward(self, outputs: Mapping[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """``{layer: (bottleneck features [B, D], logits [B, C])}`` from the student's tapped outputs."""
        deepest = global_pool(outputs[self.feature_layer])
        return {layer: self.heads[exit_key(layer)](outputs[layer], deepest, outputs[LOGITS]) for layer in self.layers}

    def losses(
        self, outputs: Mapping[str, Tensor], target: Targets | Tensor | None, label_smoothing: float = 0.0
    ) -> dict[str, Tensor]:
        """Weighted losses ``{"exit_ce_<layer>", "exit_kd_<layer>", "exit_hint_<layer>"}``; teacher side detached.
        A label-free batch has no ``exit_ce``; unlabelled samples (``-100``) are skipped by it."""
        target = as_targets(target)
        teacher_logits = outputs[LOGITS].detach()
        teacher_features = global_pool(outputs[self.feature_layer]).detach().float()
        losses: dict[str, Tensor] = {}
        for layer, (hidden, logits) in self(outputs).items():
            key = exit_key(layer)
            hint = (hidden.float() - teacher_features).pow(2).sum(dim=1).mean()
            if target.has_labels and self.alpha < 1.0:
                losses[f"exit_ce_{key}"] = (1.0 - self.alpha) * hard_label_loss(logits, target, label_smoothing)
            losses[f"exit_kd_{key}"] = self.alpha * kd_loss(logits, teacher_logits, self.temperature)
            losses[f"exit_hint_{key}"] = self.hint_weight * hint
        return losses

    def extra_repr(self) -> str:
        return (
            f"layers={list(self.layers)}, feature_layer={self.feature_layer!r}, alpha={self.alpha}, "
            f"temperature={self.temperature}, hint_weight={self.hint_weight}"
        )


def modules_up_to(model: nn.Module, layer: str) -> OrderedDict[str, nn.Module]:
    """The submodules that run, in order, from the input up to and including ``layer``.

    Assumes each module on the path to ``layer`` applies its children in registration order (true of
    ``nn.Sequential`` and of networks written as a chain of stages, such as this package's, ResNets up to their
    pooling, VGGs); callers check the result against the full model.
    """
    selected: OrderedDict[str, nn.Module] = OrderedDict()
    parent, prefix = model, ""
    parts = layer.split(".")
    for depth, part in enumerate(parts):
        children = OrderedDict(parent.named_children())
        for name, child in children.items():
            if name == part:
                break
            selected[exit_key(prefix + name)] = child
        if depth == len(parts) - 1:
            selected[exit_key(layer)] = children[part]
        parent, prefix = children[part], f"{prefix}{part}."
    return selected


def truncate(model: nn.Module, layer: str, head: nn.Module) -> nn.Sequential:
    """A stand-alone network: copies of ``model``'s modules up to ``layer``, then ``head`` (named ``exit``)."""
    modules = OrderedDict((name, hookless_copy(module)) for name, module in modules_up_to(model, layer).items())
    modules["exit"] = head
    return nn.Sequential(modules)


def exit_table(rows: Sequence[Mapping[str, object]]) -> Table:
    """A table of :meth:`LayerwiseSelfDistillation.exit_summary` rows: exit, parameters, share, accuracy."""
    table = Table(title="kd_lightning exits (each truncated network stands alone)")
    columns = [key for key in rows[0] if key != "exit" and any(row.get(key) is not None for row in rows)]
    table.add_column("exit")
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(str(row["exit"]), *[_cell(row.get(column)) for column in columns])
    return table


def _cell(value: object) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4f}" if isinstance(value, float) else "-"
