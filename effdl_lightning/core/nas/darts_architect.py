"""The DARTS architecture gradient (Liu et al. 2019, arXiv 1806.09055, §2.3, Eqs. 5-8).

The bilevel problem ``min_α L_val(w*(α), α)`` s.t. ``w*(α) = argmin_w L_train(w, α)`` is approximated by one
unrolled weight step:

* **first order** (ξ = 0): ``∇_α L_val(w, α)`` at the current weights;
* **second order**: ``w' = w − ξ·(μ·m + ∇_w L_train(w, α) + λ·w)`` (one step of the weight optimizer, SGD with
  momentum buffer ``m``, momentum ``μ`` and weight decay ``λ``, as in the reference code), then

      ∇_α L_val(w', α) − ξ · ∇²_{α,w} L_train(w, α) · ∇_{w'} L_val(w', α),

  the Hessian-vector product by central finite differences (Eq. 8):
  ``[∇_α L_train(w⁺, α) − ∇_α L_train(w⁻, α)] / 2ε`` with ``w^± = w ± ε·∇_{w'} L_val(w', α)`` and
  ``ε = 0.01 / ‖∇_{w'} L_val(w', α)‖``.

Both functions *write* ``.grad`` of the architecture parameters (replacing what was there) and leave the
weights, their ``.grad`` and the BN running statistics as they were: the unrolled and perturbed networks are
evaluated with ``torch.func.functional_call``, never by editing the weights in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["FD_RADIUS", "ArchNetwork", "first_order_arch_grad_", "second_order_arch_grad_"]

LossFn = Callable[[Tensor, Tensor], Tensor]
Batch = Sequence[Tensor]

#: ε·‖v‖ of the finite-difference Hessian-vector product (0.01 in the paper, §2.3)
FD_RADIUS = 0.01


class ArchNetwork(Protocol):
    """What the architect needs: an ``nn.Module`` with ``arch_parameters()`` (e.g. ``DartsSearchNetwork``)."""

    def arch_parameters(self) -> list[nn.Parameter]: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def named_buffers(self) -> Iterator[tuple[str, Tensor]]: ...

    def __call__(self, x: Tensor) -> Tensor: ...


@contextmanager
def _buffers_kept(network: ArchNetwork) -> Iterator[None]:
    """Restore every buffer (BN running statistics and counters) on exit."""
    saved = [(b, b.detach().clone()) for _, b in network.named_buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _split(network: ArchNetwork) -> tuple[list[nn.Parameter], list[tuple[str, nn.Parameter]]]:
    arch = list(network.arch_parameters())
    if not arch:
        raise ValueError("the network has no architecture parameters (arch_parameters() is empty)")
    ids = {id(p) for p in arch}
    weights = [(n, p) for n, p in network.named_parameters() if id(p) not in ids and p.requires_grad]
    return arch, weights


def _grad(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """``∂loss/∂params``, zeros for a parameter the loss does not use (e.g. α_normal of a net of 1 cell)."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def _write_grads(params: Sequence[nn.Parameter], grads: Sequence[Tensor]) -> None:
    for p, g in zip(params, grads, strict=True):
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad.copy_(g)


def _call(network: ArchNetwork, params: dict[str, Tensor], x: Tensor) -> Tensor:
    return functional_call(network, params, (x,), strict=False)  # type: ignore[arg-type]


def first_order_arch_grad_(network: ArchNetwork, loss_fn: LossFn, val_batch: Batch) -> Tensor:
    """Write ``∇_α L_val(w, α)`` into ``α.grad`` (first-order DARTS, ξ = 0); return ``L_val`` (detached).

    Args:
        network: a module with ``arch_parameters()``.
        loss_fn: ``(logits, targets) -> scalar loss`` (cross-entropy in DARTS).
        val_batch: ``(inputs, targets)`` of the architecture ("validation") half of the training data.
    """
    arch, _ = _split(network)
    x, y = val_batch[0], val_batch[1]
    with _buffers_kept(network):
        loss = loss_fn(network(x), y)
        _write_grads(arch, _grad(loss, arch))
    return loss.detach()


