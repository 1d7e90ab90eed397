"""A shallower student copied from the teacher: a chosen subset of its stages or residual blocks, weights kept exactly.

The image-network counterpart of :func:`kd_lightning.models.text.student_from_teacher` (Sanh et al. 2019,
"DistilBERT, a distilled version of BERT": the student starts as the teacher with some layers taken out, every kept
weight copied). YAML gives the teacher as a ``class_path`` network plus its weights file::

    student:
      class_path: kd_lightning.models.shallow.shallow_copy
      init_args:
        teacher: {class_path: kd_lightning.models.DigitsCNN, init_args: {num_classes: 10, width: 32}}
        weights: checkpoints/digits_teacher.safetensors
        keep: [stem, layer2, layer3]                 # DigitsCNN without layer1

What can be kept, by family (the stem before the stages, the pooling and the classifier are always kept):

| family | stages | ``keep`` |
|---|---|---|
| ``DigitsCNN`` | ``stem``, ``layer1``, ``layer2``, ``layer3`` (one block each) | stage names |
| CIFAR ResNets (``resnet8`` ... ``resnet110``, ``x4``) | ``layer1`` .. ``layer3`` | ``{stage: [blocks]}`` or names |
| CIFAR ``ResNet50``, timm and torchvision ResNets | ``layer1`` .. ``layer4`` | ``{stage: [blocks]}`` or names |

A block can go only where the shapes still fit: the block after it (or the classifier) must receive the shape it
received in the teacher. Blocks that keep their input's shape can always go (DigitsCNN's ``layer1``; every residual
block but the first of each ResNet stage, which changes the width and resolution). The shapes are traced on the
teacher with a forward pass on a small input, and a subset that breaks them is an error naming the block, both shapes
and the blocks that can be dropped.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from kd_lightning.files.weights import load_weights
from kd_lightning.models.digits import DigitsCNN, DigitsMLP, TinyCNN

DIGITS_STAGES = ("stem", "layer1", "layer2", "layer3")
DIGITS_NETWORKS = (DigitsCNN, TinyCNN, DigitsMLP)
FAMILIES = (
    "DigitsCNN (stages stem, layer1, layer2, layer3)",
    "the CIFAR ResNets of kd_lightning.models (resnet8 ... resnet110, resnet8x4, resnet32x4, ResNet50)",
    "timm and torchvision ResNets (layer1 .. layer4)",
)


def fresh_copy(teacher: nn.Module, weights: str | Path | None, what: str) -> nn.Module:
    """A deep copy of ``teacher`` with ``weights`` loaded strictly (the teacher itself is not changed), as a fresh
    network: in train mode, every parameter trainable, no tensor shared with the teacher, and no forward hooks (a
    feature tap on the teacher is not carried over: ``copy.deepcopy`` would copy it)."""
    if not isinstance(teacher, nn.Module):
        raise TypeError(
            f"{what}: expected the teacher as a network (an nn.Module; in YAML a class_path entry) but got "
            f"{type(teacher).__name__}."
        )
    network = copy.deepcopy(teacher)
    for module in network.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    if weights is not None:
        load_weights(network, weights, role="teacher")
    return network.train().requires_grad_(True)


def first_convolution(network: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The network's first 2-d convolution (registration order: the stem comes first in every zoo), with its name."""
    return next(((name, m) for name, m in network.named_modules() if isinstance(m, nn.Conv2d)), None)


def is_transformer(network: nn.Module) -> bool:
    """Whether ``network`` is a transformer: a Hugging Face model (token embeddings), or any network with an
    ``nn.Embedding``, ``nn.MultiheadAttention`` or a module whose class name says attention (a timm ViT's blocks)."""
    if callable(getattr(network, "get_input_embeddings", None)):
        return True
    return any(
        isinstance(m, (nn.Embedding, nn.MultiheadAttention)) or "Attention" in type(m).__name__
        for m in network.modules()
    )


