"""effdl_lightning: efficient deep learning techniques as PyTorch Lightning callbacks and modules.

Subpackages are imported on demand so that ``import effdl_lightning`` stays cheap:
``effdl_lightning.callbacks``, ``.modules``, ``.models``, ``.data``, ``.measure``, ``.export``, ``.core``.
"""

__version__ = "0.1.0"
