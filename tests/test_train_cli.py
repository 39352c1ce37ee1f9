"""The README's commands, run as a user runs them: `python train.py ...` in a subprocess."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import ROOT

pytestmark = pytest.mark.slow

# keep each run to a few batches: the behaviour under test is the plumbing, not the accuracy
FAST = ["trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2"]


def _train(cwd: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    flags = [o for o in overrides if o.startswith("-")]  # Hydra's flags (-m) go before the overrides
    rest = [o for o in overrides if not o.startswith("-")]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *flags, "callbacks.progress_bar=null", *rest],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"train.py {' '.join(overrides)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _runs(cwd: Path, kind: str = "runs") -> list[Path]:
    return sorted((cwd / "logs" / "train" / kind).glob("*"))


def test_lenet300_on_digits_prints_the_report(tmp_path: Path) -> None:
    proc = _train(tmp_path, "model=lenet300", "data=digits", "trainer.max_epochs=1")
    out = proc.stdout + proc.stderr
    assert "Compression report" in out and "params_nonzero" in out
    (run_dir,) = _runs(tmp_path)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run_dir / "csv" / "version_0" / "metrics.csv").open()))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"train/loss_epoch", "val/acc", "test/acc", "compress/params", "compress/macs"} <= logged
    # LeNet-300-100 on 8x8 digits: 64*300+300 + 300*100+100 + 100*10+10 parameters
    params = {float(row["compress/params"]) for row in rows if row.get("compress/params")}
    assert params == {64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10}


def test_multirun_seeds(tmp_path: Path) -> None:
    _train(tmp_path, "-m", "seed=0,1", "trainer.max_epochs=1", *FAST)
    (sweep,) = _runs(tmp_path, "multiruns")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1"]
    for job in jobs:
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()


def test_wandb_offline_logger(tmp_path: Path) -> None:
    _train(tmp_path, "logger=wandb", "logger.wandb.offline=true", "trainer.max_epochs=1", *FAST)
    (run_dir,) = _runs(tmp_path)
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and any(offline_runs[0].rglob("*.wandb"))


def test_resume_from_last_checkpoint_continues_the_fit(tmp_path: Path) -> None:
    _train(tmp_path, "trainer.max_epochs=1", *FAST)
    (first,) = _runs(tmp_path)
    last = first / "checkpoints" / "last.ckpt"
    first_ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert first_ckpt["epoch"] == 0 and first_ckpt["global_step"] == 4
    _train(tmp_path, f"ckpt_path={last}", "trainer.max_epochs=2", *FAST)
    second = next(p for p in _runs(tmp_path) if p != first)
    resumed = torch.load(second / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 8  # continued, not restarted


def test_last_checkpoint_is_the_latest_epoch_even_when_an_earlier_one_is_the_best(tmp_path: Path) -> None:
    # the highest training loss is the first epoch's: the kept "best" checkpoint is epoch 0
    _train(
        tmp_path,
        "trainer.max_epochs=3",
        "callbacks.model_checkpoint.monitor=train/loss_epoch",
        "callbacks.model_checkpoint.mode=max",
        *FAST,
    )
    (run_dir,) = _runs(tmp_path)
    kept = [p.name for p in (run_dir / "checkpoints").glob("epoch_*.ckpt")]
    assert kept == ["epoch_000.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 2 and last["global_step"] == 12


def test_optuna_sweep_returns_the_metric(tmp_path: Path) -> None:
    _train(
        tmp_path,
        "-m",
        "hparams_search=mnist_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
        "trainer.max_epochs=1",
        *FAST,
    )
    (sweep,) = _runs(tmp_path, "multiruns")
    results = (sweep / "optimization_results.yaml").read_text()
    assert "best_params" in results and "best_value" in results


def test_missing_dataset_file_offline_says_what_to_do(tmp_path: Path) -> None:
    proc = _train(tmp_path, "data=mnist_idx", "trainer.max_epochs=1", check=False)
    assert proc.returncode != 0
    assert "train-images-idx3-ubyte" in proc.stderr and "data=mnist" in proc.stderr


def test_unknown_model_lists_known_models(tmp_path: Path) -> None:
    proc = _train(tmp_path, "model=resnet9000", check=False)
    assert proc.returncode != 0
    assert "Could not find 'model/resnet9000'" in proc.stderr and "lenet5" in proc.stderr


@pytest.mark.ddp
def test_ddp_with_two_cpu_processes(tmp_path: Path) -> None:
    proc = _train(tmp_path, "trainer=ddp_cpu", "trainer.max_epochs=1", *FAST)
    (run_dir,) = _runs(tmp_path)
    assert (run_dir / "train_ddp_process_1.log").is_file()  # the second process really ran
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert "Compression report" in proc.stdout + proc.stderr
