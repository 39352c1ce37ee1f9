"""The techniques as plain PyTorch (no Lightning): each piece works on a bare ``nn.Module``."""

from effdl_lightning.core.selection import DEFAULT_LAYER_TYPES, select_modules

__all__ = ["DEFAULT_LAYER_TYPES", "select_modules"]
