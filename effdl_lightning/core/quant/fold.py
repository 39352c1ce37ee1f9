"""Fold batch norms into the convs before them, exactly for per-channel symmetric fake quantization.

A deployment step (Jacob et al., arXiv 1712.05877 §3.2) used by :mod:`effdl_lightning.export.int8`; plain
PyTorch + ``torch.fx``, usable on any traceable model, quantized or not.
"""

from __future__ import annotations

import logging
from collections import Counter

import torch
from torch import Tensor, fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from effdl_lightning.core.quant.functions import SCALE_EPS
from effdl_lightning.core.quant.graph import module_of, move_output_quantizer, trace
from effdl_lightning.core.quant.modules import is_quantized
from effdl_lightning.core.quant.quantizers import AffineQuantizer, FakeQuantizer, build_quantizer

__all__ = ["fold_batch_norm_", "module_of", "set_module", "trace_with_quantized_leaves"]

log = logging.getLogger(__name__)


def trace_with_quantized_leaves(model: nn.Module) -> fx.GraphModule:
    """``torch.fx`` trace of ``model`` with quantized layers and fake quantizers kept as leaf modules (output
    quantizers of graph-level sites as ``call_module`` nodes after their host).

    Raises:
        ValueError: ``model`` is not fx-traceable.
    """
    return trace(model, is_quantized)[0]


def set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent), child, module)


# ----------------------------------------------------------------------------------------- BN folding


def _folded_quantizer(quantizer: FakeQuantizer, weight: Tensor, k: Tensor) -> AffineQuantizer | str:
    """The weight quantizer of ``W·k`` (``k`` per output channel) frozen at ``s·|k|``, or why none is exact."""
    if not isinstance(quantizer, AffineQuantizer) or quantizer.axis not in (None, 0):
        return f"its weight quantizer {quantizer!r} is not affine per tensor or per output channel"
    if not bool(quantizer.initialized):  # as its first forward would
        quantizer.observe(weight)
    scale, zero_point = quantizer.qparams()
    # quant(W·k; s·|k|, z) = k·quant(W; s, z) for k < 0 needs codes symmetric about z = 0
    if bool((k < 0).any()) and (bool(zero_point.any()) or quantizer.qmin != -quantizer.qmax):
        return "a negative BN scale does not commute with its asymmetric weight quantization"
    folded = build_quantizer({**quantizer.config(), "channels": k.numel(), "axis": 0, "learn_scale": False})
    assert isinstance(folded, AffineQuantizer)
    lo, hi = quantizer.min_val * k, quantizer.max_val * k
    folded.to(k.device)
    folded.min_val.copy_(torch.minimum(lo, hi))
    folded.max_val.copy_(torch.maximum(lo, hi))
    folded.scale.copy_((scale * k.abs()).clamp_min(SCALE_EPS))
    folded.zero_point.copy_(zero_point.expand_as(k))
    folded.initialized.fill_(True)
    folded.freeze()
    folded.enabled = quantizer.enabled
    return folded


@torch.no_grad()
def _fold(conv: _ConvNd, bn: _BatchNorm) -> str | None:
    if bn.running_mean is None or bn.running_var is None:
        return "the BatchNorm uses batch statistics (track_running_stats=False)"
    k = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
    k = k.to(conv.weight.dtype)
    quantizer = getattr(conv, "weight_quantizer", None)
    if quantizer is not None:
        folded = _folded_quantizer(quantizer, conv.weight, k)
        if isinstance(folded, str):
            return folded
        conv.weight_quantizer = folded
    bias = (conv.bias if conv.bias is not None else 0.0) - bn.running_mean
    bias = bias * k + (bn.bias if bn.affine else 0.0)
    conv.weight.mul_(k.reshape(-1, *[1] * (conv.weight.dim() - 1)))
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.empty_like(k), requires_grad=conv.weight.requires_grad)
    conv.bias.copy_(bias)
    return None


def fold_batch_norm_(model: nn.Module) -> list[tuple[str, str]]:
    """Fold every BatchNorm that directly follows a conv (plain or quantized) into that conv, in place.

    ``W' = W·k``, ``b' = (b − μ)·k + β``, ``k = γ/√(σ² + ε)`` per output channel from the running statistics
    (arXiv 1712.05877 §3.2); the BatchNorm becomes ``nn.Identity``. A quantized conv's weight quantizer becomes
    a per-output-channel one frozen at ``s·|k|``, exact as ``round(w·k/(s·|k|)) = sign(k)·round(w/s)`` for codes
    symmetric about 0: the folded fake-quantized model equals the unfolded one in eval mode up to float
    rounding. Pairs come from ``torch.fx`` tracing (quantized layers as leaves): the conv's only user is the
    BatchNorm, each called once. A deployment step: not recorded in the compression record.

    Returns:
        ``(conv name, batch-norm name)`` per folded pair; pairs that cannot be folded exactly are logged.

    Raises:
        ValueError: the model is not fx-traceable.
    """
    gm = trace_with_quantized_leaves(model)
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    folded: list[tuple[str, str]] = []
    for node in gm.graph.nodes:
        bn, prev = module_of(gm, node), node.args[0] if len(node.args) == 1 else None
        conv = module_of(gm, prev)
        if not isinstance(bn, _BatchNorm) or not isinstance(conv, _ConvNd) or conv.transposed:
            continue
        assert isinstance(prev, fx.Node)
        reason = "the conv output or a module is shared"
        if len(prev.users) == 1 and calls[prev.target] == 1 and calls[node.target] == 1:
            reason = _fold(conv, bn) or ""
        if reason:
            log.info("fold_batch_norm_: %s -> %s not folded: %s", prev.target, node.target, reason)
            continue
        identity = nn.Identity()
        move_output_quantizer(bn, identity)
        set_module(model, str(node.target), identity)
        folded.append((str(prev.target), str(node.target)))
    return folded
