"""Helpers shared by the callbacks."""

from __future__ import annotations

import lightning.pytorch as pl
from torch import nn


def target_model(pl_module: pl.LightningModule) -> nn.Module:
    """Return the network a compression callback acts on.

    A distillation module's ``student``, else a wrapper's ``model`` (as in ``ClassificationModule``), else the
    LightningModule itself, so that any LightningModule works.
    """
    for name in ("student", "model"):
        candidate = getattr(pl_module, name, None)
        if isinstance(candidate, nn.Module):
            return candidate
    return pl_module
