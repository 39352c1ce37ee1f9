"""effdl_lightning: efficient deep learning techniques as PyTorch Lightning callbacks and modules.

Subpackages are imported on demand so that ``import effdl_lightning`` stays cheap:
``effdl_lightning.callbacks``, ``.modules``, ``.models``, ``.data``, ``.measure``, ``.export``, ``.core``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_compressed"]


def load_compressed(model: Any, checkpoint: Any, strict: bool = True) -> Any:
    """Rebuild a compressed model from a checkpoint's compression record and load its weights.

    ``model`` is a freshly built LightningModule or network; see :func:`effdl_lightning.core.record.load_compressed`.
    """
    from effdl_lightning.core.record import load_compressed as _load

    return _load(model, checkpoint, strict=strict)
