"""``python train.py nas=mnas_soft``: the platform-aware search as a Hydra job (see ``conf/nas/``).

:func:`run_search` builds the search from the composed config (``cfg.data``, the ``model=mnas_space``
skeleton, ``cfg.nas``), fills the latency table, runs the search (resumable from ``nas.state_path``),
checks the table against measured latency for the best and the Pareto-optimal candidates, and writes into
``<output_dir>/nas/``:

* ``search.json``: every candidate (architecture, accuracy, predicted latency, reward, params, MACs), the
  Pareto front, the best, the target, the predicted-vs-measured check and the table's header;
* ``model/mnas_best.yaml``: the best candidate as a ``model`` config, retrained with
  ``python train.py hydra.searchpath=[file://<output_dir>/nas] model=mnas_best``.

It returns ``nas/*`` metrics and the best candidate's model config; :func:`effdl_lightning.run.run` then
retrains that model as a normal job when ``nas.retrain`` is set.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from effdl_lightning.core.nas.latency_table import LatencySettings, LatencyTable
from effdl_lightning.core.nas.mnas import Architecture, SearchSpace
from effdl_lightning.nas.controller import ReinforceConfig
from effdl_lightning.nas.evaluate import CandidateTrainer
from effdl_lightning.nas.latency import LatencyPredictor, compare_predicted_measured
from effdl_lightning.nas.search import PlatformAwareSearch, SearchResult, SearchSettings
from effdl_lightning.nas.space import CandidateBuilder

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    """What :func:`run_search` returns: scalar metrics, the best model's config node, the full result."""

    metrics: dict[str, float]
    model: DictConfig
    result: SearchResult
    output_dir: Path


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def space_from_config(nas: DictConfig, num_stages: int) -> SearchSpace:
    """The :class:`SearchSpace` of ``nas.space`` with one stage per skeleton stage."""
    space = dict(_plain(nas.get("space")) or {})
    return SearchSpace(
        num_stages=num_stages,
        **{k: tuple(v) for k, v in space.items()},
    )


def latency_settings(nas: DictConfig) -> LatencySettings:
    lat = dict(_plain(nas.latency))
    return LatencySettings(**{k: lat[k] for k in ("batch_size", "threads", "warmup", "repeats") if k in lat})


def target_latency(nas: DictConfig, predictor: LatencyPredictor) -> tuple[float, dict[str, Any]]:
    """``T`` in ms: ``nas.target_ms``, or ``nas.target_fraction`` × the table-predicted latency of the reference.

    The reference is ``nas.reference`` (one stage's choices, applied to every stage; MobileNetV2-style by
    default). Its latency is *predicted* by the same table as the candidates', so ``T`` and ``LAT`` share
    the table's bias.
    """
    reference = dict(_plain(nas.get("reference")) or {})
    num_stages = predictor.builder.num_stages
    ref_arch = Architecture.from_dict([reference] * num_stages) if reference else None
    info: dict[str, Any] = {"reference": reference or None}
    if nas.get("target_ms") is not None:
        target = float(nas.target_ms)
        if not target > 0:
            raise ValueError(f"nas.target_ms must be > 0; got {target}")
        info["source"] = "nas.target_ms"
    else:
        fraction = nas.get("target_fraction")
        if fraction is None or not float(fraction) > 0:
            raise ValueError(
                f"set nas.target_ms (ms) or nas.target_fraction (> 0); got target_fraction={fraction}"
            )
        if ref_arch is None:
            raise ValueError(
                "nas.target_fraction needs nas.reference (the stage choices of the reference model)"
            )
        info["reference_predicted_ms"] = predictor(ref_arch)
        target = float(fraction) * info["reference_predicted_ms"]
        info["source"] = f"{float(fraction)} x predicted latency of the reference"
    info["target_ms"] = target
    return target, info


def best_model_node(model: DictConfig, arch: Architecture) -> DictConfig:
    """``model`` (unresolved, so ``${data...}`` interpolations stay) with its stages set to ``arch``."""
    node = OmegaConf.create(OmegaConf.to_container(model, resolve=False))
    assert isinstance(node, DictConfig)
    node.stages = arch.to_dict()
    return node


