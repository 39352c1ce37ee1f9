"""Batch-level augmentation and normalization on plain torch tensors (no torchvision).

Augmentations act on a whole batch ``(B, C, *spatial)`` at once and draw from torch's global RNG, the
convention torchvision transforms follow: Lightning's ``seed_everything`` makes them reproducible in the
main process, and the DataLoader seeds each worker's RNG from its own seeded generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Return ``(x - mean) / std`` with per-channel constants broadcast over dim 1 of ``(N, C, ...)``."""
    shape = (1, len(mean)) + (1,) * (x.dim() - 2)
    mean_t = torch.tensor(mean, dtype=x.dtype).reshape(shape)
    std_t = torch.tensor(std, dtype=x.dtype).reshape(shape)
    return (x - mean_t) / std_t


class RandomTranslate:
    """Shift each image by up to ``max_shift`` pixels: zero-pad every side, then crop at a random offset.

    The same operation as torchvision's ``RandomCrop(size, padding=max_shift)``. Padding uses ``fill``
    per channel, i.e. the normalized value of a black pixel ``-mean / std`` when images are normalized.

    Args:
        max_shift: largest shift in pixels along each spatial axis (``>= 0``).
        fill: padding value per channel.
    """

    def __init__(self, max_shift: int, fill: Sequence[float]) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)
        self.fill = tuple(float(f) for f in fill)

    def __call__(self, x: Tensor) -> Tensor:
        if self.max_shift == 0:
            return x
        b, c, h, w = x.shape
        p = self.max_shift
        padded = torch.empty((b, c, h + 2 * p, w + 2 * p), dtype=x.dtype)
        padded[:] = torch.tensor(self.fill, dtype=x.dtype).reshape(1, c, 1, 1)
        padded[:, :, p : p + h, p : p + w] = x
        dy = torch.randint(0, 2 * p + 1, (b,))
        dx = torch.randint(0, 2 * p + 1, (b,))
        rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (B, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (B, 1, W)
        batch = torch.arange(b)[:, None, None]
        # advanced indices separated by a slice put their broadcast dims first: (B, H, W, C)
        return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


class RandomHorizontalFlip:
    """Mirror each image left-right with probability ``p`` (flip of the last axis)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        flip = torch.rand(x.shape[0]) < self.p
        out = x.clone()
        out[flip] = x[flip].flip(-1)
        return out


class AugmentCollate:
    """DataLoader ``collate_fn``: stack samples with ``default_collate``, then augment the input batch.

    A top-level class (not a closure) so that it pickles into worker processes.

    Args:
        transforms: applied in order to the stacked inputs; labels pass through unchanged.
    """

    def __init__(self, transforms: Sequence[Any]) -> None:
        self.transforms = list(transforms)

    def __call__(self, batch: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        x, y = default_collate(batch)
        for transform in self.transforms:
            x = transform(x)
        return x, y
