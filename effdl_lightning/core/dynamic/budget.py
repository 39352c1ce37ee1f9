"""Early-exit inference that really stops, per-exit MACs, and MSDNet's two evaluation settings.

MSDNet (Huang et al. 2018, arXiv 1703.09844) evaluates a network with exits ``k = 1..K`` in two settings:

* **Anytime prediction** (§4): the accuracy of each exit, against its cumulative cost.
* **Budgeted batch classification** (§4, §5.2): a sample leaves at the first exit ``k`` whose confidence
  ``max_c softmax(f_k(x))_c ≥ θ_k`` (the last exit takes the rest). For a budget, the fractions ``q_k`` of
  samples that should leave at each exit are chosen (the authors' code sweeps a geometric law
  ``q_k ∝ p^k``, ``p = 0.05, 0.10, ..., 2.0``), and ``θ_k`` is fitted on validation data: the ``n·q_k``
  most confident of the samples still present leave at exit ``k``. The test set then gives one point
  (average MACs, accuracy) per budget: ``avg MACs = Σ_k (fraction leaving at k) · C_k`` with ``C_k`` the
  cumulative MACs of exit ``k`` (all stages up to ``k`` and the classifiers of exits ``1..k``).

:func:`early_exit_inference` runs the thresholds for real: stage ``k`` only sees the samples that did not
leave before it. :class:`CompiledStages` compiles each stage with ``torch.compile`` (a dynamic batch dimension:
the batch shrinks at every exit), so that early exit is compared with a compiled whole network on equal terms.
"""

from __future__ import annotations

import math
import types
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from effdl_lightning.core.dynamic.exits import MultiExitNetwork, is_staged, num_exits_of

__all__ = [
    "DEFAULT_BUDGETS",
    "AnytimeResult",
    "BudgetPoint",
    "CompiledStages",
    "EarlyExitOutput",
    "anytime_evaluation",
    "assign_exits",
    "budget_sweep",
    "collect_exit_logits",
    "cumulative_exit_macs",
    "early_exit_inference",
    "fit_thresholds",
    "geometric_exit_fractions",
]

#: the geometric parameters p of the authors' budget sweep (``p = i / 20`` for ``i = 1..40``)
DEFAULT_BUDGETS: tuple[float, ...] = tuple(i / 20 for i in range(1, 41))


@dataclass
class EarlyExitOutput:
    """Result of :func:`early_exit_inference` on one batch.

    Attributes:
        logits: ``(N, C)`` logits of the exit each sample left at.
        exit_index: ``(N,)`` that exit (0-based).
        stage_batch_sizes: the number of samples that entered each stage (0 for a stage never run).
    """

    logits: Tensor
    exit_index: Tensor
    stage_batch_sizes: list[int]

    @property
    def predictions(self) -> Tensor:
        """``(N,)`` predicted classes."""
        return self.logits.argmax(dim=1)


@dataclass
class AnytimeResult:
    """Anytime prediction: ``accuracy[k]`` of exit ``k`` on all samples and its cumulative ``macs[k]``."""

    accuracy: list[float]
    macs: list[int]


@dataclass
class BudgetPoint:
    """One budget of budgeted batch classification.

    Attributes:
        budget: the geometric parameter ``p`` or the requested fractions, as given.
        target_fractions: requested fraction of samples leaving at each exit.
        thresholds: fitted ``θ_k`` for exits ``1..K-1`` (``inf``: nobody leaves there).
        val_fractions: fractions leaving at each exit on the validation data.
        exit_fractions: fractions leaving at each exit on the test data.
        avg_macs: average MACs per test sample.
        accuracy: test accuracy.
        val_accuracy: validation accuracy with the same thresholds.
    """

    budget: float | list[float]
    target_fractions: list[float]
    thresholds: list[float]
    val_fractions: list[float]
    exit_fractions: list[float]
    avg_macs: float
    accuracy: float
    val_accuracy: float


def _exits(model: nn.Module) -> int:
    k = num_exits_of(model)
    if k is None:
        raise ValueError(
            f"{type(model).__name__} has no `num_exits`; early exit needs a MultiExitNetwork or a model with "
            f"`num_exits` and `forward_stage` (e.g. effdl_lightning.models.MSDNet)"
        )
    return k


def _thresholds(thresholds: float | Sequence[float], num_exits: int) -> list[float]:
    if isinstance(thresholds, (int, float)):
        return [float(thresholds)] * (num_exits - 1)
    values = [float(t) for t in thresholds]
    if len(values) != num_exits - 1:
        raise ValueError(
            f"`thresholds` must hold {num_exits - 1} values (exits 1..{num_exits - 1}; the last exit takes every "
            f"remaining sample) or be one number, got {len(values)}: {values}"
        )
    return values


