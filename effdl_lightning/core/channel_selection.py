"""Channel pruning by LASSO channel selection and least-squares reconstruction (He et al., arXiv 1707.06168).

He et al. prune a network layer by layer without retraining. For one layer (the *consumer* of a set of
channels) with sampled input patches ``X`` (``N`` samples × ``c`` channels × ``k`` columns per channel) and
target responses ``Y`` (``N × n``) taken from the *original* network, the response is a sum of per-channel
contributions ``Z_c = X_c W_cᵀ``. Two steps:

1. **Channel selection** — LASSO on one coefficient per channel:
   ``min_β ½‖Y − Σ_c β_c Z_c‖² + λ‖β‖₁``; ``λ`` is raised (bisection) until at most ``c′`` coefficients are
   nonzero, and the ``c′`` channels with the largest ``|β|`` are kept.
2. **Reconstruction** — least squares for the kept channels' weights, ``W′ = pinv(X′) Y`` (with an
   unpenalized intercept when the layer has a bias).

:func:`channel_pruning_` applies this to a whole model in forward order: inputs ``X`` are sampled from the
*already pruned* network (so a layer corrects the error of the layers pruned before it), targets ``Y`` from
a frozen copy of the original; the channels are removed with :class:`~effdl_lightning.core.surgery.ChannelGraph`
(producer filters, batch-norm entries, consumer input columns) and the least-squares weights are written into
the consumer. The returned :class:`~effdl_lightning.core.surgery.ChannelCut` list is the replayable record.

The controls of the paper's comparison are selection by the producer's filter L1 norm (Li et al.,
arXiv 1608.08710) and random selection, each with or without the least-squares step.

Implementation notes: the LASSO runs on the ``c × c`` Gram matrix of the contributions (accumulated in
float64 over chunks of samples, so memory is bounded), solved by FISTA with adaptive restart and diagonal
preconditioning in numpy; least squares is ``torch.linalg.pinv`` in float64 (float32 on MPS).
"""

from __future__ import annotations

import copy
import fnmatch
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effdl_lightning.core.surgery import ChannelCut, ChannelGraph, ChannelGroup

__all__ = [
    "METHODS",
    "ChannelPruningResult",
    "LayerPruning",
    "channel_pruning_",
    "lasso_channel_selection",
    "relative_output_errors",
    "select_channels",
]

#: channel selection methods: He et al.'s LASSO, the producer's filter L1 norm (Li et al.), random
METHODS = ("lasso", "l1", "random")


