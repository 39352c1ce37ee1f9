"""Conditionally parameterized convolution (Yang et al., "CondConv", arXiv 1904.04971).

Each example ``x`` gets its own kernel, a mixture of ``E`` expert kernels with routing weights from its
pooled features::

    α(x) = sigmoid(GAP(x) · Rᵀ + b) ∈ (0, 1)^E,        W(x) = Σ_e α_e(x) · W_e,        y = W(x) ⊛ x

(the routing is a sigmoid, not a softmax, so ``Σ_e α_e`` is not 1). As in the paper, the batch is computed
as *one* grouped convolution: the ``N`` examples become ``N·groups`` groups of a ``(1, N·C_in, H, W)``
input with the ``N`` mixed kernels stacked, so the cost is the routing, the mixing and one ordinary
convolution per example. :func:`replace_convs_with_condconv_` swaps a model's ``nn.Conv2d`` layers for
CondConv layers that compute the same output at the swap (see :meth:`CondConv2d.from_conv`).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CondConv2d", "condconv_macs", "replace_convs_with_condconv_"]


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"CondConv2d `{what}` must be an int or a pair; got {value!r}")
    return pair  # type: ignore[return-value]


class CondConv2d(nn.Module):
    """2-D convolution with a per-example kernel ``Σ_e α_e(x)·W_e``, ``α = σ(GAP(x)·Rᵀ + b)`` (arXiv 1904.04971).

    Same arguments and output as ``nn.Conv2d`` (``padding_mode="zeros"`` only) plus ``num_experts``.

    Attributes:
        weight: expert kernels ``(E, C_out, C_in/groups, kh, kw)``, each initialized like ``nn.Conv2d``'s.
        bias: expert biases ``(E, C_out)`` (mixed like the kernels) or ``None``.
        routing_weight: ``R`` of shape ``(E, C_in)``; ``routing_bias``: ``b`` of shape ``(E,)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] = 0,
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        bias: bool = True,
        num_experts: int = 4,
    ) -> None:
        super().__init__()
        if int(num_experts) < 1:
            raise ValueError(f"CondConv2d `num_experts` must be >= 1; got {num_experts}")
        if int(in_channels) < 1 or int(out_channels) < 1 or int(groups) < 1:
            raise ValueError(
                f"CondConv2d channels and groups must be >= 1; got in_channels={in_channels}, "
                f"out_channels={out_channels}, groups={groups}"
            )
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"CondConv2d in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                f"by groups ({groups})"
            )
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.groups = int(groups)
        self.num_experts = int(num_experts)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(self.num_experts, *shape))
        self.bias = nn.Parameter(torch.empty(self.num_experts, self.out_channels)) if bias else None
        self.routing_weight = nn.Parameter(torch.empty(self.num_experts, self.in_channels))
        self.routing_bias = nn.Parameter(torch.zeros(self.num_experts))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Each expert as ``nn.Conv2d.reset_parameters``; the routing as ``nn.Linear``'s weight, bias 0."""
        fan_in = self.weight[0][0].numel()
        for e in range(self.num_experts):
            nn.init.kaiming_uniform_(self.weight[e], a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.kaiming_uniform_(self.routing_weight, a=math.sqrt(5))
        nn.init.zeros_(self.routing_bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, num_experts: int = 4, noise: float = 0.01) -> CondConv2d:
        """A CondConv layer that computes exactly what ``conv`` computes, until it is trained.

        Every expert is ``conv.weight`` (and ``conv.bias``) plus a perturbation ``ε_e`` of relative scale
        ``noise`` with ``Σ_e ε_e = 0``; the routing starts at ``R = 0`` and ``b = logit(1/E)``, so
        ``α_e = 1/E`` for every input and ``Σ_e α_e W_e = W`` (up to float rounding). Identical experts
        would get identical gradients forever: the zero-sum perturbation lets them diverge while keeping
        the output.

        Raises:
            ValueError: a conv with ``padding_mode != "zeros"`` or string padding.
        """
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"CondConv2d supports zero padding given as numbers; got padding={conv.padding!r}, "
                f"padding_mode={conv.padding_mode!r}"
            )
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,  # type: ignore[arg-type]
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            num_experts,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            eps = torch.randn_like(layer.weight) * float(noise) * conv.weight.std().clamp_min(1e-12)
            layer.weight.copy_(conv.weight.unsqueeze(0) + eps - eps.mean(0, keepdim=True))
            if layer.bias is not None and conv.bias is not None:
                layer.bias.copy_(conv.bias.unsqueeze(0).expand_as(layer.bias))
            layer.routing_weight.zero_()
            p = 1.0 / layer.num_experts
            layer.routing_bias.fill_(math.log(p / (1 - p)) if p < 1 else 20.0)
        return layer

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """``α = σ(GAP(x)·Rᵀ + b)`` of shape ``(N, E)``."""
        return torch.sigmoid(F.linear(x.mean((2, 3)), self.routing_weight, self.routing_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"CondConv2d expects (N, {self.in_channels}, H, W) inputs; got {tuple(x.shape)}")
        n = x.shape[0]
        alpha = self.routing(x)
        kernels = (alpha @ self.weight.flatten(1)).view(n * self.out_channels, *self.weight.shape[2:])
        bias = (alpha @ self.bias).flatten() if self.bias is not None else None
        out = F.conv2d(
            x.reshape(1, n * self.in_channels, *x.shape[2:]),
            kernels,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.groups * n,
        )
        return out.view(n, self.out_channels, *out.shape[2:])

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, "
            f"num_experts={self.num_experts}"
        )


