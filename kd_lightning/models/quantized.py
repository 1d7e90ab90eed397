"""A fake-quantized int8 copy of the teacher, for quantization-aware distillation (QAD), and its real int8 conversion.

The student is the teacher itself, fake-quantized: int8 weights (per output channel, symmetric) and uint8 activations
are simulated in float with straight-through gradients (Jacob et al. 2018, "Quantization and Training of Neural
Networks for Efficient Integer-Arithmetic-Only Inference"), trained with the distillation terms against the
full-precision teacher (quantization-aware distillation: NVIDIA ModelOpt's ``QADTrainer``; Kim et al. 2019, "QKD:
Quantization-aware Knowledge Distillation"), then converted to a real int8 network and saved as TorchScript::

    student:
      class_path: kd_lightning.models.quantized.quantized_copy
      init_args:
        teacher: {class_path: kd_lightning.models.DigitsCNN, init_args: {num_classes: 10, width: 32}}
        weights: checkpoints/digits_teacher.safetensors

and, after the fit, ``convert_quantized(student)`` and ``save_quantized(int8, path)`` (the
:class:`kd_lightning.ConvertQuantized` callback does both with the best checkpoint).

Implementation: PyTorch's eager-mode quantization (``torch.ao.quantization``: ``fuse_modules_qat`` of Conv-BN(-ReLU)
and Linear-ReLU, ``prepare_qat``, ``convert``), checked with torch 2.14.1. It is deprecated there (a
``DeprecationWarning`` says to move to torchao; TorchScript is deprecated too) but it is the path that trains
convolutions and converts them to real int8 CPU kernels: torchao 0.18's ``QATConfig`` fake-quantizes ``nn.Linear`` and
``nn.Embedding`` only ("Module of type Conv2d does not have QAT support"), and its PT2E flow trains an exported graph
(no ``train()``/``eval()``, no module names), which a Lightning fit cannot drive.

The qconfig is the backend's default QAT qconfig in its non-fused form (``get_default_qat_qconfig(backend,
version=0)``: ``FakeQuantize`` with moving-average min/max observers). The fused default (``version=1``,
``FusedMovingAvgObsFakeQuantize``) trains with per-channel weight scales of ``max|w| / 127`` but ``convert`` quantizes
with its observer's ``max|w| / 127.5``: on the digits teacher 32% of the int8 weights of the first convolution came
out one step away from those trained. The non-fused fake quantizer uses its observer's scales in both.

What the int8 network still does differently from the fake-quantized one (measured on digits after a few QAD steps:
logits within 2 output quantization steps for 99.6% of the values, the same top-1 class on every test image): the
x86 backend keeps activations in 7 bits (0..127, so that its 8-bit multiply-adds cannot saturate), and fake
quantization clips there, whereas the int8 kernels write uint8 outputs up to 255: an activation above the range
observed in training is clipped in training and not in deployment.

Supported networks: any whose forward runs on quantized tensors once Conv-BN-ReLU are fused (``DigitsCNN``,
``TinyCNN``, ``DigitsMLP``, nets of Conv/BN/ReLU/Linear/pooling/flatten/dropout in ``nn.Sequential``) and the CIFAR
ResNets of :mod:`kd_lightning.models` (their residual additions become quantized ``add_relu``). Anything else (a
``x + y`` in a forward, a timm ResNet) is refused when the copy is built, by converting a throw-away copy and running
it on a small input. The copy's modules are the teacher's under ``network.`` (``network.layer3``: feature terms name
them so).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.ao.quantization as tq
from torch import Tensor, nn
from torch.ao.nn.quantized import FloatFunctional
from torch.ao.quantization.fake_quantize import FakeQuantizeBase

from kd_lightning.files import atomic_write
from kd_lightning.models.cifar.resnet import BasicBlock, CifarResNet
from kd_lightning.models.shallow import fresh_copy, is_transformer, probe_input

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")
DEPRECATION_MESSAGES = (
    r".*torch\.ao\.quantization is deprecated.*",
    r".*quantized tensor creation functions.*",
    r".*reduce_range will be deprecated.*",
)
FUSABLE = (
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv2d, nn.ReLU),
    (nn.Linear, nn.BatchNorm1d),
    (nn.Linear, nn.ReLU),
)


@contextmanager
def quantization_warnings_silenced() -> Iterator[None]:
    """Silence torch's deprecation notices of eager-mode quantization (see the module docstring), nothing else."""
    with warnings.catch_warnings():
        for message in DEPRECATION_MESSAGES:
            warnings.filterwarnings("ignore", message=message)
        yield


