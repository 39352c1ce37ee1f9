"""The platform-aware search loop: sample, train briefly, score with the MnasNet reward, learn, keep everything.

One step: the strategy proposes an architecture (the REINFORCE controller, or uniform random sampling as the
baseline every study needs, with the same number of candidates), the evaluator trains it briefly and returns
its validation accuracy (plus params and MACs), the latency predictor returns its table latency, and the
reward ``ACC · (LAT / T)^w`` (:func:`effdl_lightning.core.nas.mnas.reward`) is computed; the controller takes
one REINFORCE step on it. Every candidate is kept. An architecture sampled again reuses its first evaluation
(training is a deterministic function of the architecture and the seed, so retraining would repeat it); its
reward still updates the controller.

The state (history, controller weights, Adam moments, baseline, sampler states) is written after every
candidate to ``state_path`` (atomically), so a search killed at any point and started again with the same
arguments continues where it stopped and ends where an uninterrupted search ends; started again with a larger
``candidates`` budget, a finished search continues.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from effdl_lightning.core.nas.mnas import Architecture, SearchSpace, reward
from effdl_lightning.nas.controller import ReinforceConfig, ReinforceLearner

log = logging.getLogger(__name__)

STRATEGIES = ("controller", "random")
STATE_VERSION = 1

Evaluator = Callable[[Architecture], dict[str, float]]
"""``evaluate(arch) -> {"acc": ..., "params": ..., "macs": ..., ...}`` (validation accuracy in [0, 1])."""
LatencyFn = Callable[[Architecture], float]
"""``latency(arch) -> ms`` (e.g. a :class:`~effdl_lightning.nas.latency.LatencyPredictor`)."""


@dataclass(frozen=True)
class SearchSettings:
    """What a search does; a saved state is only resumed under equal settings.

    Args:
        strategy: ``controller`` (REINFORCE, NASNet/MnasNet) or ``random`` (uniform sampling).
        candidates: number of sampled candidates (the budget).
        target_ms: the target latency ``T``.
        alpha: reward exponent when ``LAT ≤ T`` (soft −0.07, hard 0).
        beta: reward exponent when ``LAT > T`` (soft −0.07, hard −1).
        seed: seeds the sampler and the controller.
        controller: the controller's hyper-parameters (unused by ``random``).
    """

    strategy: str = "controller"
    candidates: int = 40
    target_ms: float = 1.0
    alpha: float = -0.07
    beta: float = -0.07
    seed: int = 0
    controller: ReinforceConfig = field(default_factory=ReinforceConfig)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}; got {self.strategy!r}")
        if int(self.candidates) < 1:
            raise ValueError(f"candidates must be >= 1; got {self.candidates}")
        if not self.target_ms > 0:
            raise ValueError(f"target_ms must be > 0; got {self.target_ms}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Candidate:
    """One evaluated candidate of a search (plain data)."""

    index: int
    arch: dict[str, Any]
    key: str
    acc: float
    latency_ms: float
    reward: float
    params: int
    macs: int
    train_s: float
    cached: bool
    decisions: list[int]
    advantage: float | None = None
    log_prob: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both accuracy (higher) and latency (lower), by latency; each
    architecture once."""
    unique = list({c.key: c for c in candidates}.values())
    front = [
        c
        for c in unique
        if not any(
            o.acc >= c.acc and o.latency_ms <= c.latency_ms and (o.acc > c.acc or o.latency_ms < c.latency_ms)
            for o in unique
        )
    ]
    return sorted(front, key=lambda c: (c.latency_ms, -c.acc))


@dataclass
class SearchResult:
    """Every candidate, the best by reward, the accuracy-latency Pareto front, and the settings."""

    settings: SearchSettings
    history: list[Candidate]

    @property
    def best(self) -> Candidate:
        """The candidate of the highest reward (the earliest on ties)."""
        return max(self.history, key=lambda c: (c.reward, -c.index))

    @property
    def pareto(self) -> list[Candidate]:
        return pareto_front(self.history)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_dict(),
            "best": self.best.to_dict(),
            "pareto": [c.to_dict() for c in self.pareto],
            "history": [c.to_dict() for c in self.history],
        }


