"""What a network costs to deploy, measured on the CPU: size on disk, latency at batch 1, throughput at a larger batch.

* **Size**: the bytes of the network's state dict written as safetensors to a temporary file, by the same function
  :class:`~kd_lightning.callbacks.ExportWeights` uses (:func:`~kd_lightning.callbacks.save_state_dict`): the size of
  the file a deployment would ship, header included.
* **Latency and throughput**: a copy of the network (without forward hooks, not compiled, in eval mode, on the CPU,
  in its own dtype) is called on real inputs under ``torch.inference_mode()`` with a fixed number of intra-op threads
  (restored afterwards). After ``warmup`` calls, each of up to ``repeats`` timed runs calls it ``number`` times in a
  row (``number`` chosen so one run lasts at least :data:`MIN_RUN_SECONDS`, as ``timeit`` does, so a 20 µs network is
  not timed by a clock of about that resolution), and the time per call is the median over the runs.
* **Budget**: ``max_seconds`` bounds the warm-up and the timing of one network at one batch size: warm-up stops once
  it has taken a quarter of it, timing once the whole has passed — after at least one warm-up call (when ``warmup``
  asks for any) and one timed run. A large network (a CIFAR ResNet at batch 64 on one thread: about a second per
  call) thus costs a few calls, not minutes, and the number of timed runs is returned with the time.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from kd_lightning.callbacks.export import save_state_dict
from kd_lightning.core import batch as batches
from kd_lightning.core.batch import Inputs
from kd_lightning.core.networks import hookless_copy

MIN_RUN_SECONDS = 0.002
SIZE_METHOD = "bytes of the state dict written as safetensors to a temporary file (the file ExportWeights writes)"


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[int]:
    """Run the block with ``count`` intra-op CPU threads (``None``: as it is); the previous count is restored.

    Yields:
        The number of threads in use inside the block.
    """
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def deployable_copy(network: nn.Module) -> nn.Module:
    """A copy of ``network`` as it is deployed: on the CPU, eval mode, no feature-tap hooks, not compiled."""
    model = hookless_copy(network).cpu().eval()
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:  # nn.Module.compile() in place
            module._compiled_call_impl = None
    return model


def safetensors_bytes(network: nn.Module) -> int:
    """The size in bytes of ``network``'s state dict saved as a ``.safetensors`` file (written, then deleted)."""
    with tempfile.TemporaryDirectory(prefix="kd_lightning_size_") as directory:
        return save_state_dict(network.state_dict(), Path(directory) / "network.safetensors").stat().st_size


def cpu_inputs(inputs: Inputs) -> Inputs:
    """A detached CPU copy of a model input (a tensor, or a dict of keyword tensors as text models take)."""
    if isinstance(inputs, Mapping):
        return {key: cpu_inputs(value) if isinstance(value, Tensor) else value for key, value in inputs.items()}
    return inputs.detach().cpu().clone()


def batch_of(inputs: Inputs, size: int) -> Inputs:
    """``size`` samples of ``inputs``: its first ones, its samples repeated in order when it has fewer.

    Example:
        >>> batch_of(torch.tensor([[1], [2], [3]]), 5).flatten().tolist()
        [1, 2, 3, 1, 2]
        >>> {key: value.tolist() for key, value in batch_of({"input_ids": torch.tensor([[7, 8]])}, 2).items()}
        {'input_ids': [[7, 8], [7, 8]]}
    """
    if isinstance(inputs, Mapping):
        return {key: batch_of(value, size) if isinstance(value, Tensor) else value for key, value in inputs.items()}
    if inputs.ndim == 0 or len(inputs) == 0:
        raise ValueError(f"expected a batch of inputs [B, ...] with B >= 1 but got shape {tuple(inputs.shape)}.")
    return inputs[torch.arange(size) % len(inputs)]