def condconv_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """MACs of one :class:`CondConv2d` call, for ``effdl_lightning.measure.register_macs_rule``.

    Per example: routing ``C_in·E`` (the pooling is not counted, like pooling elsewhere), mixing the kernels
    ``E·C_out·C_in/groups·kh·kw`` (and biases ``E·C_out``), and the convolution with the mixed kernel
    ``H_out·W_out·C_out·C_in/groups·kh·kw``, as for ``nn.Conv2d``.
    """
    assert isinstance(module, CondConv2d)
    out = output if isinstance(output, torch.Tensor) else output[0]
    n = out.shape[0]
    kernel = module.weight[0].numel()
    experts = module.num_experts
    mixing = experts * kernel + (experts * module.out_channels if module.bias is not None else 0)
    conv = out.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return n * (module.in_channels * experts + mixing) + conv


def replace_convs_with_condconv_(
    model: nn.Module,
    num_experts: int = 4,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    min_in_channels: int = 1,
    noise: float = 0.01,
) -> dict[str, CondConv2d]:
    """Swap every selected ``nn.Conv2d`` of ``model`` for a :class:`CondConv2d`, in place (arXiv 1904.04971).

    Each new layer is :meth:`CondConv2d.from_conv` of the old one, so the model computes the same outputs
    right after the swap (pretrained weights are kept) and its experts diverge in training. Only exact
    ``nn.Conv2d`` instances are swapped (subclasses such as quantized convs are left alone).

    Args:
        model: any module; changed in place.
        num_experts: experts ``E ≥ 1`` per layer (the paper uses 4 to 32; MACs grow little with ``E``).
        include: glob patterns of conv names to swap (all when empty).
        exclude: glob patterns of conv names to keep.
        min_in_channels: keep convs with fewer input channels (e.g. 4 keeps an RGB or grey stem).
        noise: relative scale of the zero-sum perturbation that separates the experts.

    Returns:
        ``{name: CondConv2d}`` of the swapped layers.

    Raises:
        ValueError: ``num_experts < 1``, ``min_in_channels < 1``, ``noise < 0``, a pattern that matches no
            ``nn.Conv2d``, or no conv selected at all.
    """
    if int(num_experts) < 1:
        raise ValueError(f"`num_experts` must be >= 1; got {num_experts}")
    if int(min_in_channels) < 1:
        raise ValueError(f"`min_in_channels` must be >= 1; got {min_in_channels}")
    if not float(noise) >= 0:
        raise ValueError(f"`noise` must be >= 0; got {noise}")
    inc = (include,) if isinstance(include, str) else tuple(include or ())
    exc = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
    convs = {name: m for name, m in model.named_modules() if type(m) is nn.Conv2d}
    for what, patterns in (("include", inc), ("exclude", exc)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in convs):
                raise ValueError(
                    f"{what} pattern {pattern!r} matches no nn.Conv2d; convs: {', '.join(convs) or '(none)'}"
                )
    selected = {
        name: conv
        for name, conv in convs.items()
        if (not inc or any(fnmatch.fnmatchcase(name, p) for p in inc))
        and not any(fnmatch.fnmatchcase(name, p) for p in exc)
        and conv.in_channels >= int(min_in_channels)
    }
    if not selected:
        raise ValueError(
            f"no nn.Conv2d selected for CondConv (include={list(inc)}, exclude={list(exc)}, "
            f"min_in_channels={min_in_channels}); convs: {', '.join(convs) or '(none)'}"
        )
    swapped: dict[str, CondConv2d] = {}
    for name, conv in selected.items():
        layer = CondConv2d.from_conv(conv, num_experts=int(num_experts), noise=float(noise))
        layer.train(conv.training)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer)
        swapped[name] = layer
    return swapped
