"""ONNX ``QuantizeLinear``/``DequantizeLinear`` as PyTorch custom ops that ``torch.onnx.export(dynamo=True)``
writes as those ONNX nodes (through ``custom_translation_table``), with no dependency on the deprecated
``torch.ao.quantization`` namespace.

Semantics are ONNX's (opset ≥ 13): ``q = saturate(round_half_even(x / s) + z)`` in the dtype of ``z``;
``x = (q − z) · s``; per tensor (0-d ``s``, ``z``) or per slice along ``axis`` (1-d ``s``, ``z``). ``torch.round``
rounds half to even, as ONNX does, so the PyTorch graph and ONNX Runtime compute the same codes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["dequantize_linear", "onnx_translations", "quantize_linear"]

_RANGES = {torch.uint8: (0, 255), torch.int8: (-128, 127), torch.int32: (-(2**31), 2**31 - 1)}


def _along(t: Tensor, x: Tensor, axis: int) -> Tensor:
    """``t`` (0-d or 1-d) shaped to broadcast against ``x`` along ``axis``."""
    if t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


@torch.library.custom_op("effdl::quantize_linear", mutates_args=())
def quantize_linear(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int = 1) -> Tensor:
    """ONNX ``QuantizeLinear``: codes of ``x`` in ``zero_point``'s dtype (uint8 or int8)."""
    lo, hi = _RANGES[zero_point.dtype]
    q = torch.round(x.float() / _along(scale, x, axis)) + _along(zero_point, x, axis).float()
    return q.clamp(lo, hi).to(zero_point.dtype)


@quantize_linear.register_fake
def _(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int = 1) -> Tensor:
    return torch.empty_like(x, dtype=zero_point.dtype)


@torch.library.custom_op("effdl::dequantize_linear", mutates_args=())
def dequantize_linear(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int = 1) -> Tensor:
    """ONNX ``DequantizeLinear``: ``(q − z) · s`` in float32 (``q`` uint8, int8 or int32)."""
    return (q.float() - _along(zero_point, q, axis).float()) * _along(scale, q, axis)


@dequantize_linear.register_fake
def _(q: Tensor, scale: Tensor, zero_point: Tensor, axis: int = 1) -> Tensor:
    return torch.empty_like(q, dtype=torch.float32)


def onnx_translations() -> dict[Any, Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export``: the ops above as ONNX nodes (needs onnxscript)."""
    from onnxscript import opset18 as op

    def q(x: Any, scale: Any, zero_point: Any, axis: int = 1) -> Any:
        return op.QuantizeLinear(x, scale, zero_point, axis=axis)

    def dq(x: Any, scale: Any, zero_point: Any, axis: int = 1) -> Any:
        return op.DequantizeLinear(x, scale, zero_point, axis=axis)

    return {torch.ops.effdl.quantize_linear.default: q, torch.ops.effdl.dequantize_linear.default: dq}