def check_input_shape(network: nn.Module, input_shape: Sequence[int], field: str = "input_shape") -> tuple[int, ...]:
    """``input_shape`` as a tuple, or a ``ValueError`` when it is not the ``[C, H, W]`` of one sample that the
    network's first convolution takes (e.g. ``[H, W]`` without the channels, or other channels).

    Args:
        network: the network the shape is for.
        input_shape: the shape of one sample, without the batch dimension.
        field: where the shape was given (``input_shape``, ``--input-shape``), for the message.

    Example:
        >>> from kd_lightning.models import DigitsCNN
        >>> check_input_shape(DigitsCNN(width=4), [1, 8, 8])
        (1, 8, 8)
    """
    shape = tuple(input_shape)
    given = list(shape)
    if not shape or any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in shape):
        raise ValueError(
            f"{field}: expected positive integers, the shape of one input sample without the batch dimension "
            f"([channels, height, width] for images), but got {given}."
        )
    found = first_convolution(network)
    if found is None:
        return shape

    def shown(*sizes: object) -> str:  # a command line takes 1,8,8; YAML and Python [1, 8, 8]
        return ",".join(map(str, sizes)) if field.startswith("--") else f"[{', '.join(map(str, sizes))}]"

    name, convolution = found
    channels = convolution.in_channels
    what = f"{type(network).__name__} starts with a {channels}-channel convolution ({name})"
    if len(shape) != 3:
        hint = " (it looks like [height, width] without the channels)" if len(shape) == 2 else ""
        size = shape[-2:] if len(shape) >= 2 else (32, 32)
        raise ValueError(
            f"{field}: expected [channels, height, width], 3 numbers, but got {shown(*shape)}{hint}; {what}: pass "
            f"{field} {shown(channels, *size)} (the channels first, then the height and width)."
        )
    if shape[0] != channels:
        raise ValueError(
            f"{field}: expected {channels} channel{'s' if channels != 1 else ''} first but got {shown(*shape)}; "
            f"{what}: pass {field} {shown(channels, *shape[1:])}."
        )
    return shape


def probe_input(network: nn.Module, input_shape: Sequence[int] | None) -> Tensor:
    """Two samples of shape ``input_shape`` (``[C, H, W]``, checked by :func:`check_input_shape`), on the network's
    device and dtype; by default the digits networks' ``[1, 8, 8]``, else the first convolution's input channels at
    32x32."""
    parameter = next(network.parameters(), None)
    device, dtype = (parameter.device, parameter.dtype) if parameter is not None else (None, None)
    if input_shape is None and isinstance(network, DIGITS_NETWORKS):
        input_shape = (1, 8, 8)
    if input_shape is None:
        found = first_convolution(network)
        if found is None:
            raise ValueError(
                f"input_shape: cannot tell the input shape of {type(network).__name__} (it has no Conv2d); pass "
                f"input_shape: [channels, height, width] of one input sample."
            )
        input_shape = (found[1].in_channels, 32, 32)
    input_shape = check_input_shape(network, input_shape)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, *input_shape, generator=generator).to(device=device, dtype=dtype)


def _block_stage_family(network: nn.Module) -> bool:
    """Whether ``network`` is a ResNet whose stages ``layer1``, ``layer2``, ... are ``nn.Sequential``s of blocks."""
    from torchvision.models.resnet import ResNet as TorchvisionResNet

    from kd_lightning.models.cifar.resnet import CifarResNet
    from kd_lightning.models.cifar.resnet50 import CifarBottleneckResNet

    families: tuple[type, ...] = (CifarResNet, CifarBottleneckResNet, TorchvisionResNet)
    try:
        from timm.models.resnet import ResNet as TimmResNet

        families += (TimmResNet,)
    except ImportError:  # timm is optional here
        pass
    return isinstance(network, families)


def _units(network: nn.Module) -> tuple[dict[str, list[str]], dict[str, nn.Module]]:
    """The network's stages (name -> the names of their blocks) and every block by name, in forward order.

    DigitsCNN's stages are single blocks (``{"layer1": ["layer1"], ...}``); a ResNet's blocks are ``layer2.0``, ...
    """
    if isinstance(network, DigitsCNN):
        return {name: [name] for name in DIGITS_STAGES}, {name: getattr(network, name) for name in DIGITS_STAGES}
    if _block_stage_family(network):
        stages: dict[str, list[str]] = {}
        blocks: dict[str, nn.Module] = {}
        index = 1
        while isinstance(getattr(network, f"layer{index}", None), nn.Sequential):
            stage = getattr(network, f"layer{index}")
            stages[f"layer{index}"] = [f"layer{index}.{i}" for i in range(len(stage))]
            blocks.update({f"layer{index}.{i}": block for i, block in enumerate(stage)})
            index += 1
        return stages, blocks
    hint = (
        "; a transformer is copied by kd_lightning.models.text.student_from_teacher (a subset of its layers)"
        if is_transformer(network)
        else ""
    )
    raise TypeError(
        f"shallow_copy: unsupported network {type(network).__name__}; expected one of: {'; '.join(FAMILIES)}{hint}."
    )


