"""The policy-gradient controller of NASNet / MnasNet: an LSTM that emits one decision per factor.

NASNet (Zoph et al., arXiv 1707.07012; first in arXiv 1611.01578) and MnasNet (arXiv 1807.11626) sample an
architecture as a sequence of tokens from a recurrent controller: at step ``t`` the LSTM reads the embedding
of the previous decision and a softmax over decision ``t``'s options picks the next token. The controller's
parameters ``θ`` maximize the expected reward ``J(θ) = E_{a∼π_θ}[R(a)]`` with REINFORCE (Williams 1992)::

    ∇J ≈ (R(a) − b) · Σ_t ∇ log π_θ(a_t | a_<t)

with the exponential moving average baseline ``b ← d·b + (1 − d)·R`` (ENAS, arXiv 1802.03268) to reduce the
variance, and an entropy bonus ``λ · Σ_t H(π_θ(· | a_<t))`` against early collapse. MnasNet trains the
same controller with PPO; one REINFORCE step per sampled candidate is the simpler NASNet/ENAS form.

The output layers start at zero, so the first policy is uniform: the controller begins as random search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ReinforceConfig:
    """Hyper-parameters of the controller and its REINFORCE updates.

    Args:
        lr: Adam learning rate of the controller.
        entropy_weight: weight ``λ`` of the entropy bonus.
        baseline_decay: ``d`` of the moving-average baseline (the first reward initializes it).
        hidden: LSTM hidden size (and decision embedding size).
    """

    lr: float = 0.05
    entropy_weight: float = 1e-3
    baseline_decay: float = 0.9
    hidden: int = 64

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not self.entropy_weight >= 0:
            raise ValueError(f"entropy_weight must be >= 0; got {self.entropy_weight}")
        if not 0.0 <= self.baseline_decay < 1.0:
            raise ValueError(f"baseline_decay must be in [0, 1); got {self.baseline_decay}")
        if int(self.hidden) < 1:
            raise ValueError(f"hidden must be >= 1; got {self.hidden}")


class PolicyController(nn.Module):
    """An autoregressive categorical policy over decisions with ``num_choices[t]`` options each.

    Args:
        num_choices: options of each decision, in order (each ≥ 2).
        hidden: LSTM hidden size.
    """

    def __init__(self, num_choices: Sequence[int], hidden: int = 64) -> None:
        super().__init__()
        self.num_choices = tuple(int(n) for n in num_choices)
        if not self.num_choices or min(self.num_choices) < 2:
            raise ValueError(
                f"num_choices must be a non-empty list of integers >= 2; got {list(num_choices)}"
            )
        self.hidden = int(hidden)
        self.start = nn.Parameter(torch.zeros(1, self.hidden))
        offsets = [0]
        for n in self.num_choices[:-1]:
            offsets.append(offsets[-1] + n)
        self.offsets = tuple(offsets)
        self.embedding = nn.Embedding(sum(self.num_choices), self.hidden)
        self.lstm = nn.LSTMCell(self.hidden, self.hidden)
        heads = [nn.Linear(self.hidden, n) for n in self.num_choices]
        for head in heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.heads = nn.ModuleList(heads)

    def forward(
        self, actions: Sequence[int] | None = None, generator: torch.Generator | None = None
    ) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample decisions (``actions=None``) or score the given ones.

        Returns:
            ``(actions, log_prob, entropy, step_log_probs)``: the decisions, ``Σ_t log π(a_t | a_<t)``,
            ``Σ_t H(π(· | a_<t))`` and the per-step log-probabilities (shape ``(T,)``).
        """
        if actions is not None and len(actions) != len(self.num_choices):
            raise ValueError(f"expected {len(self.num_choices)} actions; got {len(actions)}")
        x = self.start
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        chosen: list[int] = []
        log_probs, entropies = [], []
        for t, head in enumerate(self.heads):
            h, c = self.lstm(x, state)
            state = (h, c)
            logp = F.log_softmax(head(h), dim=-1)[0]
            if actions is None:
                a = int(torch.multinomial(logp.detach().exp(), 1, generator=generator))
            else:
                a = int(actions[t])
                if not 0 <= a < self.num_choices[t]:
                    raise ValueError(f"action {a} of decision {t} not in [0, {self.num_choices[t]})")
            chosen.append(a)
            log_probs.append(logp[a])
            entropies.append(-(logp.exp() * logp).sum())
            x = self.embedding(torch.tensor([self.offsets[t] + a]))
        step = torch.stack(log_probs)
        return chosen, step.sum(), torch.stack(entropies).sum(), step

    @torch.no_grad()
    def probabilities(self, actions: Sequence[int]) -> list[torch.Tensor]:
        """The policy's distribution at every step, conditioned on the previous ``actions``."""
        x, state, out = self.start, None, []
        for t, head in enumerate(self.heads):
            h, c = self.lstm(x, state)
            state = (h, c)
            out.append(F.softmax(head(h), dim=-1)[0])
            x = self.embedding(torch.tensor([self.offsets[t] + int(actions[t])]))
        return out


class ReinforceLearner:
    """A :class:`PolicyController`, its Adam optimizer, the moving-average baseline and its own sampler.

    Everything that determines the next sample and update is in :meth:`state_dict` (for resuming a search).

    Args:
        num_choices: options of each decision (``SearchSpace.num_choices``).
        config: hyper-parameters.
        seed: seeds the controller's initialization and its sampling generator.
    """

    def __init__(
        self, num_choices: Sequence[int], config: ReinforceConfig | None = None, seed: int = 0
    ) -> None:
        self.config = config or ReinforceConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.controller = PolicyController(num_choices, self.config.hidden)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=self.config.lr)
        self.baseline: float | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.updates = 0

    def sample(self) -> list[int]:
        """One architecture's decisions from the current policy."""
        with torch.no_grad():
            actions, _, _, _ = self.controller(generator=self.generator)
        return actions

    def log_prob(self, actions: Sequence[int]) -> float:
        """``log π(actions)`` under the current policy."""
        with torch.no_grad():
            return float(self.controller(actions)[1])

    def update(self, actions: Sequence[int], reward: float) -> dict[str, float]:
        """One REINFORCE step on ``(actions, reward)``; then the baseline moves toward ``reward``.

        The advantage is ``reward − b`` with the baseline *before* this reward (the first reward initializes
        ``b`` and gives advantage 0). Returns the advantage, the loss, the baseline after, the log-probability
        and the entropy.
        """
        baseline = reward if self.baseline is None else self.baseline
        advantage = float(reward) - baseline
        self.controller.train()
        _, log_prob, entropy, _ = self.controller(actions)
        loss = -advantage * log_prob - self.config.entropy_weight * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        d = self.config.baseline_decay
        self.baseline = d * baseline + (1.0 - d) * float(reward)
        self.updates += 1
        return {
            "advantage": advantage,
            "loss": float(loss.detach()),
            "baseline": self.baseline,
            "log_prob": float(log_prob.detach()),
            "entropy": float(entropy.detach()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "baseline": self.baseline,
            "generator": self.generator.get_state(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != asdict(self.config):
            raise ValueError(
                f"controller state was saved with {state['config']}; this one has {asdict(self.config)}"
            )
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.baseline = state["baseline"]
        self.generator.set_state(state["generator"])
        self.updates = int(state["updates"])
