"""Wall-clock latency of a model's forward pass (shared/BENCHMARKS.md: median after warm-up, threads stated)."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence

import torch
from torch import nn


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Temporarily run torch with ``threads`` intra-op threads (``None``: leave as is); yields the count."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None; got {threads}")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode, then restore each one's own ``training`` flag."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter or buffer (CPU/float32 if none)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 64),
    warmup: int = 5,
    repeats: int = 20,
    threads: int | None = None,
) -> dict[int, tuple[float, float, float]]:
    """Time the eager forward pass at each batch size.

    For every batch size a random input ``(batch, *input_shape)`` on the model's device is run ``warmup``
    times untimed, then ``repeats`` times each timed alone with ``time.perf_counter`` (CUDA is
    synchronized around each run), in eval mode under ``torch.inference_mode()``. The model's training
    flags are restored afterwards. ``threads`` sets ``torch.set_num_threads`` for the measurement only.

    Returns:
        ``{batch_size: (median_ms, p25_ms, p75_ms)}`` over the ``repeats`` runs (inclusive quartiles).
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0; got {warmup}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(
            f"batch_sizes must be a non-empty list of positive integers; got {tuple(batch_sizes)}"
        )
    device, dtype = model_device_dtype(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    results: dict[int, tuple[float, float, float]] = {}
    with num_threads(threads), eval_mode(model), torch.inference_mode():
        for batch in (int(b) for b in batch_sizes):
            x = torch.randn(batch, *input_shape, device=device, dtype=dtype)
            for _ in range(warmup):
                model(x)
            sync()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - start) * 1e3)
            if len(times) == 1:
                results[batch] = (times[0], times[0], times[0])
            else:
                p25, median, p75 = statistics.quantiles(times, n=4, method="inclusive")
                results[batch] = (median, p25, p75)
    return results
