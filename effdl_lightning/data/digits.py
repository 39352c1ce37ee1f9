"""scikit-learn's 8×8 handwritten digits (UCI optical recognition of handwritten digits, test part)."""

from __future__ import annotations

import numpy as np

from effdl_lightning.data.base import ArraySplits, FixedShapeDataModule

#: mean and std of all pixels of the 1,797 images of ``sklearn.datasets.load_digits`` after scaling
#: the 0..16 values to [0, 1]; computed once with ``(load_digits().data / 16).mean()`` / ``.std()``.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)


class DigitsDataModule(FixedShapeDataModule):
    """1,797 images of 8×8 digits with values 0..16, scaled to [0, 1]; input ``(1, 8, 8)``, 10 classes.

    Source: ``sklearn.datasets.load_digits`` (shipped with scikit-learn; Alpaydin & Kaynak, UCI ML
    repository). No official test split: train/val/test are stratified splits with a fixed ``seed``.
    Augmentation translates by at most 1 px (2 px would be a quarter of an 8-px image).

    Args:
        data_dir: unused (the data ships in a package); kept so every datamodule takes the same args.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seed of the split and of the shuffling.
        augment: random translation of training images by up to 1 px.
        val_fraction: fraction of all images used for validation.
        test_fraction: fraction of all images used for test.
        pin_memory: DataLoader ``pin_memory``.
        normalize: standardize inputs with :data:`DIGITS_MEAN` / :data:`DIGITS_STD`.
        input_shape: expected input shape from the config; checked.
        num_classes: expected number of classes from the config; checked.
    """

    mean = DIGITS_MEAN
    std = DIGITS_STD
    max_shift = 1

    fixed_input_shape = (1, 8, 8)
    fixed_num_classes = 10

    def _load_arrays(self) -> ArraySplits:
        from sklearn.datasets import load_digits  # imported here: sklearn takes about 1 s to import

        digits = load_digits()
        x = (np.asarray(digits.data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
        return ArraySplits(x_train=x, y_train=np.asarray(digits.target, dtype=np.int64))
