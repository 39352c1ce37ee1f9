"""Full MNIST (LeCun, Cortes & Burges) read from the original IDX files."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from effdl_lightning.data.base import ArrayDataModule, ArraySplits
from effdl_lightning.data.download import download_first, missing_files_error
from effdl_lightning.data.mnist_subset import MNIST_MEAN, MNIST_STD

#: IDX element type codes (third byte of the magic number) -> big-endian numpy dtype
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic ``0x0000 <type> <ndim>``, big-endian uint32 dims, data.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.
        ndim: expected number of dimensions (3 for images, 1 for labels), checked when given.

    Raises:
        ValueError: bad magic number, unexpected ``ndim``, or a size that disagrees with the header.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic number {raw[:4].hex()})")
    dims = int(raw[3])
    if ndim is not None and dims != ndim:
        raise ValueError(f"{path}: IDX file has {dims} dimensions, expected {ndim}")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    offset = 4 + 4 * dims
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {shape} ({expected} bytes), file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


class MNISTIDXDataModule(ArrayDataModule):
    """MNIST, 60,000 training and 10,000 test images ``(1, 28, 28)``, from the four IDX files.

    Source: the IDX files of yann.lecun.com/exdb/mnist (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each possibly
    ``.gz``), looked up in ``data_dir`` and then ``data_dir/MNIST/raw`` (torchvision's layout). The
    official test split is kept; validation is carved from train, stratified. Standardized with the
    MNIST constants (0.1307, 0.3081).

    Args:
        data_dir: folder of the IDX files.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the train/val split and of the shuffling.
        augment: random translation of training images by up to 2 px.
        val_fraction: fraction of the training images used for validation.
        pin_memory: DataLoader ``pin_memory``.
        normalize: standardize inputs (``False`` serves pixels in [0, 1]).
        download: fetch missing files (gzipped, MD5-checked) into ``data_dir`` from :attr:`mirrors`.
        input_shape: expected input shape from the config; checked.
        num_classes: expected number of classes from the config; checked.
    """

    mean = MNIST_MEAN
    std = MNIST_STD
    #: tried in order; the first is torchvision's mirror, the second the original site
    mirrors: ClassVar[list[str]] = [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ]
    #: file -> MD5 of its ``.gz`` form (the digests torchvision checks)
    resources: ClassVar[dict[str, str]] = {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    }

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
        download: bool = False,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__(
            data_dir, batch_size, num_workers, seed, augment, val_fraction, None, pin_memory, normalize
        )
        self.download = bool(download)
        self.input_shape = (1, 28, 28)
        self.num_classes = 10
        self._check_declared(input_shape, num_classes)

    def _find(self) -> dict[str, Path | None]:
        folders = [Path(self.data_dir), Path(self.data_dir, "MNIST", "raw")]
        found: dict[str, Path | None] = {}
        for name in self.resources:
            candidates = [folder / (name + ext) for folder in folders for ext in ("", ".gz")]
            found[name] = next((c for c in candidates if c.is_file()), None)
        return found

    def _locate(self) -> dict[str, Path]:
        """Paths of the four files, downloading the missing ones when ``download`` is on."""
        found = self._find()
        missing = [name for name, path in found.items() if path is None]
        error: BaseException | None = None
        if missing and self.download:
            try:
                for name in missing:
                    download_first(self.mirrors, name + ".gz", self.data_dir, self.resources[name])
            except OSError as err:
                error = err
            found = self._find()
            missing = [name for name, path in found.items() if path is None]
        if missing:
            raise missing_files_error(
                type(self).__name__,
                [f"{m}[.gz]" for m in missing],
                self.data_dir,
                [Path(self.data_dir, "MNIST", "raw")],
                error,
            )
        return {name: path for name, path in found.items() if path is not None}

    def prepare_data(self) -> None:
        """Download missing files (rank 0 only, before ``setup``) when ``download`` is on."""
        if self.download:
            self._locate()

    def _load_arrays(self) -> ArraySplits:
        paths = self._locate()
        arrays = []
        for split in ("train", "t10k"):
            images = read_idx(paths[f"{split}-images-idx3-ubyte"], ndim=3)
            labels = read_idx(paths[f"{split}-labels-idx1-ubyte"], ndim=1)
            if len(images) != len(labels):
                raise ValueError(f"MNIST {split}: {len(images)} images but {len(labels)} labels")
            arrays += [images[:, None].astype(np.float32) / 255.0, labels.astype(np.int64)]
        return ArraySplits(x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3])