def _single_output(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    if len(outs) != 1:
        raise ValueError(
            f"{type(model).__name__} returned {len(outs)} logits but has no `forward_stage(index, state)`; it "
            f"cannot stop early"
        )
    return outs[0]


def _select(state: Any, keep: Tensor) -> Any:
    """Keep the rows ``keep`` of every tensor in ``state`` (nested lists, tuples and dicts)."""
    if isinstance(state, Tensor):
        return state[keep]
    if isinstance(state, (list, tuple)):
        return type(state)(_select(s, keep) for s in state)
    if isinstance(state, dict):
        return {k: _select(v, keep) for k, v in state.items()}
    return state


def early_exit_inference(model: nn.Module, x: Tensor, thresholds: float | Sequence[float]) -> EarlyExitOutput:
    """Classify ``x`` stage by stage; a sample leaves at the first exit ``k`` with ``max softmax ≥ θ_k``.

    After each exit the samples that left are removed from the batch, so later stages compute only the
    rest. With every ``θ_k > 1`` all samples reach the last exit and the result equals ``model(x)[-1]``.
    Runs under ``torch.no_grad()`` in the model's current mode (put it in eval mode first).

    Args:
        model: a :class:`MultiExitNetwork` or any model with ``num_exits`` and ``forward_stage``.
        x: a batch of inputs.
        thresholds: ``θ_1..θ_{K-1}``, or one number for all of them.

    Raises:
        ValueError: a wrong number of thresholds, or a model that cannot be run stage by stage.
    """
    if not is_staged(model) and num_exits_of(model) in (None, 1):  # one exit: the model itself
        _thresholds(thresholds, 1)
        with torch.no_grad():
            single = _single_output(model, x)
        return EarlyExitOutput(
            single, torch.zeros(x.shape[0], dtype=torch.long, device=x.device), [x.shape[0]]
        )
    k_exits = _exits(model)
    thr = _thresholds(thresholds, k_exits)
    if not is_staged(model):
        raise ValueError(f"{type(model).__name__} has no `forward_stage(index, state)`; it cannot stop early")
    n = x.shape[0]
    index = torch.arange(n, device=x.device)
    exit_index = torch.full((n,), k_exits - 1, dtype=torch.long, device=x.device)
    sizes = [0] * k_exits
    out: Tensor | None = None
    state: Any = x
    with torch.no_grad():
        for k in range(k_exits):
            sizes[k] = int(index.numel())
            state, logits = model.forward_stage(k, state)  # type: ignore[operator]
            if out is None:
                out = logits.new_empty(n, logits.shape[1])
            if k == k_exits - 1:
                leave = torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
            else:
                leave = torch.softmax(logits.float(), dim=1).amax(dim=1) >= thr[k]
            out[index[leave]] = logits[leave]
            exit_index[index[leave]] = k
            keep = ~leave
            if not bool(keep.any()):
                break
            index = index[keep]
            state = _select(state, keep)
    assert out is not None
    return EarlyExitOutput(out, exit_index, sizes)


# --- MACs ---------------------------------------------------------------------------------------------------------
class _Stage(nn.Module):
    """Stage ``index`` of a staged model as a module of its own (one compiled graph per stage).

    Every instance gets a ``forward`` with a code object of its own: dynamo caches compiled graphs per code
    object and recompiles at most ``recompile_limit`` (8) times per code object before it silently falls
    back to eager, so stages sharing one ``forward`` would share that limit (3 stages × 4 buckets exceed it).
    """

    def __init__(self, model: nn.Module, index: int) -> None:
        super().__init__()
        self.model = model
        self.index = index
        code = _Stage._forward.__code__.replace(co_name=f"stage_{index}_forward")
        self.forward = types.MethodType(types.FunctionType(code, _Stage._forward.__globals__), self)

    def _forward(self, state: Any) -> tuple[Any, Tensor]:
        return self.model.forward_stage(self.index, state)  # type: ignore[operator]


def _rows(state: Any) -> int:
    return int((state if isinstance(state, Tensor) else state[0]).shape[0])


def _pad_rows(state: Any, rows: int) -> Any:
    """``state`` (a tensor or a list/tuple of tensors) with zero rows appended up to ``rows``."""
    if isinstance(state, Tensor):
        extra = rows - state.shape[0]
        return torch.cat([state, state.new_zeros(extra, *state.shape[1:])]) if extra > 0 else state
    return type(state)(_pad_rows(t, rows) for t in state)


def _take_rows(state: Any, rows: int) -> Any:
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state[:rows]
    return type(state)(_take_rows(t, rows) for t in state)


class CompiledStages(nn.Module):
    """A staged model whose stages run compiled: ``early_exit_inference(CompiledStages(model), x, θ)``.

    After each exit the batch holds only the samples still present, so a stage sees many batch sizes. Two ways
    to compile for that:

    * ``buckets=None`` (default): each stage is ``torch.compile(stage_k, dynamic=True, **options)``, one graph
      with a symbolic batch dimension (sizes 0 and 1 aside, which dynamo specializes).
    * ``buckets=(8, 16, 32, 64)``: static graphs; a batch of ``n`` samples is padded with zero rows up to the
      smallest bucket ``≥ n`` (a larger ``n`` runs as it is) and the outputs are cut back to ``n`` rows. Static
      shapes let the compiler specialize (and ``options={"freezing": True}`` fold the weights) at the cost of
      at most one bucket step of padding and one compilation per (stage, bucket). Only for models whose
      samples are independent at inference (eval-mode batch norm, no batch statistics).

    ``forward`` is the model's own (eager). Compilation happens at the first call of each stage (and bucket).

    Args:
        model: a staged model (``num_exits`` and ``forward_stage``, e.g. :class:`MultiExitNetwork` or MSDNet).
        buckets: batch sizes to pad to, or ``None`` for dynamic shapes.
        **options: more ``torch.compile`` arguments (e.g. ``options={"freezing": True}``, ``backend=...``).

    Raises:
        ValueError: ``model`` cannot be run stage by stage, or a bucket is not a positive integer.
    """

    def __init__(self, model: nn.Module, buckets: Sequence[int] | None = None, **options: Any) -> None:
        super().__init__()
        if not is_staged(model):
            raise ValueError(
                f"{type(model).__name__} has no `forward_stage(index, state)`; it cannot be staged"
            )
        if buckets is not None and (
            not buckets or any(isinstance(b, bool) or int(b) != b or b < 1 for b in buckets)
        ):
            raise ValueError(f"buckets must be positive integers (or None), got {buckets!r}")
        self.model = model
        self.num_exits = _exits(model)
        self.buckets = sorted(int(b) for b in buckets) if buckets is not None else None
        kwargs = {"dynamic": buckets is None} | options
        self.stages = nn.ModuleList(
            [torch.compile(_Stage(model, k), **kwargs) for k in range(self.num_exits)]  # type: ignore[misc]
        )

    def forward_stage(self, index: int, state: Any) -> tuple[Any, Tensor]:
        if not 0 <= index < self.num_exits:
            raise ValueError(f"stage index must be in [0, {self.num_exits - 1}], got {index}")
        if self.buckets is None:
            return self.stages[index](state)  # type: ignore[no-any-return]
        n = _rows(state)
        size = next((b for b in self.buckets if b >= n), n)
        features, logits = self.stages[index](_pad_rows(state, size))
        return _take_rows(features, n), logits[:n]

    def forward(self, x: Tensor) -> Any:
        return self.model(x)


def _layer_macs(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> int:
    """Conv and linear MACs as ``effdl_lightning.measure`` counts them (no bias; batch 1)."""
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        if module.transposed:
            return int(inputs[0].numel()) * (module.out_channels // module.groups) * kernel
        return int(output.numel()) * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return int(output.numel()) * module.in_features
    return 0


class _MacCounter:
    """Running total of conv/linear MACs of ``model`` while inside the ``with`` block."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.total = 0
        self._handles: list[Any] = []

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.total += _layer_macs(module, inputs, output)

    def __enter__(self) -> _MacCounter:
        for module in self.model.modules():
            if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
                self._handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    flags = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, flag in flags.items():
            module.training = flag


def cumulative_exit_macs(model: nn.Module, input_shape: Sequence[int]) -> list[int]:
    """MACs of one sample leaving at each exit: ``C_k`` = everything computed up to exit ``k`` at batch 1.

    For a :class:`MultiExitNetwork`, ``C_k`` is the backbone's MACs up to the end of ``exits[k]`` (counted by
    hooks in execution order) plus the heads of exits ``1..k``; the last is the whole backbone plus every
    intermediate head (what :func:`effdl_lightning.measure.profile` counts for the network). For a staged
    model, ``C_k`` is the MACs of ``forward_stage(0..k)``. Conv and linear layers only, as in
    ``effdl_lightning.measure``.
    """
    shape = tuple(int(d) for d in input_shape)
    param = next(model.parameters(), None)
    x = torch.zeros(1, *shape, device=param.device if param is not None else None)
    with _eval_no_grad(model), _MacCounter(model) as counter:
        if isinstance(model, MultiExitNetwork):
            marks: dict[str, int] = {}
            features: dict[str, Tensor] = {}

            def mark(path: str) -> Any:
                def hook(module: nn.Module, args: Any, output: Any) -> None:
                    marks[path] = counter.total
                    features[path] = output

                return hook

            handles = [model.backbone.get_submodule(p).register_forward_hook(mark(p)) for p in model.exits]
            try:
                model.backbone(x)
            finally:
                for handle in handles:
                    handle.remove()
            backbone_total, heads = counter.total, 0
            cumulative: list[int] = []
            for path, head in zip(model.exits, model.heads, strict=True):
                before = counter.total
                head(features[path])
                heads += counter.total - before
                cumulative.append(marks[path] + heads)
            return [*cumulative, backbone_total + heads]
        if not is_staged(model) and num_exits_of(model) in (None, 1):  # one exit: the model itself
            _single_output(model, x)
            return [counter.total]
        k_exits = _exits(model)
        if not is_staged(model):
            raise ValueError(f"{type(model).__name__} has no `forward_stage(index, state)` to measure exits")
        state: Any = x
        cumulative = []
        for k in range(k_exits):
            state, _ = model.forward_stage(k, state)  # type: ignore[operator]
            cumulative.append(counter.total)
        return cumulative


# --- budgeted batch classification ---------------------------------------------------------------------------------
def geometric_exit_fractions(num_exits: int, p: float) -> list[float]:
    """MSDNet's budget law ``q_k = p^k / Σ_j p^j`` (``k = 1..K``): ``p < 1`` favours early exits."""
    if int(num_exits) < 1:
        raise ValueError(f"`num_exits` must be >= 1, got {num_exits}")
    if not float(p) > 0:
        raise ValueError(f"the geometric budget parameter p must be > 0, got {p}")
    logs = [k * math.log(float(p)) for k in range(1, int(num_exits) + 1)]
    top = max(logs)
    weights = [math.exp(v - top) for v in logs]
    return [w / sum(weights) for w in weights]


def _fractions(fractions: Sequence[float], num_exits: int) -> list[float]:
    values = [float(f) for f in fractions]
    if len(values) != num_exits or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(
            f"exit fractions must be {num_exits} values >= 0 that sum to 1 (one per exit), got {values}"
        )
    return values


def _confidences(logits: Tensor) -> Tensor:
    if logits.ndim != 3:
        raise ValueError(f"exit logits must have shape (exits, samples, classes), got {tuple(logits.shape)}")
    return torch.softmax(logits.float(), dim=2).amax(dim=2)


def assign_exits(logits: Tensor, thresholds: float | Sequence[float]) -> Tensor:
    """``(N,)`` exit of each sample: the first ``k`` with ``max softmax(logits[k]) ≥ θ_k``, else the last.

    Args:
        logits: ``(K, N, C)`` logits of every exit on every sample.
        thresholds: ``θ_1..θ_{K-1}`` or one number.
    """
    conf = _confidences(logits)
    k_exits, n = conf.shape
    thr = _thresholds(thresholds, k_exits)
    exit_index = torch.full((n,), k_exits - 1, dtype=torch.long)
    undecided = torch.ones(n, dtype=torch.bool)
    for k in range(k_exits - 1):
        leave = undecided & (conf[k].cpu() >= thr[k])
        exit_index[leave] = k
        undecided &= ~leave
    return exit_index


def fit_thresholds(logits: Tensor, fractions: Sequence[float]) -> list[float]:
    """Fit ``θ_1..θ_{K-1}`` so that a fraction ``q_k`` of the samples leaves at exit ``k`` (arXiv 1703.09844).

    Exit ``k`` takes the ``n_k`` most confident samples still present, ``n_k = round(N·Σ_{j≤k} q_j) −
    round(N·Σ_{j<k} q_j)`` (within one sample of ``N·q_k``); ``θ_k`` is the confidence of the last one taken
    (``inf`` when ``n_k = 0``). Ties at ``θ_k`` leave together.

    Args:
        logits: ``(K, N, C)`` logits of every exit on the validation samples.
        fractions: ``q_1..q_K``, non-negative, summing to 1.
    """
    conf = _confidences(logits).cpu()
    k_exits, n = conf.shape
    q = _fractions(fractions, k_exits)
    bounds = [round(n * sum(q[: k + 1])) for k in range(k_exits)]
    counts = [bounds[0]] + [bounds[k] - bounds[k - 1] for k in range(1, k_exits)]
    remaining = torch.ones(n, dtype=torch.bool)
    thresholds: list[float] = []
    for k in range(k_exits - 1):
        present = conf[k][remaining]
        if counts[k] <= 0 or present.numel() == 0:
            theta = math.inf
        else:
            ordered = present.sort(descending=True).values
            theta = float(ordered[min(counts[k], ordered.numel()) - 1])
        thresholds.append(theta)
        remaining &= ~(conf[k] >= theta)
    return thresholds


def _accuracy(logits: Tensor, exit_index: Tensor, targets: Tensor) -> float:
    chosen = logits[exit_index.to(logits.device), torch.arange(exit_index.numel(), device=logits.device)]
    return float((chosen.argmax(dim=1).cpu() == targets.cpu()).double().mean())


def _exit_fractions(exit_index: Tensor, num_exits: int) -> list[float]:
    counts = torch.bincount(exit_index, minlength=num_exits).double()
    return (counts / max(1, exit_index.numel())).tolist()


def budget_sweep(
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    macs: Sequence[float],
    budgets: Iterable[float | Sequence[float]] = DEFAULT_BUDGETS,
) -> list[BudgetPoint]:
    """Budgeted batch classification from precomputed logits: fit on ``val``, evaluate on ``test``.

    Args:
        val: ``(logits (K, N, C), targets (N,))`` of the validation data.
        test: the same for the test data.
        macs: cumulative MACs ``C_k`` of each exit (:func:`cumulative_exit_macs`).
        budgets: each a geometric parameter ``p`` (``q_k ∝ p^k``) or explicit fractions ``q_1..q_K``.
    """
    (val_logits, val_targets), (test_logits, test_targets) = val, test
    k_exits = val_logits.shape[0]
    if test_logits.shape[0] != k_exits or len(macs) != k_exits:
        raise ValueError(
            f"validation logits have {k_exits} exits, test logits {test_logits.shape[0]} and macs {len(macs)}; "
            f"they must agree"
        )
    points: list[BudgetPoint] = []
    for budget in budgets:
        if isinstance(budget, (int, float)):
            target = geometric_exit_fractions(k_exits, float(budget))
            given: float | list[float] = float(budget)
        else:
            target = _fractions(budget, k_exits)
            given = list(target)
        thresholds = fit_thresholds(val_logits, target)
        val_exit = assign_exits(val_logits, thresholds)
        test_exit = assign_exits(test_logits, thresholds)
        fractions = _exit_fractions(test_exit, k_exits)
        points.append(
            BudgetPoint(
                budget=given,
                target_fractions=target,
                thresholds=thresholds,
                val_fractions=_exit_fractions(val_exit, k_exits),
                exit_fractions=fractions,
                avg_macs=float(sum(f * float(c) for f, c in zip(fractions, macs, strict=True))),
                accuracy=_accuracy(test_logits, test_exit, test_targets),
                val_accuracy=_accuracy(val_logits, val_exit, val_targets),
            )
        )
    return points


def collect_exit_logits(model: nn.Module, loader: Iterable[Any]) -> tuple[Tensor, Tensor]:
    """``(logits (K, N, C), targets (N,))`` of every exit on every ``(x, y)`` batch of ``loader`` (eval, no grad).

    Logits stay on the model's device; targets are on the CPU.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else None
    outs: list[list[Tensor]] = []
    targets: list[Tensor] = []
    with _eval_no_grad(model):
        for batch in loader:
            x, y = batch[0], batch[1]
            out = model(x.to(device) if device is not None else x)
            outs.append(list(out) if isinstance(out, (list, tuple)) else [out])
            targets.append(y.cpu())
    if not outs:
        raise ValueError("the loader yielded no batch")
    logits = torch.stack([torch.cat(per_exit, dim=0) for per_exit in zip(*outs, strict=True)])
    return logits, torch.cat(targets)


def anytime_evaluation(model: nn.Module, loader: Iterable[Any], input_shape: Sequence[int]) -> AnytimeResult:
    """Accuracy of every exit on all samples of ``loader``, with each exit's cumulative MACs (arXiv 1703.09844)."""
    logits, targets = collect_exit_logits(model, loader)
    accuracy = (logits.argmax(dim=2).cpu() == targets.unsqueeze(0)).double().mean(dim=1).tolist()
    return AnytimeResult(accuracy=accuracy, macs=cumulative_exit_macs(model, input_shape))