def _as_network_dtype(inputs: Inputs, network: nn.Module) -> Inputs:
    """Floating-point inputs cast to the dtype of the network's floating-point weights (a half-precision teacher)."""
    dtype = next((p.dtype for p in network.parameters() if p.is_floating_point()), None)
    if isinstance(inputs, Mapping):
        return {
            key: _as_network_dtype(value, network) if isinstance(value, Tensor) else value
            for key, value in inputs.items()
        }
    return inputs.to(dtype) if dtype is not None and inputs.is_floating_point() else inputs


def seconds_per_call(
    network: nn.Module, inputs: Inputs, warmup: int = 3, repeats: int = 20, max_seconds: float = 1.0
) -> tuple[float, int]:
    """Median seconds of one ``network(inputs)`` call under ``torch.inference_mode()`` (see the module docstring).

    Args:
        network: the network, on the CPU and in eval mode.
        inputs: its input, a tensor or a dict of keyword tensors.
        warmup: untimed calls first (allocator, caches, lazy initialisation).
        repeats: timed runs at most; the median of their time per call is returned.
        max_seconds: the budget of warm-up and timing.

    Returns:
        ``(seconds per call, number of timed runs)``.
    """
    inputs = _as_network_dtype(inputs, network)
    start = time.perf_counter()
    with torch.inference_mode():
        for _ in range(warmup):
            batches.call(network, inputs)
            if time.perf_counter() - start >= max_seconds / 4:
                break
        number, elapsed = 1, _run(network, inputs, 1)
        while elapsed < MIN_RUN_SECONDS and number < 1_000_000:
            number *= max(2, min(10, int(MIN_RUN_SECONDS / max(elapsed, 1e-9)) + 1))
            elapsed = _run(network, inputs, number)
        runs = [elapsed / number]
        while len(runs) < repeats and time.perf_counter() - start < max_seconds:
            runs.append(_run(network, inputs, number) / number)
    return statistics.median(runs), len(runs)


def _run(network: nn.Module, inputs: Inputs, number: int) -> float:
    """Seconds taken by ``number`` calls in a row."""
    start = time.perf_counter()
    for _ in range(number):
        batches.call(network, inputs)
    return time.perf_counter() - start


def measure_network(
    network: nn.Module,
    example: Inputs | None,
    threads: int | None = 1,
    warmup: int = 3,
    repeats: int = 20,
    max_seconds: float = 1.0,
    throughput_batch: int = 64,
) -> dict[str, float | int | None]:
    """Size on disk, CPU latency at batch 1 and throughput at ``throughput_batch`` of a copy of ``network``.

    Args:
        network: the network (any device; it is copied, never moved or modified).
        example: a batch of real inputs (e.g. the first test batch); ``None`` measures the size only.
        threads: intra-op CPU threads while timing (``None``: torch's current setting), restored afterwards.
        warmup: untimed calls before timing, per batch size.
        repeats: timed runs per batch size at most (the median is kept).
        max_seconds: budget of warm-up and timing per batch size (see the module docstring).
        throughput_batch: the batch size of the throughput measurement (samples repeated from ``example``).

    Returns:
        ``{"size_bytes", "latency_ms" (batch 1), "throughput" (samples/s at throughput_batch), "latency_runs",
        "throughput_runs"}`` (the numbers of timed runs); the timings are ``None`` without ``example``.
    """
    result: dict[str, float | int | None] = {
        "size_bytes": safetensors_bytes(network),
        "latency_ms": None,
        "throughput": None,
        "latency_runs": None,
        "throughput_runs": None,
    }
    if example is None:
        return result
    model = deployable_copy(network)
    with cpu_threads(threads):
        single, single_runs = seconds_per_call(model, batch_of(example, 1), warmup, repeats, max_seconds)
        many, many_runs = seconds_per_call(model, batch_of(example, throughput_batch), warmup, repeats, max_seconds)
    result.update(latency_ms=single * 1e3, throughput=throughput_batch / many)
    result.update(latency_runs=single_runs, throughput_runs=many_runs)
    return result