def _kept_blocks(keep: Sequence[str] | Mapping[str, Sequence[int]], stages: dict[str, list[str]], name: str) -> dict:
    """``{stage: [kept block indices, in student order]}`` for every stage, after checking ``keep``."""
    listing = ", ".join(stages)
    if isinstance(keep, str) or not isinstance(keep, (Sequence, Mapping)):
        raise TypeError(
            f"shallow_copy: expected keep as a list of stage names or a {{stage: [block indices]}} dict but got "
            f"{keep!r}; the stages of {name} are {listing}."
        )
    chosen = list(keep)
    unknown = [stage for stage in chosen if stage not in stages]
    if unknown:
        raise ValueError(f"shallow_copy: {name} has no stage {unknown[0]!r}; expected stages among: {listing}.")
    repeated = sorted({stage for stage in chosen if chosen.count(stage) > 1})
    if repeated:
        raise ValueError(f"shallow_copy: stages {repeated} are repeated in keep {list(keep)}; name each stage once.")
    if not isinstance(keep, Mapping):
        if not keep:
            raise ValueError(
                f"shallow_copy: expected at least one stage to keep but keep is empty ({name}: {listing})."
            )
        return {stage: list(range(len(blocks))) if stage in keep else [] for stage, blocks in stages.items()}
    kept = {stage: list(range(len(blocks))) for stage, blocks in stages.items()}
    for stage, indices in keep.items():
        count = len(stages[stage])
        if isinstance(indices, (str, bytes)) or not isinstance(indices, Sequence):
            raise TypeError(f"shallow_copy: expected keep[{stage!r}] a list of block indices but got {indices!r}.")
        if stages[stage] == [stage]:
            raise ValueError(
                f"shallow_copy: {name}'s stages are single blocks, so they have no block indices (keep[{stage!r}] = "
                f"{list(indices)}); list the stages to keep by name instead (all of them: keep: {list(stages)})."
            )
        for index in indices:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
                raise ValueError(
                    f"shallow_copy: block {index!r} of {stage} is out of range: {stage} has {count} blocks, numbered "
                    f"0 .. {count - 1}."
                )
        twice = sorted({index for index in indices if list(indices).count(index) > 1})
        if twice:
            raise ValueError(f"shallow_copy: blocks {twice} of {stage} are repeated in {list(indices)}.")
        kept[stage] = list(indices)
    return kept


@torch.no_grad()
def _trace_shapes(network: nn.Module, blocks: dict[str, nn.Module], x: Tensor) -> dict[str, tuple[tuple, tuple]]:
    """``{block: (input shape, output shape)}`` of one forward pass in eval mode (the batch dimension left out)."""
    shapes: dict[str, tuple[tuple, tuple]] = {}

    def record(name: str, module: nn.Module, args: tuple, output: Tensor) -> None:
        shapes.setdefault(name, (tuple(args[0].shape[1:]), tuple(output.shape[1:])))

    handles = [block.register_forward_hook(functools.partial(record, name)) for name, block in blocks.items()]
    was_training = network.training
    try:
        network.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return shapes


def _shape(shape: tuple) -> str:
    return f"[B, {', '.join(str(size) for size in shape)}]"


def _check_chain(order: list[str], kept: list[str], shapes: dict[str, tuple[tuple, tuple]], name: str) -> None:
    """Raise when a kept block would receive another shape than it received in the teacher (or the classifier)."""
    droppable = [block for block in order if shapes[block][0] == shapes[block][1]]
    fixed = [block for block in order if block not in droppable]
    advice = (
        f"blocks that keep their input's shape and can be dropped: {', '.join(droppable) or 'none'}; blocks that "
        f"change the shape and must stay: {', '.join(fixed) or 'none'}"
    )
    current, source = shapes[order[0]][0], "the input of the first stage"
    for block in kept:
        expected = shapes[block][0]
        if expected != current:
            raise ValueError(
                f"shallow_copy: this subset of {name} breaks the shapes at {block}: it expects inputs "
                f"{_shape(expected)} but would get {_shape(current)} ({source}); {advice}."
            )
        current, source = shapes[block][1], f"the output of {block}"
    final = shapes[order[-1]][1]
    if current != final:
        raise ValueError(
            f"shallow_copy: this subset of {name} breaks the shapes at the classifier: it expects features "
            f"{_shape(final)} (the output of {order[-1]}) but would get {_shape(current)} ({source}); {advice}."
        )


