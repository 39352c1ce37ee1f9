"""SkipNet gates for residual blocks (Wang et al., "SkipNet: Learning Dynamic Routing in Convolutional
Networks", arXiv 1711.09485), with inference that really skips.

A gated block computes ``x' = act(g · F(x) + shortcut(x))`` where ``F`` is the residual branch and
``g ∈ {0, 1}`` is decided per sample by a small gate on the block's input: ``p = σ(z)``, ``z = gate(x)``.

* **Gate** (:class:`SkipGate`): the paper's feed-forward FFGate-II, ``3×3 conv (stride 2) → BN → ReLU →
  global average pool → linear → one logit`` (``kind="conv"``), or the cheaper ``global average pool →
  linear`` (``kind="linear"``). The paper's recurrent (LSTM) gate shared across blocks is not implemented:
  the feed-forward gate is the one the paper uses for its CIFAR results next to it. One sigmoid logit is the
  paper's two-way softmax ``[z₀, z₁]`` with ``z = z₁ − z₀``.
* **Supervised phase** (``mode="hard"``): ``g = 1[σ(z) ≥ ½]`` in the forward pass and ``∂g/∂z = σ'(z)`` in
  the backward pass (straight-through estimator), trained with the task loss only.
* **Hybrid RL phase** (``mode="sample"``): ``g ~ Bernoulli(σ(z))``; the task loss trains the network and
  REINFORCE trains the gates with the reward of the reference code (ucbdrive/skipnet, ``train_rl.py``), see
  :func:`reinforce_loss`.
* **Inference** (``eval()``): ``g = 1[σ(z) ≥ ½]`` and ``F`` runs only on the samples whose gate is open
  (``index_select`` → ``F`` → ``index_add`` onto the shortcut); the others take ``act(shortcut(x))``.
  Training computes ``F`` on the whole batch (the straight-through gradient needs ``F(x)`` of every sample).

Blocks whose shortcut changes the shape (strided / projection shortcuts) stay always on, as SkipNet keeps
its downsampling blocks; :func:`gate_` logs the reason.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

GATE_KINDS = ("conv", "linear")
GATE_MODES = ("hard", "sample")
GATE_INITS = ("open", "random")


class SkipGate(nn.Module):
    """One logit per sample from a block's input (SkipNet FFGate-II, arXiv 1711.09485, §3.2).

    ``kind="conv"``: ``z = w·GAP(ReLU(BN(conv₃ₓ₃,s2(x)))) + b``; ``kind="linear"``: ``z = w·GAP(x) + b``.

    ``init="open"``: ``w`` starts at zero and ``b`` at ``open_bias``, so every gate starts open with ``σ(b)``
    and the gated network starts as the plain one (for gating a trained network). ``init="random"``: PyTorch's
    default ``Linear`` initialization (``w``, ``b`` uniform in ``±1/√C``), so gates start near ½, some closed,
    as in the reference code, whose gates are not initialized open: the supervised phase then trains the
    network with blocks skipped from the start, and it learns to do without some of them.

    Args:
        channels: input channels of the block.
        dims: spatial dimensions of the input (1 for ``Conv1d`` blocks, 2 for ``Conv2d``).
        kind: ``"conv"`` (FFGate-II) or ``"linear"``.
        open_bias: initial logit with ``init="open"`` (``> 0``: open).
        init: ``"open"`` or ``"random"``.
    """

    def __init__(
        self, channels: int, dims: int = 2, kind: str = "conv", open_bias: float = 2.0, init: str = "open"
    ) -> None:
        super().__init__()
        if kind not in GATE_KINDS:
            raise ValueError(f"gate kind must be one of {GATE_KINDS}; got {kind!r}")
        if init not in GATE_INITS:
            raise ValueError(f"gate init must be one of {GATE_INITS}; got {init!r}")
        if dims not in (1, 2):
            raise ValueError(f"gates support 1-D or 2-D feature maps; got dims={dims}")
        self.kind = kind
        self.features: nn.Module = nn.Identity()
        if kind == "conv":
            conv = nn.Conv1d if dims == 1 else nn.Conv2d
            norm = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
            self.features = nn.Sequential(
                conv(channels, channels, 3, stride=2, padding=1, bias=False), norm(channels), nn.ReLU()
            )
        self.fc = nn.Linear(channels, 1)
        if init == "open":
            nn.init.zeros_(self.fc.weight)
            nn.init.constant_(self.fc.bias, float(open_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``z`` of shape ``(N,)``."""
        h = self.features(x)
        return self.fc(h.flatten(2).mean(2)).squeeze(1)


