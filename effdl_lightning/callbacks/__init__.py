"""Lightning callbacks: one per technique, each a thin wrapper over ``effdl_lightning.core``."""

from effdl_lightning.callbacks.compression_report import CompressionReport, format_report

__all__ = ["CompressionReport", "format_report"]