class QuantizableBasicBlock(BasicBlock):
    """The CIFAR ResNets' :class:`~kd_lightning.models.cifar.resnet.BasicBlock` with its residual sum and final ReLU
    as one ``FloatFunctional.add_relu`` (observed in training, a quantized ``add_relu`` once converted)."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.skip_add.add_relu(out, shortcut)


def _make_quantizable(network: nn.Module) -> list[list[str]]:
    """Swap residual blocks for their quantizable form in place; return the groups of modules to fuse."""
    groups: list[list[str]] = []
    for name, module in list(network.named_modules()):
        prefix = f"{name}." if name else ""
        if type(module) is BasicBlock:
            module.__class__ = QuantizableBasicBlock
            module.skip_add = FloatFunctional()
            groups += [[f"{prefix}conv1", f"{prefix}bn1", f"{prefix}relu1"], [f"{prefix}conv2", f"{prefix}bn2"]]
        elif isinstance(module, CifarResNet):
            groups.append([f"{prefix}conv1", f"{prefix}bn1", f"{prefix}relu"])
        elif isinstance(module, nn.Sequential):
            children = list(module.named_children())
            index = 0
            while index < len(children):
                for pattern in FUSABLE:
                    window = children[index : index + len(pattern)]
                    if len(window) == len(pattern) and all(
                        type(m) is t for (_, m), t in zip(window, pattern, strict=True)
                    ):
                        groups.append([f"{prefix}{child}" for child, _ in window])
                        index += len(pattern) - 1
                        break
                index += 1
    return groups


class QuantizedNetwork(nn.Module):
    """``quant -> network -> dequant``: a network whose input is quantized and whose output is dequantized.

    Built by :func:`quantized_copy`. The observers that set the quantization ranges update in training mode only,
    like BatchNorm statistics: evaluation, the modules' dry run and validation leave the ranges as they are.

    Args:
        network: the (fused, QAT-prepared) network.
        backend: the quantized engine its qconfig is for (``x86``, ``fbgemm``, ``qnnpack``, ``onednn``).
    """

    def __init__(self, network: nn.Module, backend: str = "x86") -> None:
        super().__init__()
        self.quant = tq.QuantStub()
        self.network = network
        self.dequant = tq.DeQuantStub()
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            self.observe(self.training)
        return self.dequant(self.network(self.quant(x)))

    @torch.jit.unused
    def observe(self, enabled: bool) -> None:
        """Turn every observer on or off (Lightning restores train/eval modes without calling ``train()``, so the
        forward pass sets them from the mode)."""
        self.apply(tq.enable_observer if enabled else tq.disable_observer)


def _fake_quantizers(network: nn.Module) -> list[tuple[str, FakeQuantizeBase]]:
    return [(name, module) for name, module in network.named_modules() if isinstance(module, FakeQuantizeBase)]


@torch.no_grad()
def _observe_weights(network: QuantizedNetwork, x: Tensor) -> None:
    """Set the weight quantizers' ranges (one per output channel) from the weights, in eval mode: the buffers get
    their final shapes, so a checkpoint of the trained copy loads strictly into a freshly built one. Activation
    ranges are left to the first training batch."""
    was_training = network.training
    network.eval()
    for name, module in _fake_quantizers(network):
        (tq.enable_observer if name.endswith("weight_fake_quant") else tq.disable_observer)(module)
    network.dequant(network.network(network.quant(x)))
    network.train(was_training)


def _check_converts(network: QuantizedNetwork, x: Tensor, name: str) -> None:
    """Convert a throw-away copy (ranges observed on ``x``) and run it: a forward that cannot run in int8 fails here."""
    trial = copy.deepcopy(network).eval()
    with torch.no_grad():
        trial.apply(tq.enable_observer)
        trial.dequant(trial.network(trial.quant(x)))
        try:
            with int8_runtime(network.backend):
                convert_quantized(trial)(x.cpu())
        except (RuntimeError, NotImplementedError) as error:
            detail = str(error).strip().splitlines()[0].split(". ")[0][:300]
            hint = (
                " Eager-mode quantization needs every operation of the forward on quantized tensors to be a module: "
                "an addition of tensors (x + y, a residual sum) must be a torch.ao.nn.quantized.FloatFunctional (as "
                "QuantizableBasicBlock does for the CIFAR ResNets). Supported here: networks of Conv/BatchNorm/ReLU/"
                "Linear/pooling in nn.Sequential (DigitsCNN, TinyCNN, DigitsMLP) and the CIFAR ResNets of "
                "kd_lightning.models."
            )
            hint = hint if "Quantized" in detail else ""
            raise ValueError(f"quantized_copy: {name} does not run in int8 once converted ({detail}).{hint}") from None


@contextmanager
def int8_runtime(backend: str = "x86") -> Iterator[None]:
    """Run int8 networks inside the block: ``torch.backends.quantized.engine`` set to ``backend``, and torch's
    deterministic-algorithms check off; both restored afterwards.

    The check is off because int8 kernels resize their outputs, which it refuses ("quantized_resize_cpu_ does not
    have a deterministic implementation") once a ``Trainer(deterministic=True)`` has turned it on for the process;
    the int8 arithmetic itself has no randomness.
    """
    engine = torch.backends.quantized.engine
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.backends.quantized.engine = backend
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.backends.quantized.engine = engine
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def quantized_copy(
    teacher: nn.Module,
    weights: str | None = None,
    backend: str = "x86",
    input_shape: list[int] | None = None,
) -> nn.Module:
    """The teacher as a fake-quantized int8 network, ready for quantization-aware training or distillation.

    A fresh copy of the teacher (its weights copied exactly, the teacher unchanged) with Conv-BN(-ReLU) and
    Linear-ReLU fused (BatchNorm stays trainable and is folded into the convolutions at conversion), wrapped in
    :class:`QuantizedNetwork` and prepared with ``torch.ao.quantization.prepare_qat`` and the ``backend``'s default
    QAT qconfig, non-fused (``x86``: per-channel symmetric int8 weights, uint8 activations on a 7-bit range,
    moving-average min/max ranges; see the module docstring). Trained as any student, it is converted by
    :func:`convert_quantized`. The copy is in train mode with every parameter trainable; fake-quantizer buffers
    (ranges, scales) are part of its state dict, so checkpoints hold them and load strictly.

    Args:
        teacher: the full-precision network (see the module docstring for what can be quantized).
        weights: the teacher's weights (``.safetensors``, ``.pt`` or a Lightning ``.ckpt``), loaded strictly into
            the copy; ``None`` copies the teacher's current weights.
        backend: the quantized engine the int8 network will run on: ``x86`` (default; fbgemm and oneDNN kernels
            on x86 CPUs), ``fbgemm``, ``qnnpack`` (ARM) or ``onednn``.
        input_shape: ``[C, H, W]`` of the small input the conversion is tried on when the copy is built; by default
            the first convolution's input channels at 32x32 (``[1, 8, 8]`` for the digits networks).

    Raises:
        ValueError: an unknown backend, an ``input_shape`` that is not the ``[C, H, W]`` the network takes, or a
            network whose forward cannot run in int8 once converted.
        TypeError: a transformer (the eager int8 path converts convolutional and linear networks only).

    Example:
        >>> from kd_lightning.models import DigitsCNN
        >>> student = quantized_copy(DigitsCNN(width=8))
        >>> type(student.network.stem[0]).__name__, student(torch.randn(2, 1, 8, 8)).shape
        ('ConvBnReLU2d', torch.Size([2, 10]))
    """
    if backend not in BACKENDS:
        raise ValueError(f"quantized_copy: expected backend one of {', '.join(BACKENDS)} but got {backend!r}.")
    if isinstance(teacher, nn.Module) and is_transformer(teacher):
        raise TypeError(
            f"quantized_copy: {type(teacher).__name__} is a transformer (token embeddings, attention), which the eager "
            f"int8 path does not support: torch.ao.quantization converts Conv/BatchNorm/ReLU/Linear/pooling networks "
            f"(DigitsCNN, DigitsMLP, the CIFAR ResNets), and no input_shape changes that. Distil the transformer into "
            f"a smaller one instead (kd_lightning.models.text.student_from_teacher or model_from_config), and quantize "
            f"the trained model's Linear layers after the fit (torch.ao.quantization.quantize_dynamic)."
        )
    network = fresh_copy(teacher, weights, "quantized_copy")
    name = type(network).__name__
    x = probe_input(network, input_shape)
    with quantization_warnings_silenced():
        tq.fuse_modules_qat(network, _make_quantizable(network), inplace=True)
        quantized = QuantizedNetwork(network, backend)
        quantized.qconfig = tq.get_default_qat_qconfig(backend, version=0)
        tq.prepare_qat(quantized, inplace=True)
        _observe_weights(quantized, x)
        _check_converts(quantized, x, name)
    return quantized.train()


def _drop_foreign_hooks(network: nn.Module) -> None:
    """Remove forward hooks that are not quantization's own observers (feature taps), which convert would keep."""
    for module in network.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key, hook in list(hooks.items()):
                function = getattr(hook, "func", hook)
                if not getattr(function, "__module__", "").startswith("torch.ao.quantization"):
                    del hooks[key]


def convert_quantized(network: nn.Module) -> nn.Module:
    """The real int8 network of a fake-quantized one (:func:`quantized_copy`): ``quant -> network -> dequant``.

    A copy is converted (``torch.ao.quantization.convert``; the given network is unchanged): BatchNorm is folded
    into the convolutions, weights are stored as int8 with the scales the fake quantizers last set, activations are
    uint8 between layers, and the layers run the quantized engine's int8 kernels on the CPU. The result is a plain
    ``nn.Sequential`` with ``quant``, ``network`` and ``dequant`` (state-dict keys as the fake-quantized copy's), in
    eval mode on the CPU; it takes and returns float tensors. Run it inside :func:`int8_runtime` (the copy's
    backend as the quantized engine; ``x86`` is the default on x86 CPUs), as its TorchScript file
    (:func:`save_quantized`) after a ``deterministic=True`` fit in the same process.

    Args:
        network: a network built by :func:`quantized_copy` (and trained).

    Raises:
        TypeError: a network that is not fake-quantized.
    """
    if not isinstance(network, QuantizedNetwork) or not _fake_quantizers(network):
        raise TypeError(
            f"convert_quantized: expected a fake-quantized network built by kd_lightning.models.quantized."
            f"quantized_copy but got {type(network).__name__}."
        )
    prepared = copy.deepcopy(network).cpu().eval()
    _drop_foreign_hooks(prepared)
    prepared.observe(False)
    with quantization_warnings_silenced(), int8_runtime(network.backend):
        converted = tq.convert(prepared, inplace=False)
    modules = OrderedDict(quant=converted.quant, network=converted.network, dequant=converted.dequant)
    return nn.Sequential(modules).eval()


def save_quantized(int8_network: nn.Module, path: str | Path) -> int:
    """Save a converted int8 network as TorchScript (``torch.jit.script``, written atomically); return its size in
    bytes. Load it with ``torch.jit.load(path)``: no kd_lightning needed to run it.

    TorchScript is deprecated in torch 2.14 (a ``FutureWarning``), but it is what serialises eager-mode int8 modules
    with their packed weights: ``torch.export`` fails on them (``Conv2dPackedParamsBase`` has no ``__obj_flatten__``).
    """
    if _fake_quantizers(int8_network) or isinstance(int8_network, QuantizedNetwork):
        raise TypeError(
            "save_quantized: expected the int8 network convert_quantized returns but got a fake-quantized one; call "
            "save_quantized(convert_quantized(network), path)."
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning)
        scripted = torch.jit.script(int8_network.eval())
        written = atomic_write(path, lambda temporary: torch.jit.save(scripted, str(temporary)))
    return written.stat().st_size


__all__ = [
    "QuantizableBasicBlock",
    "QuantizedNetwork",
    "convert_quantized",
    "int8_runtime",
    "quantized_copy",
    "save_quantized",
]
