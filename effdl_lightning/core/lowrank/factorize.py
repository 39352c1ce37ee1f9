"""One layer → two thin layers: truncated SVD, Jaderberg et al.'s scheme 2, Zhang et al.'s channel decomposition.

Every factorization returns a plain ``nn.Sequential`` of two standard layers (``nn.Linear`` or ``nn.Conv2d``), so
that pruning, quantization and the MAC counter see ordinary layers. Two shapes of factors exist:

* **channel** (methods ``svd``, ``zhang``, ``zhang_asymmetric``): ``Linear(in, r, bias=False) → Linear(r, out)``, or
  ``Conv2d(C, r, k×k, original stride/padding/dilation, bias=False) → Conv2d(r, N, 1×1)``. The weight ``W`` read as
  the matrix ``[N, C·k·k]`` becomes ``B·A`` with ``A`` ``[r, C·k·k]`` and ``B`` ``[N, r]``.
* **spatial** (methods ``jaderberg``, ``jaderberg_data``; convs only): Jaderberg, Vedaldi & Zisserman 2014
  (arXiv 1405.3866), scheme 2: ``r`` vertical ``kh×1`` filters, then ``N`` horizontal ``1×kw`` filters,
  ``W[n, c, a, b] ≈ Σ_r H[n, r, b] · V[r, c, a]``. The vertical conv takes the rows' stride, padding and dilation,
  the horizontal one the columns' (exact at full rank for any stride, padding, dilation and padding mode).

Fits:

* ``svd``: truncated SVD of ``W`` ``[N, C·k·k]`` (``[out, in]`` for a linear), ``A = √S_r V_rᵀ``, ``B = U_r √S_r``:
  the best rank-``r`` approximation of the weights (Eckart-Young).
* ``jaderberg``: filter reconstruction ``min ‖W − Ŵ‖_F`` solved in closed form by the SVD of ``W`` rearranged as the
  ``[C·kh, N·kw]`` matrix ``M[(c, a), (n, b)] = W[n, c, a, b]`` (the exact solution of Tai et al., arXiv 1511.06067),
  ``V = (U_r √S_r)ᵀ``, ``H = √S_r V_rᵀ``.
* ``jaderberg_data``: data reconstruction ``min Σ ‖conv_W(x) − conv_Ŵ(x)‖²`` over sampled inputs ``x`` of the layer,
  started from the filter reconstruction and refined by L-BFGS (the paper optimizes the same objective by
  gradient descent); the better of start and end is kept.
* ``zhang``: Zhang, Zou, He & Sun 2015 (arXiv 1505.06798), linear case: the responses ``y = Wx + b`` lie near a
  rank-``r`` subspace. With ``P`` the top-``r`` eigenvectors of the responses' covariance, ``M = PPᵀ`` and
  ``y ≈ M y + b′`` with ``b′ = ȳ − Mȳ``; the layer becomes ``r`` filters ``PᵀW`` then a 1×1 layer ``P`` with
  bias ``Mb + ȳ − Mȳ``.
* ``zhang_asymmetric``: the paper's asymmetric reconstruction ``min_M Σ ‖(y − ȳ) − M(ŷ − ȳ̂)‖²``, ``rank M ≤ r``,
  with ``y`` the responses of the original network and ``ŷ = Wx̂ + b`` those computed from the inputs ``x̂`` of the
  already approximated network. Solved by reduced-rank regression (Izenman 1975) instead of the paper's GSVD:
  ``M_ls = C_yŷ C_ŷŷ⁺``, ``P`` the top-``r`` eigenvectors of ``M_ls C_ŷŷ M_lsᵀ``, ``M = P Q`` with ``Q = PᵀM_ls``;
  filters ``QW``, 1×1 layer ``P``, bias ``PQ(b − ȳ̂) + ȳ``. It is the exact minimizer of the unweighted objective.

Every fit reproduces the layer exactly at full rank (``max_rank``). :func:`layer_spec` describes a factorized layer as
plain data (the compression record) and :func:`build_factors` rebuilds its empty factors from that description.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CHANNEL_METHODS",
    "CONV_METHODS",
    "LINEAR_METHODS",
    "METHODS",
    "SPATIAL_METHODS",
    "apply_low_rank_entry",
    "build_factors",
    "factorize_jaderberg",
    "factorize_jaderberg_data",
    "factorize_svd",
    "factorize_zhang",
    "factorize_zhang_asymmetric",
    "layer_spec",
    "matrix_to_weight",
    "max_rank",
    "relative_error",
    "weight_matrix",
]

#: methods whose factors are ``r`` filters of the original kernel, then a 1×1 layer
CHANNEL_METHODS = ("svd", "zhang", "zhang_asymmetric")
#: methods whose factors are ``r`` vertical ``kh×1`` filters, then ``N`` horizontal ``1×kw`` filters
SPATIAL_METHODS = ("jaderberg", "jaderberg_data")
#: the methods for ``nn.Linear`` / ``nn.Conv2d`` layers
LINEAR_METHODS = CHANNEL_METHODS
CONV_METHODS = ("svd", "jaderberg", "jaderberg_data", "zhang", "zhang_asymmetric")
METHODS = CONV_METHODS

Layer = nn.Linear | nn.Conv2d


def _check(layer: nn.Module, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown low-rank method {method!r}; allowed: {METHODS}")
    if type(layer) is nn.Linear:
        if method not in LINEAR_METHODS:
            raise ValueError(f"method {method!r} applies to convs; for nn.Linear use one of {LINEAR_METHODS}")
        return
    if type(layer) is not nn.Conv2d:
        raise ValueError(
            f"low-rank factorization takes exactly nn.Linear or nn.Conv2d, got {type(layer).__name__}"
        )
    if layer.groups != 1:
        raise ValueError(
            f"a grouped conv (groups={layer.groups}) cannot be factorized: the methods need groups=1"
        )


def _weight(layer: nn.Module) -> Tensor:
    return cast(Tensor, layer.weight)


def _bias(layer: nn.Module) -> Tensor | None:
    return cast("Tensor | None", layer.bias)


# --- the weight as a matrix --------------------------------------------------------------------------------
def weight_matrix(layer: nn.Module, method: str) -> Tensor:
    """The matrix whose rank the method truncates: ``[N, C·kh·kw]`` (channel methods) or ``[C·kh, N·kw]`` (spatial)."""
    _check(layer, method)
    w = _weight(layer)
    if method in SPATIAL_METHODS:
        n, c, kh, kw = w.shape
        return w.permute(1, 2, 0, 3).reshape(c * kh, n * kw)
    return w.reshape(w.shape[0], -1)


def matrix_to_weight(matrix: Tensor, layer: nn.Module, method: str) -> Tensor:
    """Inverse of :func:`weight_matrix`: ``matrix`` back in the shape of ``layer.weight``."""
    shape = _weight(layer).shape
    if method in SPATIAL_METHODS:
        n, c, kh, kw = shape
        return matrix.reshape(c, kh, n, kw).permute(2, 0, 1, 3).reshape(shape)
    return matrix.reshape(shape)


def max_rank(layer: nn.Module, method: str) -> int:
    """The rank at which the factorization is exact: the smaller side of :func:`weight_matrix`."""
    _check(layer, method)
    w = _weight(layer)
    if method in SPATIAL_METHODS:
        n, c, kh, kw = w.shape
        return min(c * kh, n * kw)
    return min(int(w.shape[0]), w[0].numel())


# --- structure as plain data ---------------------------------------------------------------------------------
def _pair(value: Any) -> Any:
    return value if isinstance(value, str) else [int(v) for v in value]


def layer_spec(layer: nn.Module, method: str, rank: int) -> dict[str, Any]:
    """Plain data that rebuilds the factors of ``layer`` (one layer of a ``low_rank`` record entry)."""
    _check(layer, method)
    if not 1 <= rank <= max_rank(layer, method):
        raise ValueError(f"rank must be in [1, {max_rank(layer, method)}] for this layer, got {rank}")
    spec: dict[str, Any] = {
        "method": method,
        "rank": int(rank),
        "type": type(layer).__name__,
        "bias": layer.bias is not None,
        # Zhang's 1×1 layer carries the mean correction b′ even when the layer had no bias
        "factor_bias": layer.bias is not None or method.startswith("zhang"),
    }
    if isinstance(layer, nn.Linear):
        spec.update({"in": layer.in_features, "out": layer.out_features})
    else:
        spec.update(
            {
                "in": layer.in_channels,
                "out": layer.out_channels,
                "kernel_size": _pair(layer.kernel_size),
                "stride": _pair(layer.stride),
                "padding": _pair(layer.padding),
                "dilation": _pair(layer.dilation),
                "padding_mode": layer.padding_mode,
            }
        )
    return spec


def build_factors(
    spec: Mapping[str, Any], device: torch.device | None = None, dtype: torch.dtype | None = None
) -> nn.Sequential:
    """Two fresh layers with the structure ``spec`` describes (weights to be loaded or written)."""
    r, bias = int(spec["rank"]), bool(spec["factor_bias"])
    kw: dict[str, Any] = {"device": device, "dtype": dtype}
    if spec["type"] == "Linear":
        return nn.Sequential(
            nn.Linear(spec["in"], r, bias=False, **kw), nn.Linear(r, spec["out"], bias=bias, **kw)
        )
    kh, kwid = spec["kernel_size"]
    sh, sw = spec["stride"]
    dh, dw = spec["dilation"]
    padding, mode = spec["padding"], spec["padding_mode"]
    if spec["method"] in SPATIAL_METHODS:
        pad_v = padding if isinstance(padding, str) else (padding[0], 0)
        pad_h = padding if isinstance(padding, str) else (0, padding[1])
        vertical = nn.Conv2d(
            spec["in"], r, (kh, 1), (sh, 1), pad_v, (dh, 1), bias=False, padding_mode=mode, **kw
        )
        horizontal = nn.Conv2d(
            r, spec["out"], (1, kwid), (1, sw), pad_h, (1, dw), bias=bias, padding_mode=mode, **kw
        )
        return nn.Sequential(vertical, horizontal)
    pad = padding if isinstance(padding, str) else tuple(padding)
    first = nn.Conv2d(spec["in"], r, (kh, kwid), (sh, sw), pad, (dh, dw), bias=False, padding_mode=mode, **kw)
    return nn.Sequential(first, nn.Conv2d(r, spec["out"], 1, bias=bias, **kw))


def _empty(layer: Layer, method: str, rank: int) -> nn.Sequential:
    weight = _weight(layer)
    return build_factors(layer_spec(layer, method, rank), weight.device, weight.dtype)


def _write(factors: nn.Sequential, first: Tensor, second: Tensor, bias: Tensor | None) -> nn.Sequential:
    with torch.no_grad():
        a, b = _weight(factors[0]), _weight(factors[1])
        a.copy_(first.reshape(a.shape))
        b.copy_(second.reshape(b.shape))
        b_bias = _bias(factors[1])
        if b_bias is not None:
            b_bias.copy_(bias if bias is not None else torch.zeros_like(b_bias))
    return factors


def _work(t: Tensor) -> Tensor:
    return t.detach().to(torch.float32 if t.device.type == "mps" else torch.float64)


# --- weight-only fits ------------------------------------------------------------------------------------------
def factorize_svd(layer: Layer, rank: int) -> nn.Sequential:
    """Truncated SVD ``W ≈ U_r S_r V_rᵀ`` → ``(√S_r V_rᵀ) x`` then ``(U_r √S_r) · + b`` (linear or channel conv)."""
    factors = _empty(layer, "svd", rank)
    u, s, vh = torch.linalg.svd(_work(weight_matrix(layer, "svd")), full_matrices=False)
    root = s[:rank].sqrt()
    bias = layer.bias.detach() if layer.bias is not None else None
    return _write(factors, root[:, None] * vh[:rank], u[:, :rank] * root, bias)


def factorize_jaderberg(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    """Jaderberg et al. (arXiv 1405.3866) scheme 2 by filter reconstruction, closed form (see the module docstring)."""
    factors = _empty(conv, "jaderberg", rank)
    n, c, kh, kw = conv.weight.shape
    u, s, vh = torch.linalg.svd(_work(weight_matrix(conv, "jaderberg")), full_matrices=False)
    root = s[:rank].sqrt()
    vertical = (u[:, :rank] * root).T.reshape(rank, c, kh, 1)  # V[r, c, a]
    horizontal = (root[:, None] * vh[:rank]).reshape(rank, n, kw).permute(1, 0, 2)  # H[n, r, b]
    bias = conv.bias.detach() if conv.bias is not None else None
    return _write(factors, vertical, horizontal, bias)


def factorize_jaderberg_data(
    conv: nn.Conv2d, rank: int, inputs: Sequence[Tensor], steps: int = 25
) -> nn.Sequential:
    """Jaderberg scheme 2 by data reconstruction: ``min Σ_x ‖conv(x) − factors(x)‖²`` over the layer's inputs ``x``.

    Starts from :func:`factorize_jaderberg` and runs ``steps`` L-BFGS iterations (strong Wolfe line search) on the
    mean squared error over all ``inputs`` (each ``[B, C, H, W]``); keeps the start if the end is not better.
    """
    factors = factorize_jaderberg(conv, rank)
    if steps <= 0 or not inputs:
        return factors
    with torch.no_grad():
        targets = [conv(x) for x in inputs]
        scale = sum(float(t.pow(2).sum()) for t in targets) or 1.0
    params = [p for p in factors.parameters()]

    def loss_fn() -> Tensor:
        return sum((factors(x) - t).pow(2).sum() for x, t in zip(inputs, targets, strict=True)) / scale  # type: ignore[return-value]

    with torch.enable_grad():
        start = [p.detach().clone() for p in params]
        before = float(loss_fn().detach())
        optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss

        optimizer.step(closure)  # type: ignore[arg-type]
        after = float(loss_fn().detach())
    with torch.no_grad():
        if not after < before:
            for p, s in zip(params, start, strict=True):
                p.copy_(s)
        for p in params:
            p.grad = None
    return factors


# --- response-based fits (Zhang et al.) --------------------------------------------------------------------------
def _top_eigenvectors(matrix: Tensor, rank: int) -> Tensor:
    _, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return vectors.flip(1)[:, :rank]  # eigh sorts ascending


def _channel_write(
    layer: Layer, rank: int, method: str, first: Tensor, second: Tensor, bias: Tensor
) -> nn.Sequential:
    factors = _empty(layer, method, rank)
    w = _work(weight_matrix(layer, "svd"))
    return _write(factors, first @ w, second, bias)


def factorize_zhang(layer: Layer, rank: int, mean: Tensor, covariance: Tensor) -> nn.Sequential:
    """Zhang et al. (arXiv 1505.06798), linear: ``y ≈ PPᵀy + ȳ − PPᵀȳ`` with ``P`` the top-``r`` response PCs.

    Args:
        layer: the layer (its responses are ``[*, N]`` or ``[B, N, H, W]``).
        rank: ``d′``, the number of principal directions kept.
        mean: ``ȳ``, the mean response ``[N]``.
        covariance: the responses' covariance ``[N, N]`` (e.g. from :class:`ResponseStatistics`).
    """
    _check(layer, "zhang")
    mean, cov = _work(mean), _work(covariance)
    p = _top_eigenvectors(cov, rank)  # [N, r]
    b = _work(layer.bias) if layer.bias is not None else torch.zeros_like(mean)
    m = p @ p.T
    return _channel_write(layer, rank, "zhang", p.T, p, m @ b + mean - m @ mean)


def factorize_zhang_asymmetric(
    layer: Layer,
    rank: int,
    mean: Tensor,
    mean_approx: Tensor,
    cross: Tensor,
    covariance_approx: Tensor,
) -> nn.Sequential:
    """Zhang et al.'s asymmetric reconstruction ``min_M Σ‖(y − ȳ) − M(ŷ − ȳ̂)‖²``, ``rank M ≤ r``, closed form.

    Args:
        layer: the layer with its original weights (``ŷ = Wx̂ + b``).
        rank: ``d′``.
        mean: ``ȳ``, the mean response of the original network.
        mean_approx: ``ȳ̂``, the mean response on the approximated network's inputs.
        cross: ``C_yŷ = E[(y − ȳ)(ŷ − ȳ̂)ᵀ]`` ``[N, N]``.
        covariance_approx: ``C_ŷŷ`` ``[N, N]``.
    """
    _check(layer, "zhang_asymmetric")
    mean, mean_hat, c_yh, c_hh = (_work(t) for t in (mean, mean_approx, cross, covariance_approx))
    c_hh = (c_hh + c_hh.T) / 2
    scale = float(c_hh.diagonal().abs().max()) or 1.0
    m_ls = c_yh @ torch.linalg.pinv(c_hh, hermitian=True, atol=1e-12 * scale)
    p = _top_eigenvectors(m_ls @ c_hh @ m_ls.T, rank)  # [N, r]
    q = p.T @ m_ls  # [r, N]
    b = _work(layer.bias) if layer.bias is not None else torch.zeros_like(mean)
    return _channel_write(layer, rank, "zhang_asymmetric", q, p, p @ (q @ (b - mean_hat)) + mean)


# --- the record -------------------------------------------------------------------------------------------------
def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def apply_low_rank_entry(model: nn.Module, entry: Mapping[str, Any]) -> None:
    """Replay a ``kind="low_rank"`` record entry: replace each named layer by empty factors of the recorded shape."""
    for name, spec in entry["layers"].items():
        try:
            layer = model.get_submodule(name)
        except AttributeError as err:
            raise ValueError(f"the record factorizes {name!r}, which this model does not have") from err
        sizes = (
            (layer.in_features, layer.out_features)
            if isinstance(layer, nn.Linear)
            else (getattr(layer, "in_channels", None), getattr(layer, "out_channels", None))
        )
        if type(layer).__name__ != spec["type"] or sizes != (spec["in"], spec["out"]):
            raise ValueError(
                f"the record factorizes {name!r} as a {spec['type']} {spec['in']}->{spec['out']}, but this model's "
                f"layer is a {type(layer).__name__} {sizes[0]}->{sizes[1]}"
            )
        weight = _weight(layer)
        _set_module(model, name, build_factors(spec, weight.device, weight.dtype))


def relative_error(layer: nn.Module, factors: nn.Module, inputs: Sequence[Tensor]) -> float:
    """``‖layer(x) − factors(x)‖ / ‖layer(x)‖`` over ``inputs`` (a diagnostic used by tests and reports)."""
    num = den = 0.0
    with torch.no_grad():
        for x in inputs:
            y = layer(x)
            num += float(F.mse_loss(factors(x), y, reduction="sum"))
            den += float(y.pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else num**0.5
