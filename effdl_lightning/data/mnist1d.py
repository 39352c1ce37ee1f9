"""MNIST-1D (Greydanus & Kobak, arXiv:2011.14439), generated locally by the ``mnist1d`` package."""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from effdl_lightning.data.base import ArrayDataModule, ArraySplits


def generate_mnist1d(num_samples: int, final_seq_length: int, seed: int) -> dict[str, np.ndarray]:
    """Run ``mnist1d.data.make_dataset`` with its default arguments except the three given.

    Never calls ``mnist1d.data.get_dataset`` (which downloads). ``make_dataset`` reseeds the global
    ``random`` and ``numpy.random`` generators; their states are restored afterwards.

    Returns:
        ``x`` ``(n_train, L)``, ``y``, ``x_test``, ``y_test`` (the package's own 80/20 split).
    """
    from mnist1d.data import get_dataset_args, make_dataset  # about 2 s: imports matplotlib, requests

    args = get_dataset_args()
    args.num_samples, args.final_seq_length, args.seed = num_samples, final_seq_length, seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: np.asarray(data[key]) for key in ("x", "y", "x_test", "y_test")}


class MNIST1DDataModule(ArrayDataModule):
    """MNIST-1D: 10 classes of 1-D signals ``(1, final_seq_length)``, made by the ``mnist1d`` generator.

    Source: ``mnist1d.data.make_dataset`` (S. Greydanus, github.com/greydanus/mnist1d), run locally with
    the package's default arguments (``get_dataset_args``) except ``num_samples``, ``final_seq_length``
    and ``generator_seed``. The generator already standardizes the whole dataset (mean 0, std 1), so
    the normalization here is the identity. The package's own train/test split (80/20) is kept and
    validation is carved from train, stratified. Generating 5,000 samples takes about 3.5 s (plus 2 s
    to import the package), so with ``cache=True`` the arrays are saved to
    ``data_dir/mnist1d/mnist1d_<key>.npz`` keyed by the generator's arguments and reused.

    Args:
        data_dir: folder of the cache.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the train/val split and of the shuffling (not of the generator).
        augment: not supported (the generator already translates, scales, shears and adds noise);
            ``True`` raises ``ValueError``.
        val_fraction: fraction of the generator's training split used for validation.
        pin_memory: DataLoader ``pin_memory``.
        normalize: kept for a uniform interface (the data is already standardized).
        num_samples: samples generated in total (``num_samples // 10`` per class).
        final_seq_length: length ``L`` of each signal.
        generator_seed: seed of the generator (42 reproduces the package's reference dataset).
        cache: save/load the generated arrays under ``data_dir``.
        input_shape: expected input shape from the config; checked.
        num_classes: expected number of classes from the config; checked.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] = "data/",
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
        val_fraction: float = 0.1,
        pin_memory: bool = False,
        normalize: bool = True,
        num_samples: int = 5000,
        final_seq_length: int = 40,
        generator_seed: int = 42,
        cache: bool = True,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, seed, augment, val_fraction, None, pin_memory, normalize
        )
        if augment:
            raise ValueError(
                "augment=True is not supported by MNIST1DDataModule (allowed: False); the generator "
                "already applies random translation, scaling, shear and noise"
            )
        if int(num_samples) < 20:
            raise ValueError(f"num_samples must be >= 20, got {num_samples}")
        if int(final_seq_length) < 2:
            raise ValueError(f"final_seq_length must be >= 2, got {final_seq_length}")
        self.num_samples = int(num_samples)
        self.final_seq_length = int(final_seq_length)
        self.generator_seed = int(generator_seed)
        self.cache = bool(cache)
        self.input_shape = (1, self.final_seq_length)
        self.num_classes = 10
        self._check_declared(input_shape, num_classes)

    @property
    def cache_path(self) -> Path:
        """Where the generated arrays are cached: a file name keyed by every generator argument."""
        key: dict[str, Any] = {
            "num_samples": self.num_samples,
            "final_seq_length": self.final_seq_length,
            "seed": self.generator_seed,
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
        name = f"mnist1d_n{self.num_samples}_l{self.final_seq_length}_s{self.generator_seed}_{digest}.npz"
        return Path(self.data_dir, "mnist1d", name)

    def _generate_or_load(self) -> dict[str, np.ndarray]:
        path = self.cache_path
        if self.cache and path.is_file():
            with np.load(path) as stored:
                return {key: stored[key] for key in stored.files}
        data = generate_mnist1d(self.num_samples, self.final_seq_length, self.generator_seed)
        if self.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.part")
            try:  # write then rename: concurrent ranks never read a half-written file
                with os.fdopen(fd, "wb") as stream:
                    np.savez(stream, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
                os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        return data

    def _load_arrays(self) -> ArraySplits:
        data = self._generate_or_load()
        return ArraySplits(
            x_train=data["x"].astype(np.float32)[:, None, :],
            y_train=data["y"],
            x_test=data["x_test"].astype(np.float32)[:, None, :],
            y_test=data["y_test"],
        )