class _ZeroShortcut(nn.Module):
    """Stands in for a gated block's own shortcut: ``act(F(x) + 0)`` with ``act = Identity`` gives ``F(x)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(())


class GatedResidual(nn.Module):
    """``act(g · F(x) + shortcut(x))`` with a SkipNet gate ``g`` per sample (arXiv 1711.09485, eq. 1).

    Built by :func:`gate_` from a block whose forward is ``act(F(x) + shortcut(x))``: ``block`` is that
    block with its shortcut replaced by zero and its activation by ``Identity`` (so ``block(x) = F(x)``).

    Attributes:
        mode: ``"hard"`` (threshold + straight-through gradient) or ``"sample"`` (Bernoulli, for REINFORCE);
            only used in training; ``eval()`` always thresholds.
        force: ``None`` (the gate decides), ``True`` (always execute) or ``False`` (always skip).
        calls: forward calls in which ``F`` ran on at least one sample.
        samples_in: samples that entered ``F`` (in training: every sample of every call).
        samples_seen: samples that entered the block.
        last_gate: ``(N,)`` float decisions of the last call (1 = executed).
        last_log_prob: ``(N,)`` ``log π(g | x)`` of the last sampled decisions (``mode="sample"``), else None.
    """

    def __init__(self, block: nn.Module, shortcut: nn.Module, act: nn.Module, gate: SkipGate) -> None:
        super().__init__()
        self.block = block
        self.shortcut = shortcut
        self.act = act
        self.gate = gate
        self.mode = "hard"
        self.force: bool | None = None
        self.last_gate: torch.Tensor | None = None
        self.last_log_prob: torch.Tensor | None = None
        self.reset_stats()

    def reset_stats(self) -> None:
        """Zero :attr:`calls`, :attr:`samples_in` and :attr:`samples_seen`."""
        self.calls = 0
        self.samples_in = 0
        self.samples_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        shortcut = self.shortcut(x)
        self.last_log_prob = None
        if self.force is not None:
            hard = torch.full((n,), float(self.force), device=x.device, dtype=x.dtype)
            gate = hard
        else:
            logits = self.gate(x)
            prob = torch.sigmoid(logits)
            if self.training and self.mode == "sample":
                hard = torch.bernoulli(prob.detach())
                gate = hard
                self.last_log_prob = hard * F.logsigmoid(logits) + (1 - hard) * F.logsigmoid(-logits)
            else:
                hard = (prob >= 0.5).to(prob.dtype)
                gate = hard + prob - prob.detach()  # straight-through: forward hard, backward σ'(z)
        self.last_gate = hard.detach()
        self.samples_seen += n
        if self.training:
            self.calls += 1
            self.samples_in += n
            out = gate.view(n, *[1] * (x.dim() - 1)) * self.block(x) + shortcut
            return self.act(out)
        index = hard.nonzero().flatten()
        if index.numel() == 0:
            return self.act(shortcut)
        self.calls += 1
        if index.numel() == n:  # every sample executes the block: no gather / scatter
            self.samples_in += n
            return self.act(self.block(x) + shortcut)
        self.samples_in += int(index.numel())
        branch = self.block(x.index_select(0, index))
        return self.act(shortcut.index_add(0, index, branch.to(shortcut.dtype)))


def gated_blocks(model: nn.Module) -> dict[str, GatedResidual]:
    """``{name: GatedResidual}`` of ``model`` in forward-registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, GatedResidual)}


def set_gate_mode_(model: nn.Module, mode: str) -> None:
    """Set the training-time gate ``mode`` (``"hard"`` or ``"sample"``) of every gated block."""
    if mode not in GATE_MODES:
        raise ValueError(f"gate mode must be one of {GATE_MODES}; got {mode!r}")
    for block in gated_blocks(model).values():
        block.mode = mode


@contextmanager
def forced_gates(model: nn.Module, execute: bool | None) -> Iterator[None]:
    """Within the context every gate of ``model`` is forced open (``True``) or closed (``False``)."""
    blocks = list(gated_blocks(model).values())
    before = [b.force for b in blocks]
    for b in blocks:
        b.force = execute
    try:
        yield
    finally:
        for b, force in zip(blocks, before, strict=True):
            b.force = force


def _first_conv(block: nn.Module) -> nn.modules.conv._ConvNd | None:
    for m in block.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            return m
    return None


