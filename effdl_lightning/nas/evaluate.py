"""Brief training of a candidate through our :class:`~effdl_lightning.modules.ClassificationModule`.

MnasNet trains each sampled model for 5 epochs on a proxy task (arXiv 1807.11626, Sec. 5); here a candidate
gets a few epochs or steps on the datamodule (CPU, no logger, no checkpoint, no sanity check) and is scored
by its accuracy on the validation split afterwards. The training seed is a function of the search seed and the
architecture (not of the order of sampling), so an architecture scores the same in any search of that seed.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zlib
from collections.abc import Iterator
from functools import partial
from typing import Any

import lightning.pytorch as pl
from torch.optim.lr_scheduler import CosineAnnealingLR

from effdl_lightning.core.nas.mnas import Architecture
from effdl_lightning.measure import count_parameters, profile
from effdl_lightning.measure.latency import num_threads
from effdl_lightning.modules.classification import ClassificationModule, OptimizerFactory
from effdl_lightning.nas.space import CandidateBuilder

_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
_EXPECTED_WARNINGS = (
    ".*does not have many workers.*",
    ".*GPU available but not used.*",
    ".*treespec.*",
    ".*smaller than the logging interval.*",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-``Trainer`` info logs and the expected CPU warnings, then restore them."""
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    try:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for pattern in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def candidate_seed(seed: int, arch: Architecture) -> int:
    """The training seed of ``arch`` in a search seeded ``seed`` (stable across processes)."""
    return (int(seed) * 1_000_003 + zlib.crc32(arch.key.encode())) % (2**31)


class CandidateTrainer:
    """``evaluate(arch)`` for :class:`~effdl_lightning.nas.search.PlatformAwareSearch`: build, train, validate.

    A candidate trains for ``epochs`` epochs of ``limit_train_batches`` batches with the learning rate decayed
    to zero by a per-step cosine (a short run ends on settled weights), then one validation pass scores it.

    Args:
        datamodule: the data (its validation split scores the candidates).
        builder: builds a candidate's network.
        epochs: training epochs per candidate.
        limit_train_batches: batches per epoch (``None``: all; int: a count; float: a fraction).
        limit_val_batches: validation batches (same convention).
        optimizer: ``params -> Optimizer`` (default: the module's SGD).
        cosine: decay the learning rate to 0 over the candidate's steps.
        seed: the search seed (each candidate's training seed derives from it and the architecture).
        threads: torch intra-op threads while training (``None``: unchanged).
    """

    def __init__(
        self,
        datamodule: pl.LightningDataModule,
        builder: CandidateBuilder,
        *,
        epochs: int = 1,
        limit_train_batches: int | float | None = None,
        limit_val_batches: int | float | None = None,
        optimizer: OptimizerFactory | None = None,
        cosine: bool = True,
        seed: int = 0,
        threads: int | None = None,
    ) -> None:
        if int(epochs) < 1:
            raise ValueError(f"epochs must be >= 1; got {epochs}")
        for name, value in (
            ("limit_train_batches", limit_train_batches),
            ("limit_val_batches", limit_val_batches),
        ):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 (a count or a fraction) or None; got {value}")
        self.datamodule = datamodule
        self.builder = builder
        self.epochs = int(epochs)
        self.limit_train_batches = limit_train_batches
        self.limit_val_batches = limit_val_batches
        self.optimizer = optimizer
        self.cosine = bool(cosine)
        self.seed = int(seed)
        self.threads = threads

    def steps(self) -> int:
        """Optimizer steps per candidate: ``epochs`` × the batches of one (limited) epoch."""
        self.datamodule.setup("fit")
        batches = len(self.datamodule.train_dataloader())
        limit = self.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None:
            batches = max(1, int(batches * float(limit)))
        return self.epochs * batches

    def _trainer(self, **kwargs: Any) -> pl.Trainer:
        return pl.Trainer(
            accelerator="cpu",
            devices=1,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            **kwargs,
        )

    def __call__(self, arch: Architecture) -> dict[str, Any]:
        pl.seed_everything(candidate_seed(self.seed, arch), workers=True, verbose=False)
        model = self.builder.build(arch)
        params, _ = count_parameters(model)
        macs = profile(model, self.builder.input_shape, latency=False).macs
        scheduler = partial(CosineAnnealingLR, T_max=self.steps()) if self.cosine else None
        module = ClassificationModule(
            model,
            self.builder.num_classes,
            optimizer=self.optimizer,
            scheduler=scheduler,
            scheduler_interval="step",
            input_shape=self.builder.input_shape,
        )
        with quiet_lightning(), num_threads(self.threads):
            fit = self._trainer(
                max_epochs=self.epochs, limit_train_batches=self.limit_train_batches, limit_val_batches=0
            )
            fit.fit(module, datamodule=self.datamodule)
            scores = self._trainer(limit_val_batches=self.limit_val_batches).validate(
                module, datamodule=self.datamodule, verbose=False
            )
        if not scores or "val/acc" not in scores[0]:
            raise RuntimeError("the candidate's validation logged no val/acc")
        return {"acc": float(scores[0]["val/acc"]), "params": int(params), "macs": int(macs)}
