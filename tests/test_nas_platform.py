"""Platform-aware search (MnasNet): reward, space, latency table, controller, search, Hydra job, benchmark."""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf

from effdl_lightning.core.nas import (
    Architecture,
    LatencySettings,
    LatencyTable,
    SearchSpace,
    StageChoice,
    reward,
)
from effdl_lightning.core.nas.mnas import HARD, SOFT
from effdl_lightning.data import MNISTSubsetDataModule
from effdl_lightning.measure import profile
from effdl_lightning.models import MnasSpaceNet, create
from effdl_lightning.nas import (
    CandidateBuilder,
    CandidateTrainer,
    LatencyPredictor,
    MnasRewardCallback,
    PlatformAwareSearch,
    PolicyController,
    ReinforceConfig,
    ReinforceLearner,
    SearchSettings,
    build_candidate,
    pareto_front,
)
from effdl_lightning.nas import latency as nas_latency
from effdl_lightning.nas import objective as nas_objective
from effdl_lightning.nas.search import Candidate
from effdl_lightning.run import run

from .conftest import CONF_DIR, ComposeFn

MNIST = (1, 28, 28)
BASE = {"kernel": 3, "expansion": 3, "se": False, "layers": 1, "width": 1.0}
#: a small space for searches in tests (8 architectures)
TINY = SearchSpace(kernels=(3, 5), expansions=(1, 3), se=(False, True), layers=(1,))


def fake_latency(arch: Architecture) -> float:
    return sum(s.layers * (1.0 + 0.5 * s.se + 0.1 * s.expansion + 0.2 * (s.kernel == 5)) for s in arch.stages)


def fake_evaluate(arch: Architecture) -> dict[str, float]:
    return {"acc": 0.5 + 0.01 * sum(s.expansion for s in arch.stages), "params": 1, "macs": 1}


# -- reward -------------------------------------------------------------------------------------------------


def test_reward_soft_constraint_by_hand() -> None:
    assert reward(0.9, 2.0, 1.0, *SOFT) == pytest.approx(0.9 * 2.0**-0.07)
    assert reward(0.9, 0.5, 1.0, *SOFT) == pytest.approx(0.9 * 0.5**-0.07)  # faster than T: a bonus
    assert reward(0.9, 1.0, 1.0, *SOFT) == pytest.approx(0.9)
    # the paper's calibration: twice the latency is worth ~5% more accuracy
    assert reward(0.8 * 1.05, 2.0, 1.0) == pytest.approx(reward(0.8, 1.0, 1.0), rel=2e-3)
    assert reward(0.9, 2.0, 1.0, -0.07) == reward(0.9, 2.0, 1.0, -0.07, -0.07)  # beta defaults to alpha


def test_reward_hard_constraint_by_hand() -> None:
    assert reward(0.9, 0.5, 1.0, *HARD) == pytest.approx(0.9)  # within T: accuracy alone
    assert reward(0.9, 1.0, 1.0, *HARD) == pytest.approx(0.9)  # LAT = T counts as met
    assert reward(0.9, 2.0, 1.0, *HARD) == pytest.approx(0.45)  # (2T/T)^-1
    assert reward(0.9, 4.0, 2.0, 0.0, -1.0) == pytest.approx(0.45)


def test_reward_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"latency must be > 0; got 0"):
        reward(0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"target must be > 0; got -1"):
        reward(0.5, 1.0, -1.0)
    with pytest.raises(ValueError, match=r"acc must be >= 0; got -0.1"):
        reward(-0.1, 1.0, 1.0)


# -- space and architecture --------------------------------------------------------------------------------


def test_architecture_round_trips_through_dict_json_and_decisions() -> None:
    space = SearchSpace(widths=(0.5, 1.0))
    arch = space.sample(torch.Generator().manual_seed(3))
    assert Architecture.from_dict(arch.to_dict()) == arch
    assert Architecture.from_json(arch.to_json()) == arch
    assert Architecture.from_dict(list(arch.to_dict().values())) == arch
    assert space.decode(space.encode(arch)) == arch
    assert list(arch.to_dict()) == ["s1", "s2", "s3", "s4"]
    assert set(arch.to_dict()["s1"]) == {"kernel", "expansion", "se", "layers", "width"}
    json.dumps(arch.to_dict())  # plain data
    assert len(space.decisions) == 4 * 5 and space.size == (2 * 3 * 2 * 3 * 2) ** 4
    assert SearchSpace().size == 36**4 and len(SearchSpace().decisions) == 16  # width fixed: not a decision