def _write_best_yaml(path: Path, node: DictConfig, result: SearchResult, output_dir: Path) -> None:
    best = result.best
    header = [
        "# Best candidate of a platform-aware search (MnasNet reward ACC·(LAT/T)^w, arXiv 1807.11626):",
        f"# proxy val acc {best.acc:.4f}, table latency {best.latency_ms:.3f} ms, reward {best.reward:.4f}, "
        f"{best.params} params, {best.macs} MACs (candidate {best.index} of {len(result.history)}).",
        "# Retrain it:",
        f"#   python train.py hydra.searchpath=[file://{output_dir}] model={path.stem}",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n" + OmegaConf.to_yaml(node))


def run_search(cfg: DictConfig) -> SearchOutcome:
    """Run the search that ``cfg.nas`` describes (module docstring); ``trainer.fast_dev_run`` shrinks it to
    two candidates of one batch each."""
    nas = cfg.nas
    seed = int(cfg.seed) if cfg.get("seed") is not None else 0
    pl.seed_everything(seed, workers=True, verbose=False)
    fast = bool(cfg.get("trainer", {}).get("fast_dev_run", False))
    builder = CandidateBuilder.from_model_config(_plain(cfg.model))
    space = space_from_config(nas, builder.num_stages)
    builder.check_space(space)
    table_path = nas.latency.get("table")
    table = LatencyTable(latency_settings(nas), table_path)
    predictor = LatencyPredictor(builder, table)
    if nas.latency.get("prefill", True) and not fast:
        measured = predictor.ensure(builder.block_keys(space))
        log.info("latency table %s: %d entries, %d measured now", table_path, len(table), measured)
    target, target_info = target_latency(nas, predictor)

    datamodule = instantiate(cfg.data, _convert_="all")
    cand = nas.candidate
    trainer_args: dict[str, Any] = {
        "epochs": int(cand.epochs),
        "limit_train_batches": cand.get("limit_train_batches"),
        "limit_val_batches": cand.get("limit_val_batches"),
    }
    if fast:
        trainer_args = {"epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1}
    optimizer = instantiate(cand.optimizer, _convert_="all") if cand.get("optimizer") is not None else None
    evaluate = CandidateTrainer(
        datamodule,
        builder,
        optimizer=optimizer,
        cosine=bool(cand.get("cosine", True)),
        seed=seed,
        threads=cand.get("threads"),
        **trainer_args,
    )
    settings = SearchSettings(
        strategy=str(nas.strategy),
        candidates=min(int(nas.candidates), 2) if fast else int(nas.candidates),
        target_ms=target,
        alpha=float(nas.alpha),
        beta=float(nas.beta),
        seed=seed,
        controller=ReinforceConfig(**dict(_plain(nas.controller) or {})),
    )
    context = {
        "data": {k: v for k, v in dict(_plain(cfg.data)).items() if "dir" not in k},
        "candidate": _plain(cand) if not fast else trainer_args,
        "skeleton": builder.skeleton,
        "input_shape": list(builder.input_shape),
        "latency": table.header,
    }
    search = PlatformAwareSearch(space, evaluate, predictor, settings, nas.get("state_path"), context=context)
    result = search.run()

    best = result.best
    check_archs = [
        Architecture.from_dict(c.arch) for c in [best, *[p for p in result.pareto if p.key != best.key]]
    ]
    rounds = int(nas.latency.get("check_rounds", 3))
    check = compare_predicted_measured(predictor, check_archs, rounds=rounds) if rounds > 0 else []

    output_dir = Path(str(cfg.paths.output_dir)) / "nas"
    output_dir.mkdir(parents=True, exist_ok=True)
    node = best_model_node(cfg.model, Architecture.from_dict(best.arch))
    _write_best_yaml(output_dir / "model" / "mnas_best.yaml", node, result, output_dir)
    summary = {
        **result.to_dict(),
        "target": target_info,
        "space": space.to_dict(),
        "space_size": space.size,
        "latency_table": {"path": str(table_path), "header": table.header, "entries": len(table)},
        "predicted_vs_measured": check,
        "resumed_candidates": search.resumed,
    }
    (output_dir / "search.json").write_text(json.dumps(summary, indent=1) + "\n")

    metrics = {
        "nas/best_reward": best.reward,
        "nas/best_val_acc": best.acc,
        "nas/best_latency_ms": best.latency_ms,
        "nas/best_params": float(best.params),
        "nas/best_macs": float(best.macs),
        "nas/target_ms": target,
        "nas/candidates": float(len(result.history)),
        "nas/unique_candidates": float(len({c.key for c in result.history})),
        "nas/pareto_size": float(len(result.pareto)),
    }
    if check:
        metrics["nas/best_measured_latency_ms"] = check[0]["measured_ms"]
        metrics["nas/best_latency_rel_error"] = check[0]["rel_error"]
    log.info(
        "search done: best %s (acc %.4f, %.3f ms predicted, reward %.4f); results in %s",
        best.key,
        best.acc,
        best.latency_ms,
        best.reward,
        output_dir,
    )
    return SearchOutcome(metrics, node, result, output_dir)