def gate_(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    block_types: Sequence[type[nn.Module]] | None = None,
    shortcut: str = "shortcut",
    act: str = "relu2",
    kind: str = "conv",
    open_bias: float = 2.0,
    init: str = "open",
) -> dict[str, GatedResidual]:
    """Wrap every residual block of ``model`` in a :class:`GatedResidual`, in place (SkipNet, arXiv 1711.09485).

    A candidate is a module with a submodule attribute ``shortcut`` and one ``act`` whose forward is
    ``act(F(x) + shortcut(x))`` with ``act`` applied once, after the sum (e.g. ``effdl_lightning``'s
    ``BasicBlock``: ``shortcut``/``relu2``). Candidates are filtered by ``block_types`` and by glob patterns
    on module names. A candidate whose shortcut is not ``nn.Identity`` (it changes the shape) or that has no
    convolution to size the gate stays always on, with a logged reason.

    Args:
        model: any module; changed in place.
        include: glob patterns of block names to gate (all candidates when empty).
        exclude: glob patterns of block names to leave ungated.
        block_types: only blocks of these types (default: any type with the two attributes).
        shortcut: attribute name of the shortcut submodule.
        act: attribute name of the activation after the residual sum.
        kind: gate kind, ``"conv"`` (FFGate-II) or ``"linear"`` (pool + linear).
        open_bias: initial gate logit with ``init="open"`` (``> 0``: every gate starts open).
        init: ``"open"`` (the gated model starts as the plain one) or ``"random"`` (the reference code's: gates
            start near ½, see :class:`SkipGate`).

    Returns:
        ``{name: GatedResidual}`` of the new gated blocks (empty, with a warning, when none qualifies).

    Raises:
        ValueError: an unknown ``kind`` or ``init``, or a pattern that matches no candidate block.
    """
    if kind not in GATE_KINDS:
        raise ValueError(f"gate kind must be one of {GATE_KINDS}; got {kind!r}")
    if init not in GATE_INITS:
        raise ValueError(f"gate init must be one of {GATE_INITS}; got {init!r}")
    inc = (include,) if isinstance(include, str) else tuple(include or ())
    exc = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
    types = tuple(block_types or ())
    inside_gated = {id(m) for g in gated_blocks(model).values() for m in g.modules()}
    candidates = {
        name: m
        for name, m in model.named_modules()
        if name
        and id(m) not in inside_gated
        and isinstance(getattr(m, shortcut, None), nn.Module)
        and isinstance(getattr(m, act, None), nn.Module)
        and (not types or isinstance(m, types))
    }
    for what, patterns in (("include", inc), ("exclude", exc)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in candidates):
                raise ValueError(
                    f"{what} pattern {pattern!r} matches no residual block (a module with `.{shortcut}` and "
                    f"`.{act}`); candidate blocks: {', '.join(candidates) or '(none)'}"
                )
    gated: dict[str, GatedResidual] = {}
    for name, block in candidates.items():
        if inc and not any(fnmatch.fnmatchcase(name, p) for p in inc):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exc):
            continue
        short = getattr(block, shortcut)
        if not isinstance(short, nn.Identity):
            log.info(
                "gate_: %s kept always on: its shortcut is %s (the block changes shape), as SkipNet keeps "
                "downsampling blocks",
                name,
                type(short).__name__,
            )
            continue
        conv = _first_conv(block)
        if conv is None:
            log.info("gate_: %s kept always on: no Conv1d/Conv2d to size its gate", name)
            continue
        activation = getattr(block, act)
        setattr(block, shortcut, _ZeroShortcut())
        setattr(block, act, nn.Identity())
        gate = SkipGate(
            conv.in_channels, dims=len(conv.kernel_size), kind=kind, open_bias=open_bias, init=init
        )
        wrapper = GatedResidual(block, short, activation, gate)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, wrapper)
        gated[name] = wrapper
    if not gated:
        log.warning(
            "gate_: no residual block of %s was gated (candidates: %s)",
            type(model).__name__,
            list(candidates),
        )
    return gated


def skip_ratio(blocks: Sequence[GatedResidual]) -> float:
    """Fraction of (sample, gated block) pairs skipped in the last forward pass (0 with no gated block)."""
    gates = [b.last_gate for b in blocks if b.last_gate is not None]
    if not gates:
        return 0.0
    return 1.0 - float(torch.stack([g.float().mean() for g in gates]).mean())