def test_architecture_and_space_refuse_bad_values_naming_them() -> None:
    with pytest.raises(
        ValueError, match=r"kernels: \[4\] not allowed; every choice must be a positive odd integer"
    ):
        SearchSpace(kernels=(3, 4))
    with pytest.raises(ValueError, match=r"layers must not repeat a choice; got \[1, 1\]"):
        SearchSpace(layers=(1, 1))
    with pytest.raises(ValueError, match=r"expansions must list at least one choice"):
        SearchSpace(expansions=())
    arch = Architecture((StageChoice(7, 3, False, 1),) * 4)
    with pytest.raises(ValueError, match=r"stage s1: kernel=7 is not in the space; allowed: \[3, 5\]"):
        SearchSpace().encode(arch)
    with pytest.raises(ValueError, match=r"stage s1: missing \['layers'\], unknown \['depth'\]"):
        Architecture.from_dict({"s1": {"kernel": 3, "expansion": 1, "se": False, "depth": 2}})
    with pytest.raises(
        ValueError, match=r"stages must have the keys \['s1', 's2', 's3', 's4'\]; got \['s1'\]"
    ):
        MnasSpaceNet(stages={"s1": BASE})
    with pytest.raises(ValueError, match=r"stage s2: kernel must be a positive odd integer; got 4"):
        MnasSpaceNet(stages=[BASE, {**BASE, "kernel": 4}, BASE, BASE])


@pytest.mark.parametrize(
    ("factor", "values"),
    [("kernel", (3, 5)), ("expansion", (1, 3, 6)), ("layers", (1, 2, 3)), ("width", (0.5, 1.0, 1.5))],
)
def test_every_choice_builds_and_macs_grow_with_it(factor: str, values: tuple[Any, ...]) -> None:
    macs = []
    for value in values:
        arch = Architecture.from_dict([{**BASE, factor: value}] * 4)
        model = build_candidate(arch, num_classes=7, input_shape=MNIST)
        assert model.eval()(torch.randn(2, *MNIST)).shape == (2, 7)
        macs.append(profile(model, MNIST, latency=False).macs)
    assert macs == sorted(macs) and len(set(macs)) == len(macs), macs


def test_se_choice_adds_squeeze_excite_and_other_inputs_work() -> None:
    plain = build_candidate(Architecture.from_dict([BASE] * 4))
    with_se = build_candidate(Architecture.from_dict([{**BASE, "se": True}] * 4), 5, (3, 32, 32))
    assert sum(type(m).__name__ == "SqueezeExcite" for m in with_se.modules()) == 4
    assert not any(type(m).__name__ == "SqueezeExcite" for m in plain.modules())
    assert with_se.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_model_config_fields_are_the_architecture_dict(compose_cfg: ComposeFn) -> None:
    arch = SearchSpace().sample(torch.Generator().manual_seed(0))
    overrides = [f"model.stages.{s}.{f}={v}" for s, d in arch.to_dict().items() for f, v in d.items()]
    cfg = compose_cfg(["model=mnas_space", *overrides])
    assert Architecture.from_dict(OmegaConf.to_container(cfg.model.stages)) == arch  # type: ignore[arg-type]
    node = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(node, dict)
    node.pop("_target_")
    from_config = create("mnas_space", **node)
    built = CandidateBuilder.from_model_config(OmegaConf.to_container(cfg.model, resolve=True)).build(arch)  # type: ignore[arg-type]
    assert [b.key for b in from_config.plan] == [b.key for b in built.plan]


# -- latency table -------------------------------------------------------------------------------------------