class PlatformAwareSearch:
    """Search ``space`` for the architecture of the highest MnasNet reward.

    Args:
        space: the factorized space.
        evaluate: trains a candidate briefly and returns ``acc`` (validation), ``params``, ``macs``.
        latency: predicted latency (ms) of a candidate.
        settings: strategy, budget, reward and seed.
        state_path: where the state is saved after every candidate and resumed from; ``None``: not saved.
        cache: evaluations by architecture key, shared with other searches that evaluate the same way
            (e.g. a controller and a random search of one seed); filled as candidates are evaluated.
        context: plain data describing how candidates are evaluated (data, training budget, skeleton, latency
            settings); saved with the state, and a resume under another context is refused, so evaluations made
            differently never mix.
    """

    def __init__(
        self,
        space: SearchSpace,
        evaluate: Evaluator,
        latency: LatencyFn,
        settings: SearchSettings,
        state_path: str | os.PathLike[str] | None = None,
        cache: MutableMapping[str, dict[str, float]] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.space = space
        self.evaluate = evaluate
        self.latency = latency
        self.settings = settings
        self.state_path = Path(state_path) if state_path is not None else None
        self.cache: MutableMapping[str, dict[str, float]] = {} if cache is None else cache
        self.context = json.loads(json.dumps(dict(context or {}), sort_keys=True, default=str))
        self.history: list[Candidate] = []
        self.learner = (
            ReinforceLearner(space.num_choices, settings.controller, settings.seed)
            if settings.strategy == "controller"
            else None
        )
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.resumed = 0
        if self.state_path is not None and self.state_path.is_file():
            self.load_state_dict(torch.load(self.state_path, map_location="cpu", weights_only=False))
            self.resumed = len(self.history)
            log.info("search: resumed %d candidates from %s", self.resumed, self.state_path)

    # -- state --------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "settings": self.settings.to_dict(),
            "space": self.space.to_dict(),
            "history": [c.to_dict() for c in self.history],
            "learner": self.learner.state_dict() if self.learner is not None else None,
            "generator": self.generator.get_state(),
            "context": self.context,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"search state version {state.get('version')!r}; expected {STATE_VERSION}")

        # the budget may grow between runs (continue a finished search); everything else must match
        def budgetless(settings: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in settings.items() if k != "candidates"}

        for what, saved, now in (
            ("settings", budgetless(state["settings"]), budgetless(self.settings.to_dict())),
            ("space", state["space"], self.space.to_dict()),
            ("evaluation context", state.get("context", {}), self.context),
        ):
            if saved != now:
                raise ValueError(
                    f"the search state at {self.state_path} was written with other {what}: {saved} (saved) vs "
                    f"{now} (now); use another state path to start a new search"
                )
        self.history = [Candidate(**c) for c in state["history"]]
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
        self.generator.set_state(state["generator"])
        for c in self.history:
            self.cache.setdefault(
                c.key, {"acc": c.acc, "params": c.params, "macs": c.macs, "train_s": c.train_s}
            )

    def save(self) -> None:
        """Write the state to ``state_path`` (a temporary file, then a rename: never half-written)."""
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(self.state_path.suffix + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.state_path)

    # -- loop ---------------------------------------------------------------------------------------------

    def _propose(self) -> list[int]:
        if self.learner is not None:
            return self.learner.sample()
        return [int(torch.randint(n, (1,), generator=self.generator)) for n in self.space.num_choices]

    def step(self) -> Candidate:
        """Propose, evaluate, score, learn, record and save one candidate."""
        s = self.settings
        decisions = self._propose()
        arch = self.space.decode(decisions)
        cached = arch.key in self.cache
        if cached:
            result = self.cache[arch.key]
        else:
            start = time.perf_counter()
            result = dict(self.evaluate(arch))
            result.setdefault("train_s", time.perf_counter() - start)
            self.cache[arch.key] = result
        lat = float(self.latency(arch))
        value = reward(float(result["acc"]), lat, s.target_ms, s.alpha, s.beta)
        candidate = Candidate(
            index=len(self.history),
            arch=arch.to_dict(),
            key=arch.key,
            acc=float(result["acc"]),
            latency_ms=lat,
            reward=value,
            params=int(result.get("params", 0)),
            macs=int(result.get("macs", 0)),
            train_s=float(result.get("train_s", 0.0)),
            cached=cached,
            decisions=list(decisions),
        )
        if self.learner is not None:
            candidate.log_prob = self.learner.log_prob(decisions)
            candidate.advantage = self.learner.update(decisions, value)["advantage"]
        self.history.append(candidate)
        self.save()
        log.info(
            "search %s %d/%d: acc %.4f, latency %.3f ms, reward %.4f%s  %s",
            s.strategy,
            candidate.index + 1,
            s.candidates,
            candidate.acc,
            lat,
            value,
            " (seen before)" if cached else "",
            arch.key,
        )
        return candidate

    def run(self, stop_after: int | None = None) -> SearchResult:
        """Evaluate candidates until the budget is spent (or ``stop_after`` more, to pause); return the result."""
        todo = self.settings.candidates - len(self.history)
        if stop_after is not None:
            todo = min(todo, int(stop_after))
        for _ in range(max(0, todo)):
            self.step()
        return self.result()

    def result(self) -> SearchResult:
        if not self.history:
            raise ValueError("the search has no candidates yet; call run() first")
        return SearchResult(self.settings, list(self.history))