def reinforce_loss(
    log_probs: Sequence[torch.Tensor],
    actions: Sequence[torch.Tensor],
    task_loss: torch.Tensor,
    alpha: float,
    gamma: float = 1.0,
) -> torch.Tensor:
    """The REINFORCE term of SkipNet's hybrid objective (arXiv 1711.09485, §3.3; reference ``train_rl.py``).

    With ``B`` gates in execution order, actions ``a_i ∈ {0, 1}`` (1 = execute) and the per-sample task loss
    ``L``, each gate earns the skip reward ``r_i = (α / B)·(1 − a_i)`` and the episode ends with ``−L``; the
    return of gate ``i`` is ``G_i = Σ_{j≥i} γ^{j−i} r_j + γ^{B−i}·(−L)``, and the loss is
    ``−mean_n Σ_i G_{n,i} · log π(a_{n,i} | x_n)`` (``G`` is a constant: only the gates get gradients).
    With ``γ = 1``, ``G_i = α·(skips among gates ≥ i)/B − L``: skipping pays ``α/B`` per block, a wrong
    prediction costs its cross-entropy.

    Args:
        log_probs: ``B`` tensors ``(N,)`` of ``log π(a_i | x)``.
        actions: ``B`` tensors ``(N,)`` of the sampled actions.
        task_loss: ``(N,)`` per-sample task loss (cross-entropy).
        alpha: skip reward ``α ≥ 0``.
        gamma: discount ``0 < γ ≤ 1``.
    """
    if len(log_probs) != len(actions):
        raise ValueError(f"got {len(log_probs)} log-probabilities for {len(actions)} actions")
    if not log_probs:
        return task_loss.new_zeros(())
    per_gate = alpha / len(actions)
    ret = -task_loss.detach()
    returns: list[torch.Tensor] = []
    for action in reversed(actions):
        ret = per_gate * (1.0 - action.detach()) + gamma * ret
        returns.insert(0, ret)
    total = sum((g * lp for g, lp in zip(returns, log_probs, strict=True)), task_loss.new_zeros(()))
    return -total.mean()


@dataclass
class MacsTable:
    """MACs per sample of a gated model: ``static`` (always computed) plus one entry per gated branch.

    Counted like ``effdl_lightning.measure``: convolution ``out.numel · Cin/groups · prod(kernel)``, linear
    ``out.numel · in_features``; other layers are not counted.
    """

    static: int
    branches: dict[str, int] = field(default_factory=dict)

    @property
    def full(self) -> int:
        """MACs with every gate open."""
        return self.static + sum(self.branches.values())

    def executed(self, fractions: dict[str, float]) -> float:
        """Average MACs per sample when gated branch ``name`` runs on ``fractions[name]`` of the samples."""
        return self.static + sum(m * fractions.get(name, 1.0) for name, m in self.branches.items())


def macs_table(model: nn.Module, example: torch.Tensor) -> MacsTable:
    """Count the MACs of one sample (``example[:1]``) with every gate open, split into static and branches.

    ``static`` holds everything outside the gated branches, the gates included.
    """
    blocks = gated_blocks(model)
    prefixes = {f"{name}.block.": name for name in blocks}
    static = 0
    branches = dict.fromkeys(blocks, 0)
    handles = []

    def counter(name: str) -> object:
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            nonlocal static
            if isinstance(module, nn.Linear):
                macs = output.numel() * module.in_features
            else:
                assert isinstance(module, nn.modules.conv._ConvNd)
                kernel = 1
                for k in module.kernel_size:
                    kernel *= k
                macs = output.numel() * (module.in_channels // module.groups) * kernel
            owner = next((b for p, b in prefixes.items() if name.startswith(p)), None)
            if owner is None:
                static += macs
            else:
                branches[owner] += macs

        return hook

    for name, module in model.named_modules():
        is_conv = isinstance(module, nn.modules.conv._ConvNd) and not module.transposed
        if is_conv or isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(counter(name)))  # type: ignore[arg-type]
    # forced gates skip the gate itself: run each gate on its block's input (counted as static)
    gate_inputs: dict[str, torch.Tensor] = {}
    for name, block in blocks.items():
        handles.append(
            block.register_forward_pre_hook(
                lambda _m, args, name=name: gate_inputs.__setitem__(name, args[0])
            )
        )
    flags = {m: m.training for m in model.modules()}
    stats = {
        b: (b.calls, b.samples_in, b.samples_seen, b.last_gate, b.last_log_prob) for b in blocks.values()
    }
    try:
        model.eval()
        with torch.no_grad():
            with forced_gates(model, True):
                model(example[:1])
            for name, block in blocks.items():
                block.gate(gate_inputs[name])
    finally:
        for handle in handles:
            handle.remove()
        for m, flag in flags.items():
            m.training = flag
        for b, (calls, samples_in, seen, last, log_prob) in stats.items():
            b.calls, b.samples_in, b.samples_seen, b.last_gate, b.last_log_prob = (
                calls,
                samples_in,
                seen,
                last,
                log_prob,
            )
    return MacsTable(static, branches)