# --- one layer -------------------------------------------------------------------------------------------
def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _as_patches(x: Tensor, weight: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``x`` as ``[N, c, k]``, ``weight`` as ``[n, c, k]``, ``y`` as ``[N, n]``; shapes checked."""
    if x.dim() == 2:
        x = x.unsqueeze(-1)
    if x.dim() != 3:
        raise ValueError(f"x must be [N, c, k] (or [N, c]), got shape {tuple(x.shape)}")
    if weight.dim() < 2:
        raise ValueError(f"weight must be [n, c, ...], got shape {tuple(weight.shape)}")
    w = weight.reshape(weight.shape[0], weight.shape[1], -1)
    if w.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"weight {tuple(weight.shape)} does not match x {tuple(x.shape)}: need weight [n, c, k...] with "
            "the c channels and k columns per channel of x"
        )
    if y.dim() != 2 or y.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"y must be [N, n] = {[x.shape[0], w.shape[0]]}, got shape {tuple(y.shape)}")
    return x, w, y


def _channel_gram(x: Tensor, w: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Gram matrix ``G_cd = ⟨Z_c, Z_d⟩`` and ``b_c = ⟨Z_c, Y⟩`` of the contributions ``Z_c = X_c W_cᵀ``.

    Either from the contributions themselves (``N·c²·n`` MACs, in chunks of samples) or from the patches'
    second moments, ``G_cd = Σ_kl (X_cᵀX_d)_kl (W_cᵀW_d)_kl`` (``N·(c·k)²`` MACs), whichever is cheaper.
    """
    n_samples, c, k = x.shape
    n = w.shape[0]
    if k > 1 and n > k * k and c * k <= 8192:
        flat = x.reshape(n_samples, c * k)
        wf = w.reshape(n, c * k)
        moments = flat.T @ flat  # [ck, ck]
        gram = (moments * (wf.T @ wf)).reshape(c, k, c, k).sum((1, 3))
        corr = ((flat.T @ y) * wf.T).reshape(c, k, n).sum((1, 2))
        return gram, corr
    gram = x.new_zeros(c, c)
    corr = x.new_zeros(c)
    rows = max(1, (1 << 22) // max(1, c * n))  # about 32 MiB of contributions at a time
    for start in range(0, n_samples, rows):
        z = torch.einsum("ick,ock->cio", x[start : start + rows], w).reshape(c, -1)
        gram += z @ z.T
        corr += z @ y[start : start + rows].reshape(-1)
    return gram, corr


def _fista(
    gram: np.ndarray,
    corr: np.ndarray,
    thresholds: np.ndarray,
    start: np.ndarray,
    lipschitz: float,
    max_iter: int,
    tol: float,
) -> np.ndarray:
    """``argmin ½γᵀGγ − bᵀγ + Σ_j t_j|γ_j|`` by FISTA with adaptive (gradient) restart."""
    g = start.copy()
    z = g.copy()
    t = 1.0
    step = 1.0 / lipschitz
    for it in range(max_iter):
        u = z - step * (gram @ z - corr)
        new = np.sign(u) * np.maximum(np.abs(u) - step * thresholds, 0.0)
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        delta = new - g
        if float((z - new) @ delta) > 0.0:  # the momentum points uphill: restart (O'Donoghue & Candès)
            t_next = 1.0
            z = new
        else:
            z = new + ((t - 1.0) / t_next) * delta
        g, t = new, t_next
        if it % 10 == 9 and np.abs(delta).max() <= tol * max(np.abs(g).max(), 1e-30):
            break
    return g


def _lasso_select(
    gram: Tensor,
    corr: Tensor,
    free: list[int],
    fixed: list[int],
    n_select: int,
    max_iter: int,
    tol: float,
    bisections: int,
) -> tuple[list[int], dict[str, Any]]:
    """He et al.'s selection among ``free`` channels (the ``fixed`` ones have β = 1)."""
    g_all = gram.detach().double().cpu().numpy()
    b_all = corr.detach().double().cpu().numpy()
    g = g_all[np.ix_(free, free)]
    b = b_all[free] - (g_all[np.ix_(free, fixed)].sum(1) if fixed else 0.0)
    scale = float(np.abs(np.diag(g)).max()) or 1.0
    g, b = g / scale, b / scale
    d = np.sqrt(np.clip(np.diag(g), 0.0, None))
    live = d > 1e-12 * max(float(d.max()), 1e-300)  # a channel with no contribution is never selected
    d_safe = np.where(live, d, 1.0)
    gs = g / np.outer(d_safe, d_safe)
    bs = b / d_safe
    gs[~live, :] = 0.0
    gs[:, ~live] = 0.0
    bs[~live] = 0.0
    lipschitz = float(np.linalg.eigvalsh(gs).max()) if len(free) else 1.0
    lipschitz = max(lipschitz, 1e-12)
    lam_max = float(np.abs(b[live]).max()) if live.any() else 0.0
    infinite = np.full(len(free), np.inf)

    def solve(lam: float, start: np.ndarray) -> np.ndarray:
        thresholds = np.where(live, lam / d_safe, infinite)
        gamma = _fista(gs, bs, np.minimum(thresholds, 1e300), start, lipschitz, max_iter, tol)
        gamma[~live] = 0.0
        return gamma / d_safe  # back to β

    zeros = np.zeros(len(free))
    beta_hi, lam_hi = zeros, lam_max  # at lam_max every β is 0
    lam_lo = lam_max * 1e-9
    beta_lo = solve(lam_lo, np.ones(len(free)) * d_safe)
    lam = lam_lo
    steps = 0
    if int((beta_lo != 0).sum()) <= n_select:
        beta_hi, lam_hi = beta_lo, lam_lo
    elif lam_max > 0:  # (lam_max == 0: no channel correlates with the target; the ranking falls back to b)
        last = beta_lo
        while steps < bisections:
            steps += 1
            lam = math.sqrt(lam_lo * lam_hi)
            beta = solve(lam, last * d_safe)
            last = beta
            nnz = int((beta != 0).sum())
            if nnz > n_select:
                lam_lo, beta_lo = lam, beta
            else:
                lam_hi, beta_hi = lam, beta
                if nnz == n_select:
                    break
    # keep the n_select largest |β| at the smallest λ with ≤ n_select nonzeros; ties (zeros) by |β| at the
    # largest λ with more nonzeros, then by the correlation with the target
    order = np.lexsort((-np.abs(b), -np.abs(beta_lo), -np.abs(beta_hi)))
    chosen = sorted(free[i] for i in order[:n_select])
    beta_full = np.ones(len(corr))
    beta_full[free] = beta_hi
    info = {
        "lambda": lam_hi * scale,
        "nonzero": int((beta_hi != 0).sum()),
        "bisections": steps,
        "beta": beta_full.tolist(),
    }
    return chosen, info


def _least_squares(x: Tensor, y: Tensor, intercept: bool) -> tuple[Tensor, Tensor | None]:
    """``W′ = pinv(X′) Y`` (and the intercept): returns ``[n, c′, k]`` and ``[n]`` or ``None``."""
    n_samples, c, k = x.shape
    flat = x.reshape(n_samples, c * k)
    if intercept:
        flat = torch.cat([flat, flat.new_ones(n_samples, 1)], 1)
    solution = torch.linalg.pinv(flat) @ y  # [c·k (+1), n]
    weight = solution[: c * k].T.reshape(y.shape[1], c, k)
    return weight, (solution[c * k] if intercept else None)


def _relative_error(x: Tensor, w: Tensor, y: Tensor, bias: Tensor | None, norm: Tensor) -> float:
    pred = x.reshape(x.shape[0], -1) @ w.reshape(w.shape[0], -1).T
    if bias is not None:
        pred = pred + bias
    residual = (y - pred).pow(2).sum()
    return float(residual / norm) if float(norm) > 0 else (0.0 if float(residual) == 0 else math.inf)


def select_channels(
    x: Tensor,
    weight: Tensor,
    y: Tensor,
    n_keep: int,
    bias: Tensor | None = None,
    *,
    method: str = "lasso",
    reconstruct: bool = True,
    importance: Tensor | Sequence[float] | None = None,
    fixed: Iterable[int] = (),
    generator: torch.Generator | None = None,
    max_iter: int = 3000,
    tol: float = 1e-6,
    bisections: int = 60,
) -> tuple[list[int], Tensor, Tensor | None, dict[str, Any]]:
    """Choose ``n_keep`` input channels of one layer and (optionally) refit its weights by least squares.

    The layer computes ``y ≈ Σ_c x[:, c] @ weight[:, c]ᵀ + bias``.

    Args:
        x: sampled inputs per input channel, ``[N, c, k]``: for a conv the unfolded patches
            (``F.unfold`` reshaped to ``[N, c, kh·kw]``), for a linear layer ``[N, c]`` or ``[N, c, k]`` when
            a channel feeds ``k`` columns (e.g. flatten of a ``k``-pixel map).
        weight: the layer's weights, ``[n, c, k]`` or any ``[n, c, ...]`` with ``k`` entries per channel
            (a conv's ``[n, c, kh, kw]``).
        y: target responses ``[N, n]`` (from the original network, bias included).
        n_keep: channels to keep (the ``fixed`` ones included), ``1 ≤ n_keep ≤ c``.
        bias: the layer's bias ``[n]`` or ``None``. With a bias the least-squares step fits it too (and the
            LASSO works on centered data); without one the refit has no intercept.
        method: ``"lasso"`` (He et al.), ``"l1"`` (largest ``importance``, e.g. the producer's filter L1
            norm as in Li et al.) or ``"random"``.
        reconstruct: refit the kept channels' weights (and the bias) by least squares; otherwise the kept
            channels keep their weights and the bias is unchanged.
        importance: per-channel scores for ``"l1"``.
        fixed: channels that are always kept (β = 1 in the LASSO), e.g. channels of another layer.
        generator: random source of ``"random"``.
        max_iter, tol, bisections: FISTA iterations and relative tolerance per λ, and bisection steps on λ.

    Returns:
        ``(kept, new_weight, new_bias, info)``: ``kept`` the kept channel indices in ascending order;
        ``new_weight`` ``[n, len(kept), ...]`` in the layout of ``weight`` and its dtype/device;
        ``new_bias`` (``None`` iff ``bias`` is ``None``); ``info`` with the relative reconstruction errors
        ``‖Y − Ŷ‖²/‖Y‖²`` on the samples — ``error_before`` (all channels, original weights),
        ``error_selected`` (kept channels, original weights), ``error_after`` (the returned weights) — and
        for ``"lasso"`` the final ``lambda``, ``nonzero`` count, ``bisections`` and ``beta``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    x3, w3, y2 = _as_patches(x, weight, y)
    n_samples, c = x3.shape[:2]
    fixed_set = sorted({int(i) for i in fixed})
    if any(not 0 <= i < c for i in fixed_set):
        raise ValueError(f"fixed channels must be in [0, {c}), got {fixed_set}")
    if not max(1, len(fixed_set)) <= n_keep <= c:
        raise ValueError(
            f"n_keep must be in [{max(1, len(fixed_set))}, {c}] (fixed channels included), got {n_keep}"
        )
    if bias is not None and bias.shape != (w3.shape[0],):
        raise ValueError(f"bias must be [{w3.shape[0]}], got shape {tuple(bias.shape)}")
    if method == "l1" and importance is None:
        raise ValueError("method 'l1' needs `importance` (per-channel scores, e.g. filter L1 norms)")
    dtype = _work_dtype(x3.device)
    xd, wd, yd = x3.to(dtype), w3.to(x3.device, dtype), y2.to(x3.device, dtype)
    bd = None if bias is None else bias.detach().to(x3.device, dtype)
    norm = yd.pow(2).sum()
    intercept = bias is not None and reconstruct
    free = [i for i in range(c) if i not in fixed_set]
    n_select = n_keep - len(fixed_set)
    info: dict[str, Any] = {"samples": n_samples, "method": method}
    if n_select >= len(free):
        chosen = free
    elif method == "random":
        perm = torch.randperm(len(free), generator=generator).tolist()
        chosen = sorted(free[i] for i in perm[:n_select])
    elif method == "l1":
        scores = torch.as_tensor(importance, dtype=torch.float64).reshape(-1).cpu()
        if scores.numel() != c:
            raise ValueError(f"importance must hold one score per channel ({c}), got {scores.numel()}")
        order = torch.argsort(-scores[free], stable=True).tolist()
        chosen = sorted(free[i] for i in order[:n_select])
    else:
        if intercept:  # an unpenalized intercept: the LASSO on centered data
            xl, yl = xd - xd.mean(0), yd - yd.mean(0)
        else:
            xl, yl = xd, (yd if bd is None else yd - bd)
        gram, corr = _channel_gram(xl, wd, yl)
        chosen, lasso_info = _lasso_select(gram, corr, free, fixed_set, n_select, max_iter, tol, bisections)
        info.update(lasso_info)
    kept = sorted([*fixed_set, *chosen])
    idx = torch.tensor(kept, dtype=torch.long, device=x3.device)
    xk = xd.index_select(1, idx)
    wk = wd.index_select(1, idx)
    info["error_before"] = _relative_error(xd, wd, yd, bd, norm)
    info["error_selected"] = _relative_error(xk, wk, yd, bd, norm)
    new_w, new_b = wk, bd
    if reconstruct:
        new_w, fitted = _least_squares(xk, yd, intercept)
        new_b = fitted if intercept else bd
    info["error_after"] = _relative_error(xk, new_w, yd, new_b, norm)
    out_w = new_w.reshape(weight.shape[0], len(kept), *weight.shape[2:]).to(weight.device, weight.dtype)
    out_b = None if bias is None or new_b is None else new_b.to(bias.device, bias.dtype)
    return kept, out_w, out_b, info


def lasso_channel_selection(
    x: Tensor,
    weight: Tensor,
    y: Tensor,
    n_keep: int,
    bias: Tensor | None = None,
    *,
    reconstruct: bool = True,
    fixed: Iterable[int] = (),
    max_iter: int = 3000,
    tol: float = 1e-6,
    bisections: int = 60,
) -> tuple[list[int], Tensor, Tensor | None, dict[str, Any]]:
    """He et al.'s two steps for one layer: LASSO channel selection, then least squares (see :func:`select_channels`)."""
    return select_channels(
        x,
        weight,
        y,
        n_keep,
        bias,
        method="lasso",
        reconstruct=reconstruct,
        fixed=fixed,
        max_iter=max_iter,
        tol=tol,
        bisections=bisections,
    )


# --- the whole model ---------------------------------------------------------------------------------------
@dataclass
class LayerPruning:
    """One pruned layer: the channel group, its consumer, and the reconstruction errors on the samples.

    Errors are ``‖Y − Ŷ‖² / ‖Y‖²`` of the consumer's output against the original network's, on the sampled
    positions: ``error_before`` with the consumer as it was (the error carried in from the layers pruned
    before), ``error_selected`` with the kept channels and their old weights, ``error_after`` after the cut
    with the final weights (least squares when ``reconstruct``).
    """

    group: str
    producer: str
    consumer: str
    channels_before: int
    channels_after: int
    kept: list[int]
    samples: int
    error_before: float
    error_selected: float
    error_after: float
    lam: float | None = None
    seconds: float = 0.0


@dataclass
class ChannelPruningResult:
    """What :func:`channel_pruning_` did: per-layer records, the replayable cuts in order, skipped groups."""

    method: str
    ratio: float
    reconstruct: bool
    layers: list[LayerPruning] = field(default_factory=list)
    cuts: list[ChannelCut] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def mean_error(self) -> float:
        """Mean over pruned layers of ``error_after`` (``nan`` when no layer was pruned)."""
        return sum(r.error_after for r in self.layers) / len(self.layers) if self.layers else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "ratio": self.ratio,
            "reconstruct": self.reconstruct,
            "layers": [asdict(r) for r in self.layers],
            "cuts": [c.to_dict() for c in self.cuts],
            "skipped": dict(self.skipped),
        }


def _batches(batches: Iterable[Any], device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    out = []
    for batch in batches:
        x = batch
        if isinstance(batch, Mapping):
            x = next(iter(batch.values()))
        elif isinstance(batch, (tuple, list)):
            x = batch[0]
        if not isinstance(x, Tensor):
            raise ValueError(f"a batch must be a tensor or a (tensor, ...) tuple, got {type(x).__name__}")
        out.append(x.to(device, dtype) if x.is_floating_point() else x.to(device))
    if not out:
        raise ValueError("batches is empty: channel pruning needs input samples")
    return out


def _matches(patterns: Iterable[str], names: Iterable[str]) -> bool:
    names = list(names)
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def _columns(module: nn.Module, inp: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, the layer's input columns ``[B, D, L]`` and its outputs ``[B, n, L]`` at the L positions."""
    if isinstance(module, nn.Conv2d):
        pad = cast(Sequence[int], module._reversed_padding_repeated_twice)
        if any(pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            inp = F.pad(inp, list(pad), mode=mode)
        cols = F.unfold(inp, module.kernel_size, dilation=module.dilation, stride=module.stride)
        outs = out.reshape(out.shape[0], out.shape[1], -1)
    else:
        cols = inp.reshape(inp.shape[0], -1, inp.shape[-1]).transpose(1, 2)
        outs = out.reshape(out.shape[0], -1, out.shape[-1]).transpose(1, 2)
    if cols.shape[2] != outs.shape[2]:
        raise RuntimeError(f"{cols.shape[2]} input positions for {outs.shape[2]} output positions")
    return cols, outs


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the sampled layer has run."""


def _run(model: nn.Module, batch: Tensor, stop: bool) -> None:
    try:
        model(batch)
    except _Stop:
        if not stop:
            raise


def _sample(
    model: nn.Module,
    original: nn.Module,
    name: str,
    batches: list[Tensor],
    per_image: int,
    generator: torch.Generator,
    calls: int,
) -> tuple[Tensor, Tensor]:
    """Inputs of layer ``name`` in ``model`` and its outputs in ``original`` at the same random positions.

    A layer called once per forward (``calls == 1``) ends the forward passes there.
    """
    current = dict(model.named_modules())[name]
    reference = dict(original.named_modules())[name]
    got: list[tuple[Tensor, Tensor]] = []
    want: list[Tensor] = []
    stop = calls == 1

    def grab_input(module: nn.Module, args: Any, output: Any) -> None:
        got.append((args[0].detach(), output.detach()))
        if stop:
            raise _Stop

    def grab_output(module: nn.Module, args: Any, output: Any) -> None:
        want.append(output.detach())
        if stop:
            raise _Stop

    h1 = current.register_forward_hook(grab_input)
    h2 = reference.register_forward_hook(grab_output)
    xs, ys = [], []
    try:
        with torch.no_grad():
            for batch in batches:
                got.clear()
                want.clear()
                _run(model, batch, stop)
                _run(original, batch, stop)
                if len(got) != len(want):
                    raise RuntimeError(
                        f"layer {name!r} ran {len(got)} times in the model, {len(want)} in the original"
                    )
                for (inp, _), target in zip(got, want, strict=True):
                    cols, outs = _columns(current, inp, target)
                    b, d, positions = cols.shape
                    s = min(per_image, positions)
                    if s == positions:
                        pick = torch.arange(positions).expand(b, s)
                    else:
                        pick = torch.rand(b, positions, generator=generator).argsort(1)[:, :s]
                    pick = pick.to(cols.device)
                    xs.append(
                        cols.gather(2, pick[:, None, :].expand(b, d, s)).permute(0, 2, 1).reshape(b * s, d)
                    )
                    n = outs.shape[1]
                    ys.append(
                        outs.gather(2, pick[:, None, :].expand(b, n, s)).permute(0, 2, 1).reshape(b * s, n)
                    )
    finally:
        h1.remove()
        h2.remove()
    return torch.cat(xs), torch.cat(ys)


def _units(graph: ChannelGraph, consumer: str, module: nn.Module) -> tuple[list[int], list[list[int]], int]:
    """The consumer's input channels as units: (atom root, its input positions) and columns per position."""
    roots = graph.ids.roots(graph.slots[(consumer, "in")])
    per_position = math.prod(cast(nn.Conv2d, module).kernel_size) if isinstance(module, nn.Conv2d) else 1
    positions: dict[int, list[int]] = {}
    for p, r in enumerate(roots):
        positions.setdefault(r, []).append(p)
    return list(positions), list(positions.values()), per_position


def _eligible(group: ChannelGroup, graph: ChannelGraph) -> str | None:
    if group.reason is not None:
        return f"no removable channel: {group.reason}"
    if len(group.producers) != 1:
        return f"{len(group.producers)} coupled producers {group.producers} (He et al. prune one producer at a time)"
    if len(group.consumers) != 1:
        return f"{len(group.consumers)} consumers {group.consumers} (needs exactly one conv/linear consumer)"
    module = graph.modules[group.consumers[0]]
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"consumer {group.consumers[0]!r} is a grouped conv (groups={module.groups})"
    elif not isinstance(module, nn.Linear):
        return f"consumer {group.consumers[0]!r} is a {type(module).__name__} (needs Conv2d or Linear)"
    return None


def channel_pruning_(
    model: nn.Module,
    batches: Iterable[Any],
    ratio: float,
    method: str = "lasso",
    reconstruct: bool = True,
    *,
    samples_per_image: int = 10,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    generator: torch.Generator | None = None,
    max_iter: int = 3000,
    tol: float = 1e-6,
) -> ChannelPruningResult:
    """He et al.'s channel pruning of ``model`` in place, layer by layer in forward order, without training.

    Every channel group with exactly one producer and exactly one consumer that is a ``Conv2d`` with
    ``groups == 1`` or a ``Linear`` is pruned to ``ceil((1 − ratio) · channels)`` channels (frozen channels
    count among the kept); other groups are skipped with the reason in ``result.skipped``. Per group: sample
    the consumer's inputs from the model as pruned so far and its outputs from a frozen copy of the original
    (``samples_per_image`` random output positions per image, the same positions for both; every position of
    a linear layer), select the channels (:func:`select_channels`), cut them with
    :meth:`ChannelGraph.cut` (the graph is rebuilt on the current model before each cut), and write the
    least-squares weights into the consumer. The model is evaluated in eval mode (batch norm with its running
    statistics); its training flag is restored.

    Args:
        model: any model :class:`ChannelGraph` traces; changed in place.
        batches: input batches (tensors, or tuples/lists/dicts whose first item is the input); all are kept
            in memory and run once per pruned layer, so a few hundred images are enough (He et al.: 10
            positions × 5,000 images for VGG-16).
        ratio: fraction of each group's channels to remove, in ``[0, 1)``.
        method: ``"lasso"``, ``"l1"`` (filter L1 norm of the producer, Li et al.) or ``"random"``.
        reconstruct: refit the consumer's kept weights by least squares (He et al.'s second step).
        samples_per_image: random output positions sampled per image for a conv consumer.
        include: glob patterns on a group's name, producer or consumer; only matching groups are pruned
            (``None``: all).
        exclude: glob patterns of groups to skip.
        generator: random source of the sampled positions and of ``"random"`` (default: seeded with 0).
        max_iter, tol: FISTA iterations and tolerance per λ of the LASSO.

    Returns:
        :class:`ChannelPruningResult`; ``result.cuts`` replayed in order with
        :func:`~effdl_lightning.core.surgery.apply_cut` on a freshly built model rebuild the architecture.
    """
    if not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if int(samples_per_image) < 1:
        raise ValueError(f"samples_per_image must be >= 1, got {samples_per_image!r}")
    include = None if include is None else list(include)
    exclude = list(exclude)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    # separate streams: the sampled positions do not depend on the method (same data for every method)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    positions_rng = torch.Generator().manual_seed(seed)
    selection_rng = torch.Generator().manual_seed(seed + 1)
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    inputs = _batches(batches, device, dtype)
    example = inputs[0][:1]
    result = ChannelPruningResult(method=method, ratio=float(ratio), reconstruct=reconstruct)
    was_training = model.training
    model.eval()
    original = copy.deepcopy(model).eval()
    for p in original.parameters():
        p.requires_grad_(False)
    try:
        names = [g.name for g in ChannelGraph(model, example).groups]
        for name in names:
            start = time.perf_counter()
            graph = ChannelGraph(model, example)
            group = next((g for g in graph.groups if g.name == name), None)
            if group is None:
                result.skipped[name] = "the group no longer exists after earlier cuts"
                continue
            members = [group.name, *group.producers, *group.consumers]
            if include is not None and not _matches(include, members):
                result.skipped[name] = f"not matched by include={include}"
                continue
            if _matches(exclude, members):
                result.skipped[name] = f"matched by exclude={exclude}"
                continue
            reason = _eligible(group, graph)
            if reason is not None:
                result.skipped[name] = reason
                continue
            size = group.size
            n_keep = max(math.ceil(round((1.0 - float(ratio)) * size, 9)), len(group.frozen), 1)
            if n_keep >= size:
                result.skipped[name] = (
                    f"nothing to remove: keeps {n_keep} of {size} channels at ratio {ratio}"
                )
                continue
            consumer = group.consumers[0]
            module = graph.modules[consumer]
            roots, positions, per_position = _units(graph, consumer, module)
            width = {len(p) for p in positions}
            atom_index = {a: i for i, a in enumerate(group.atoms)}
            if len(width) != 1:
                result.skipped[name] = (
                    f"consumer {consumer!r} reads its input channels a different number of times"
                )
                continue
            if set(group.atoms) - set(roots):
                result.skipped[name] = f"consumer {consumer!r} does not read every channel of the group"
                continue
            prunable = set(group.prunable)
            fixed = [u for u, r in enumerate(roots) if r not in atom_index or atom_index[r] not in prunable]
            n_remove = size - n_keep
            cols = torch.tensor(
                [[p * per_position + t for p in pos for t in range(per_position)] for pos in positions],
                dtype=torch.long,
            )
            calls = sum(1 for n in graph.gm.graph.nodes if n.op == "call_module" and n.target == consumer)
            x_flat, y = _sample(
                model, original, consumer, inputs, int(samples_per_image), positions_rng, calls
            )
            weight = cast(Tensor, module.weight).detach()
            w_flat = weight.reshape(weight.shape[0], -1)
            cols_dev = cols.to(x_flat.device)
            x = x_flat[:, cols_dev]  # [N, units, k]
            w = w_flat[:, cols_dev]  # [n, units, k]
            bias = cast(Tensor | None, module.bias)
            importance = None
            if method == "l1":
                scores = graph.importance(group, "l1")
                importance = [float(scores[atom_index[r]]) if r in atom_index else math.inf for r in roots]
            kept_units, new_w, new_b, info = select_channels(
                x,
                w,
                y,
                len(roots) - n_remove,
                None if bias is None else bias.detach(),
                method=method,
                reconstruct=reconstruct,
                importance=importance,
                fixed=fixed,
                generator=selection_rng,
                max_iter=max_iter,
                tol=tol,
            )
            kept_atoms = {atom_index[roots[u]] for u in kept_units if roots[u] in atom_index}
            remove = sorted(set(range(size)) - kept_atoms)
            cut = graph.cut({group.name: remove})
            result.cuts.append(cut)
            if reconstruct:
                _write_weights(module, cut, consumer, positions, kept_units, per_position, new_w, new_b)
            result.layers.append(
                LayerPruning(
                    group=group.name,
                    producer=group.producers[0],
                    consumer=consumer,
                    channels_before=size,
                    channels_after=size - len(remove),
                    kept=sorted(kept_atoms),
                    samples=int(info["samples"]),
                    error_before=float(info["error_before"]),
                    error_selected=float(info["error_selected"]),
                    error_after=float(info["error_after"]),
                    lam=info.get("lambda"),
                    seconds=time.perf_counter() - start,
                )
            )
    finally:
        model.train(was_training)
    return result


def _write_weights(
    module: nn.Module,
    cut: ChannelCut,
    consumer: str,
    positions: list[list[int]],
    kept_units: list[int],
    per_position: int,
    new_w: Tensor,
    new_b: Tensor | None,
) -> None:
    """Write ``new_w`` (``[n, kept units, k]``) into the cut consumer, whose inputs are the kept positions."""
    weight = cast(Tensor, module.weight)
    kept_positions = cut.modules.get(consumer, {}).get("in")
    if kept_positions is None:  # nothing of the consumer was cut (cannot happen when channels were removed)
        kept_positions = list(range(weight.shape[1]))
    new_index = {p: q for q, p in enumerate(kept_positions)}
    expected = sorted(p for u in kept_units for p in positions[u])
    if expected != sorted(kept_positions):
        raise RuntimeError(
            f"the cut kept input positions {kept_positions[:8]}... of {consumer!r}, the selection {expected[:8]}..."
        )
    flat = torch.empty(
        weight.shape[0], len(kept_positions) * per_position, dtype=new_w.dtype, device=new_w.device
    )
    columns = new_w.reshape(new_w.shape[0], new_w.shape[1], -1)
    for j, u in enumerate(kept_units):
        for r, p in enumerate(positions[u]):
            q = new_index[p]
            flat[:, q * per_position : (q + 1) * per_position] = columns[
                :, j, r * per_position : (r + 1) * per_position
            ]
    with torch.no_grad():
        weight.copy_(flat.reshape(weight.shape))
        bias = cast(Tensor | None, module.bias)
        if bias is not None and new_b is not None:
            bias.copy_(new_b)


def relative_output_errors(
    original: nn.Module,
    pruned: nn.Module,
    batches: Iterable[Any],
    layers: Iterable[str],
    cuts: Iterable[ChannelCut] = (),
) -> dict[str, float]:
    """Per layer name: ``‖Y − Ŷ‖² / ‖Y‖²`` of the layer's whole output in ``pruned`` against ``original``.

    Both models run in eval mode on the same batches (e.g. held-out images, unlike the errors of
    :class:`LayerPruning`, which are on the samples the weights were fitted to); training flags are restored.
    A layer whose own filters were removed later (its ``out`` role in ``cuts``, applied in order) is compared
    on the output channels it kept.
    """
    names = list(layers)
    kept_out: dict[str, list[int]] = {}
    for cut in cuts:
        for n, roles in cut.modules.items():
            if "out" in roles:
                before = kept_out.get(n)
                kept_out[n] = [before[i] for i in roles["out"]] if before is not None else list(roles["out"])
    channel_dim = {
        n: (-1 if isinstance(m, nn.Linear) else 1) for n, m in pruned.named_modules() if n in names
    }
    param = next(iter(original.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    inputs = _batches(batches, device, dtype)
    sums = {n: [0.0, 0.0] for n in names}
    outs: dict[tuple[int, str], list[Tensor]] = {}
    handles = []
    for which, net in enumerate((original, pruned)):
        modules = dict(net.named_modules())
        for n in names:
            store = outs.setdefault((which, n), [])
            handles.append(modules[n].register_forward_hook(lambda m, i, o, s=store: s.append(o.detach())))
    flags = original.training, pruned.training
    original.eval()
    pruned.eval()
    try:
        with torch.no_grad():
            for batch in inputs:
                for store in outs.values():
                    store.clear()
                original(batch)
                pruned(batch)
                for n in names:
                    for ref, got in zip(outs[(0, n)], outs[(1, n)], strict=True):
                        if n in kept_out:
                            index = torch.tensor(kept_out[n], dtype=torch.long, device=ref.device)
                            ref = ref.index_select(channel_dim[n] % ref.dim(), index)
                        ref64, got64 = ref.double(), got.double()
                        sums[n][0] += float((ref64 - got64).pow(2).sum())
                        sums[n][1] += float(ref64.pow(2).sum())
    finally:
        for h in handles:
            h.remove()
        original.train(flags[0])
        pruned.train(flags[1])
    return {n: (s[0] / s[1] if s[1] > 0 else 0.0) for n, s in sums.items()}