def _unroll_direction(
    p: nn.Parameter,
    grad: Tensor,
    momentum: float | None,
    weight_decay: float | None,
    optimizer: torch.optim.Optimizer | None,
) -> Tensor:
    """``μ·m + g + λ·w``: the step direction of SGD for ``p`` (m = the optimizer's momentum buffer, if any)."""
    group = None
    if optimizer is not None:
        group = next((g for g in optimizer.param_groups if any(q is p for q in g["params"])), None)
    mu = float(momentum if momentum is not None else (group or {}).get("momentum", 0.0))
    lam = float(weight_decay if weight_decay is not None else (group or {}).get("weight_decay", 0.0))
    direction = grad + lam * p.detach() if lam else grad.clone()
    buf = optimizer.state.get(p, {}).get("momentum_buffer") if optimizer is not None else None
    if mu and buf is not None:
        direction = direction + mu * buf
    return direction


def second_order_arch_grad_(
    network: ArchNetwork,
    loss_fn: LossFn,
    train_batch: Batch,
    val_batch: Batch,
    xi: float,
    *,
    momentum: float | None = None,
    weight_decay: float | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    radius: float = FD_RADIUS,
) -> Tensor:
    """Write the second-order DARTS gradient (module docstring) into ``α.grad``; return ``L_val(w', α)``.

    Args:
        network: a module with ``arch_parameters()``; every other trainable parameter is a weight.
        loss_fn: ``(logits, targets) -> scalar loss``.
        train_batch: ``(inputs, targets)`` of the weights' half (the unrolled step and the Hessian term).
        val_batch: ``(inputs, targets)`` of the architecture half.
        xi: the unrolled step size ξ (the weights' learning rate in the paper); 0 gives the first-order
            gradient plus nothing (the Hessian term vanishes), at the cost of the extra passes.
        momentum: μ of the unrolled step; ``None`` = each weight's optimizer group's (0 without optimizer).
        weight_decay: λ of the unrolled step; ``None`` = the optimizer group's (0 without optimizer).
        optimizer: the weights' SGD optimizer: its ``momentum_buffer`` state enters the unrolled step.
        radius: ``ε·‖∇_{w'} L_val‖`` of the finite difference (0.01 in the paper).
    """
    if not float(xi) >= 0:
        raise ValueError(f"`xi` must be >= 0, got {xi}")
    if not float(radius) > 0:
        raise ValueError(f"`radius` must be > 0, got {radius}")
    arch, named = _split(network)
    names = [n for n, _ in named]
    weights = [p for _, p in named]
    (x_t, y_t), (x_v, y_v) = (train_batch[0], train_batch[1]), (val_batch[0], val_batch[1])
    with _buffers_kept(network):
        # w' = w − ξ (μ m + ∇_w L_train(w, α) + λ w)
        grads_t = _grad(loss_fn(network(x_t), y_t), weights)
        unrolled = {
            n: (p.detach() - xi * _unroll_direction(p, g, momentum, weight_decay, optimizer)).requires_grad_()
            for n, p, g in zip(names, weights, grads_t, strict=True)
        }
        loss_v = loss_fn(_call(network, unrolled, x_v), y_v)
        grads_v = _grad(loss_v, [*arch, *unrolled.values()])
        d_alpha, vector = list(grads_v[: len(arch)]), grads_v[len(arch) :]
        norm = torch.sqrt(sum((v.double() ** 2).sum() for v in vector))  # type: ignore[arg-type]
        if xi > 0 and float(norm) > 0:
            eps = float(radius) / float(norm)

            def arch_grad_at(sign: float) -> list[Tensor]:
                shifted = {
                    n: p.detach() + sign * eps * v for n, p, v in zip(names, weights, vector, strict=True)
                }
                return _grad(loss_fn(_call(network, shifted, x_t), y_t), arch)

            plus, minus = arch_grad_at(1.0), arch_grad_at(-1.0)
            d_alpha = [g - xi * (gp - gm) / (2 * eps) for g, gp, gm in zip(d_alpha, plus, minus, strict=True)]
        _write_grads(arch, d_alpha)
    return loss_v.detach()