def shallow_copy(
    teacher: nn.Module,
    keep: list[str] | dict[str, list[int]],
    weights: str | None = None,
    input_shape: list[int] | None = None,
) -> nn.Module:
    """A shallower copy of the teacher: its chosen stages or residual blocks, every kept weight copied exactly.

    As DistilBERT's student is BERT with every other layer taken out (Sanh et al. 2019), the copy is a deep copy of
    the teacher's network with the other blocks removed: a dropped stage becomes ``nn.Identity()``, a ResNet stage
    keeps the chosen blocks, renumbered ``0 .. k-1`` in the order given (so ``resnet32`` keeping 3 of the 5 blocks
    of every stage has exactly ``resnet20``'s parameter names and shapes). Everything else (stem, BatchNorm
    statistics, classifier) is the teacher's. The copy is a fresh network: in train mode, every parameter trainable,
    sharing no tensor with the teacher, without the teacher's forward hooks, on its device and dtype.

    Args:
        teacher: a ``DigitsCNN``, a CIFAR ResNet of :mod:`kd_lightning.models`, or a timm or torchvision ResNet
            (see the module docstring's table). It is not changed.
        keep: the stage names to keep (the other stages are dropped), e.g. ``[stem, layer2, layer3]`` for a
            ``DigitsCNN`` without ``layer1``; or, for ResNets, ``{stage: [block indices]}``: the blocks to keep of
            the named stages (stages not named are kept whole, ``[]`` drops one entirely), e.g. ``{layer1: [0, 2],
            layer2: [0, 2], layer3: [0, 2]}``.
        weights: the teacher's weights (``.safetensors``, ``.pt`` or a Lightning ``.ckpt``), loaded strictly into
            the copy before blocks are removed; ``None`` copies the teacher's current weights.
        input_shape: ``[C, H, W]`` of the input the shapes are traced with; by default the first convolution's
            input channels at 32x32 (``[1, 8, 8]`` for a ``DigitsCNN``).

    Raises:
        ValueError: for an unknown stage, a block index out of range, a repeated one, or a subset whose shapes do not
            fit (the message names the block, the shape it expects and the one it would get, and which blocks can be
            dropped).

    Example:
        >>> from kd_lightning.models import DigitsCNN
        >>> student = shallow_copy(DigitsCNN(width=8), keep=["stem", "layer2", "layer3"])
        >>> student.layer1, student(torch.randn(2, 1, 8, 8)).shape
        (Identity(), torch.Size([2, 10]))
    """
    network = fresh_copy(teacher, weights, "shallow_copy")
    name = type(network).__name__
    stages, blocks = _units(network)
    kept_indices = _kept_blocks(keep, stages, name)
    order = [block for names in stages.values() for block in names]
    kept = [stages[stage][index] for stage, indices in kept_indices.items() for index in indices]
    x = probe_input(network, input_shape)
    shapes = _trace_shapes(network, blocks, x)
    untraced = [block for block in order if block not in shapes]
    if untraced:
        raise ValueError(f"shallow_copy: blocks {untraced} of {name} were not called in forward; nothing to copy.")
    _check_chain(order, kept, shapes, name)
    for stage, indices in kept_indices.items():
        if stages[stage] == [stage]:
            if not indices:
                setattr(network, stage, nn.Identity())
        else:
            stage_blocks = getattr(network, stage)
            setattr(network, stage, nn.Sequential(*(stage_blocks[i] for i in indices)) if indices else nn.Identity())
    try:  # the copy runs: anything the traced shapes did not catch fails here, not in a fit
        _trace_shapes(network, {}, x)
    except RuntimeError as error:
        raise ValueError(f"shallow_copy: the copy of {name} keeping {keep} does not run: {error}") from None
    return network


__all__ = ["check_input_shape", "first_convolution", "fresh_copy", "is_transformer", "probe_input", "shallow_copy"]