class CountingMeasure:
    """A fake measurement: a fixed latency per key, counting the calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, key: str) -> tuple[float, float, float]:
        self.calls[key] += 1
        value = 0.1 + (sum(map(ord, key)) % 97) / 100
        return value, value * 0.9, value * 1.1


def test_latency_table_is_reused_rather_than_remeasured(tmp_path: Path) -> None:
    path = tmp_path / "table.json"
    settings = LatencySettings(batch_size=1, threads=1)
    keys = ["a", "b", "c", "b"]
    measure = CountingMeasure()
    first = LatencyTable(settings, path)
    assert first.ensure(keys, measure) == 3 and sum(measure.calls.values()) == 3  # "b" once
    data = json.loads(path.read_text())
    assert data["header"]["threads"] == 1 and data["header"]["batch_size"] == 1
    assert data["header"]["torch"] == torch.__version__ and data["header"]["runtime"] == "eager"
    second = LatencyTable(settings, path)
    assert second.loaded == 3
    assert second.ensure(keys, measure) == 0 and sum(measure.calls.values()) == 3  # reused
    assert second.ensure([*keys, "d"], measure) == 1 and measure.calls["d"] == 1  # only the missing key
    assert second.predict(keys) == pytest.approx(sum(measure(k)[0] for k in keys))  # sum, repeats included
    with pytest.raises(ValueError, match=r"other settings \(threads: 1 \(file\) vs 2 \(now\)\)"):
        LatencyTable(LatencySettings(batch_size=1, threads=2), path)
    with pytest.raises(KeyError, match=r"no latency entry for 'zzz'"):
        second.predict(["zzz"])


def test_search_latency_is_keyed_per_block_and_reused_by_the_next_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, ...]] = []

    def fake_time(
        module: torch.nn.Module, shape: Any, settings: LatencySettings
    ) -> tuple[float, float, float]:
        calls.append(tuple(shape))
        return 0.5, 0.4, 0.6

    monkeypatch.setattr(nas_latency, "time_module", fake_time)
    path = tmp_path / "table.json"
    builder = CandidateBuilder()
    arch = Architecture.from_dict([{**BASE, "layers": 2}] * 4)
    keys = LatencyPredictor(builder, LatencyTable(LatencySettings(), path)).keys(arch)
    assert keys[:4] == [
        "stem/cn_r1_k3_s2_c8@1x28x28",
        "s1/ir_r1_k3_s1_e3_c8@8x14x14",
        "s1/ir_r1_k3_s1_e3_c8@8x14x14",  # the second layer: same configuration, same entry
        "s2/ir_r1_k3_s2_e3_c16@8x14x14",
    ]
    assert keys[-1] == "head/cn_r1_k1_s1_c64@32x4x4" and len(keys) == 2 + 4 * 2
    predictor = LatencyPredictor(builder, LatencyTable(LatencySettings(), path))
    assert predictor(arch) == pytest.approx(0.5 * len(keys))  # the sum of the entries, repeats included
    assert len(calls) == len(set(keys)) == 9  # stem, s1 (both layers alike), 2 per later stage, head
    assert calls[0] == MNIST and (8, 14, 14) in calls  # each block timed at its own input shape
    again = LatencyPredictor(builder, LatencyTable(LatencySettings(), path))
    assert again(arch) == pytest.approx(0.5 * len(keys)) and len(calls) == 9  # a new search: nothing measured


def test_block_keys_cover_every_architecture_of_the_space() -> None:
    space = SearchSpace(widths=(0.5, 1.0))
    builder = CandidateBuilder()
    covered = builder.block_keys(space)
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        assert {b.key for b in builder.plan(space.sample(generator))} <= set(covered)


# -- controller ------------------------------------------------------------------------------------------------


def test_controller_log_probabilities_are_consistent() -> None:
    torch.manual_seed(0)
    controller = PolicyController([2, 3, 2, 3], hidden=16)
    with torch.no_grad():
        for p in controller.heads.parameters():  # a non-uniform policy
            p.normal_(0, 1.0)
    actions, log_prob, entropy, steps = controller(generator=torch.Generator().manual_seed(1))
    probs = controller.probabilities(actions)
    assert all(float(p.sum()) == pytest.approx(1.0) for p in probs)
    expected = sum(math.log(float(p[a])) for p, a in zip(probs, actions, strict=True))
    assert float(log_prob.detach()) == pytest.approx(expected, abs=1e-5)
    _, again, _, again_steps = controller(actions)  # scoring the sampled actions gives the same values
    assert float(again.detach()) == pytest.approx(expected, abs=1e-5) and torch.allclose(again_steps, steps)
    expected_entropy = sum(float(-(p * p.log()).sum()) for p in probs)
    assert float(entropy.detach()) == pytest.approx(expected_entropy, abs=1e-5)
    uniform = PolicyController([2, 3])
    assert float(uniform([1, 2])[1].detach()) == pytest.approx(-math.log(6))  # starts uniform: random search


def test_reinforce_update_raises_the_probability_of_a_rewarded_choice() -> None:
    learner = ReinforceLearner([3, 3, 3], ReinforceConfig(lr=0.05, entropy_weight=0.0), seed=0)
    actions = learner.sample()
    before = learner.log_prob(actions)
    learner.baseline = 0.5
    info = learner.update(actions, 1.0)
    assert info["advantage"] == pytest.approx(0.5)
    assert learner.log_prob(actions) > before
    assert learner.baseline == pytest.approx(0.9 * 0.5 + 0.1 * 1.0)
    punished = ReinforceLearner([3, 3, 3], ReinforceConfig(lr=0.05, entropy_weight=0.0), seed=0)
    punished.baseline = 0.5
    punished.update(actions, 0.0)
    assert punished.log_prob(actions) < before
    first = ReinforceLearner([3, 3], seed=0)
    assert first.update([0, 0], 0.7)["advantage"] == 0.0 and first.baseline == pytest.approx(0.7)


def test_controller_learns_a_fixed_reward_better_than_random() -> None:
    space = SearchSpace(kernels=(3, 5), expansions=(1, 6), se=(False,), layers=(1,))

    def acc_of_expansion(arch: Architecture) -> dict[str, float]:
        return {"acc": 0.1 + 0.2 * sum(s.expansion == 6 for s in arch.stages), "params": 1, "macs": 1}

    def one(strategy: str) -> float:
        settings = SearchSettings(strategy, 60, 1.0, 0.0, 0.0, seed=0, controller=ReinforceConfig(lr=0.1))
        history = PlatformAwareSearch(space, acc_of_expansion, lambda a: 1.0, settings).run().history
        return sum(c.acc for c in history[-20:]) / 20

    assert one("controller") > one("random") + 0.1


def test_random_search_samples_uniformly_within_the_space() -> None:
    space = SearchSpace()
    settings = SearchSettings("random", 600, 1.0, seed=0)
    history = PlatformAwareSearch(space, fake_evaluate, fake_latency, settings).run().history
    for d, n in enumerate(space.num_choices):
        counts = Counter(c.decisions[d] for c in history)
        assert set(counts) == set(range(n))
        expected = 600 / n
        assert all(abs(v - expected) < 4 * math.sqrt(expected * (1 - 1 / n)) for v in counts.values()), counts
    for c in history:
        space.validate(Architecture.from_dict(c.arch))


def test_pareto_front_keeps_the_non_dominated() -> None:
    def cand(i: int, acc: float, lat: float) -> Candidate:
        return Candidate(i, {}, f"a{i}", acc, lat, 0.0, 0, 0, 0.0, False, [])

    front = pareto_front([cand(0, 0.9, 2.0), cand(1, 0.8, 1.0), cand(2, 0.7, 1.5), cand(3, 0.95, 3.0)])
    assert [c.key for c in front] == ["a1", "a0", "a3"]


# -- search: resume --------------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_search_resumes_and_ends_where_an_uninterrupted_search_ends(tmp_path: Path) -> None:
    dm = MNISTSubsetDataModule(batch_size=16, seed=0, augment=False)
    trainer = CandidateTrainer(
        dm,
        CandidateBuilder(),
        limit_train_batches=1,
        limit_val_batches=1,
        optimizer=partial(torch.optim.Adam, lr=0.02),
        seed=0,
    )
    settings = SearchSettings("controller", 4, target_ms=2.0, seed=0, controller=ReinforceConfig(lr=0.1))

    whole = PlatformAwareSearch(TINY, trainer, fake_latency, settings, tmp_path / "whole.pt")
    expected = whole.run()

    evaluated = []

    def dies_on_third(arch: Architecture) -> dict[str, Any]:
        if len(evaluated) == 2:
            raise Interrupt
        evaluated.append(arch)
        return trainer(arch)

    path = tmp_path / "resumed.pt"
    with pytest.raises(Interrupt):
        PlatformAwareSearch(TINY, dies_on_third, fake_latency, settings, path).run()
    resumed = PlatformAwareSearch(TINY, trainer, fake_latency, settings, path)
    assert resumed.resumed == len(resumed.history) >= 2
    result = resumed.run()
    assert [c.to_dict() | {"train_s": 0} for c in result.history] == [
        c.to_dict() | {"train_s": 0} for c in expected.history
    ]
    for key, value in whole.learner.controller.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(value, resumed.learner.controller.state_dict()[key]), key  # type: ignore[union-attr]
    assert whole.learner.baseline == resumed.learner.baseline  # type: ignore[union-attr]
    other = SearchSettings("controller", 4, target_ms=3.0, seed=0)
    with pytest.raises(ValueError, match=r"written with other settings"):
        PlatformAwareSearch(TINY, trainer, fake_latency, other, path)
    with pytest.raises(ValueError, match=r"written with other evaluation context: \{\} \(saved\)"):
        PlatformAwareSearch(TINY, trainer, fake_latency, settings, path, context={"steps": 50})


# -- Hydra job ---------------------------------------------------------------------------------------------------

TINY_NAS = [
    "nas.candidates=2",
    "nas.space.kernels=[3]",
    "nas.space.expansions=[1,3]",
    "nas.space.layers=[1]",
    "nas.candidate.limit_train_batches=1",
    "nas.candidate.limit_val_batches=1",
    "nas.latency.warmup=0",
    "nas.latency.repeats=2",
    "nas.latency.check_rounds=1",
    "data.batch_size=16",
    "callbacks.progress_bar=null",
]


def test_run_with_nas_searches_writes_the_best_and_retrains_it(
    compose_cfg: ComposeFn, tmp_path: Path
) -> None:
    limits = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    limits.append("trainer.log_every_n_steps=1")
    cfg = compose_cfg(["nas=mnas_hard", *TINY_NAS, *limits, "trainer.limit_test_batches=1"])
    assert cfg.nas.alpha == 0.0 and cfg.nas.beta == -1.0 and cfg.model._target_.endswith("MnasSpaceNet")
    metrics = run(cfg)
    assert metrics["nas/candidates"] == 2 and 0.0 <= metrics["nas/best_val_acc"] <= 1.0
    assert metrics["nas/best_latency_ms"] > 0 and metrics["nas/best_measured_latency_ms"] > 0
    assert "test/acc" in metrics and metrics["compress/params"] == metrics["nas/best_params"]
    out = Path(cfg.paths.output_dir) / "nas"
    summary = json.loads((out / "search.json").read_text())
    assert len(summary["history"]) == 2 and summary["best"]["reward"] == metrics["nas/best_reward"]
    assert {"arch", "acc", "latency_ms", "reward", "params", "macs"} <= set(summary["history"][0])
    assert summary["predicted_vs_measured"][0]["arch"] == summary["best"]["arch"]
    # the written model config retrains through train.py's composition
    best = compose_cfg([f"hydra.searchpath=[file://{out}]", "model=mnas_best"])
    assert Architecture.from_dict(OmegaConf.to_container(best.model.stages)) == Architecture.from_dict(  # type: ignore[arg-type]
        summary["best"]["arch"]
    )
    table = Path(cfg.nas.latency.table)
    entries = json.loads(table.read_text())["entries"]
    builder = CandidateBuilder()
    space_keys = builder.block_keys(SearchSpace(kernels=(3,), expansions=(1, 3), layers=(1,)))  # prefilled
    reference = {b.key for b in builder.plan(Architecture.from_dict([dict(cfg.nas.reference)] * 4))}  # for T
    assert set(entries) == set(space_keys) | reference


def test_run_with_nas_reuses_the_table_and_resumes(
    compose_cfg: ComposeFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state.pt"
    cfg = compose_cfg(["nas=random", *TINY_NAS, "nas.retrain=false", f"nas.state_path={state}"])
    first = run(cfg)
    assert not any(k.startswith("test/") for k in first)  # retrain=false: the search only
    calls: list[Any] = []
    real = nas_latency.time_module
    monkeypatch.setattr(nas_latency, "time_module", lambda *a: calls.append(a) or real(*a))
    cfg.nas.candidates = 3
    second = run(cfg)  # same table, same state: reuses both and evaluates one more candidate
    assert second["nas/candidates"] == 3
    models_timed = [c for c in calls if isinstance(c[0], MnasSpaceNet)]
    assert len(calls) == len(models_timed)  # no block re-measured: only the whole-model check ran


def test_nas_needs_the_mnas_space_model(compose_cfg: ComposeFn) -> None:
    cfg = compose_cfg(["nas=mnas_soft", "model=lenet5", *TINY_NAS])
    with pytest.raises(
        ValueError, match=r"model=mnas_space .*got model._target_='effdl_lightning.models.LeNet5'"
    ):
        run(cfg)


def test_bad_search_arguments_name_the_value_and_the_allowed_set() -> None:
    with pytest.raises(
        ValueError, match=r"strategy must be one of \['controller', 'random'\]; got 'genetic'"
    ):
        SearchSettings(strategy="genetic")
    with pytest.raises(ValueError, match=r"runtime must be one of \['eager'\]; got 'onnx'"):
        LatencySettings(runtime="onnx")
    with pytest.raises(ValueError, match=r"baseline_decay must be in \[0, 1\); got 1.0"):
        ReinforceConfig(baseline_decay=1.0)
    with pytest.raises(ValueError, match=r"unknown skeleton argument\(s\) \['depth'\]; allowed"):
        CandidateBuilder(skeleton={"depth": 3})
    with pytest.raises(ValueError, match=r"search space has 3 stages but the skeleton has 4"):
        CandidateBuilder().check_space(SearchSpace(num_stages=3))
    with pytest.raises(MisconfigurationException, match=r"target_ms must be > 0; got -1"):
        MnasRewardCallback(target_ms=-1)
    with pytest.raises(MisconfigurationException, match=r"threads must be >= 1; got 0"):
        MnasRewardCallback(target_ms=1.0, threads=0)


# -- Optuna objective ---------------------------------------------------------------------------------------------


def test_optuna_config_composes_and_its_callback_computes_the_reward(
    compose_cfg: ComposeFn, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_cfg(["hparams_search=mnas_space_optuna"], keep_hydra=True)
    assert cfg.optimized_metric == "nas/reward" and cfg.model._target_.endswith("MnasSpaceNet")
    params = dict(cfg.hydra.sweeper.params)
    assert len(params) == 16
    for key in params:  # every swept field exists in the model config
        assert OmegaConf.select(cfg, key) is not None, key
    cfg = compose_cfg(
        ["hparams_search=mnas_space_optuna", "model.stages.s2.kernel=5", "model.stages.s4.se=true"]
    )
    timings = iter([2.0, 4.0, 2.0, 4.0, 2.0, 4.0])  # model, reference, alternating
    monkeypatch.setattr(nas_objective, "time_module", lambda *a: (next(timings), 0.0, 0.0))
    cfg.trainer.max_epochs = 1
    cfg.trainer.log_every_n_steps = 1
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        cfg.trainer[key] = 1
    cfg.callbacks.progress_bar = None
    metrics = run(cfg)
    # T = 0.7 x 4 ms; LAT = 2 ms <= T: reward = val_acc * (2 / 2.8)^-0.07
    assert metrics["nas/target_ms"] == pytest.approx(2.8)
    assert metrics["nas/reward"] == pytest.approx(metrics["val/acc"] * (2.0 / 2.8) ** -0.07)


# -- configs and benchmark -------------------------------------------------------------------------------------


def test_nas_group_options_comment_every_field() -> None:
    text = (CONF_DIR / "nas" / "mnas_soft.yaml").read_text().splitlines()
    for i, line in enumerate(text):
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "-", "_")) and ":" in stripped and i > 0:
            assert text[i - 1].strip().startswith("#") or "#" in line or stripped.endswith(":"), line


def test_platform_search_benchmark_quick(tmp_path: Path) -> None:
    from benchmarks import platform_search

    platform_search.main(["--quick", "--out", str(tmp_path)])
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"platform_search_quick.{suffix}").stat().st_size > 0
    assert not (tmp_path / "platform_search.json").exists()
    result = json.loads((tmp_path / "platform_search_quick.json").read_text())
    assert result["meta"]["quick"] and set(result["summary"]) == {
        "soft/controller",
        "soft/random",
        "hard/controller",
        "hard/random",
    }
    assert {r["job"] for r in result["runs"]} == {"controller-soft", "controller-hard", "random"}
    assert all(len(r["history"]) == 3 for r in result["runs"])
    assert set(result["measured_ms"]) == {c["key"] for r in result["runs"] for c in r["history"]}
    md = (tmp_path / "platform_search_quick.md").read_text()
    assert "Reproduce: `python -m benchmarks --only platform_search --quick" in md and "load average" in md
    assert "## Table-predicted vs measured latency" in md
