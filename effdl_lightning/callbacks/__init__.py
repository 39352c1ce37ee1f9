"""Lightning callbacks: one per technique, each a thin wrapper over ``effdl_lightning.core``."""

from effdl_lightning.callbacks.channel_pruning import ChannelPruning
from effdl_lightning.callbacks.compression_report import CompressionReport, format_report
from effdl_lightning.callbacks.deep_compression_export import DeepCompressionExport
from effdl_lightning.callbacks.filter_pruning import FilterPruning
from effdl_lightning.callbacks.incremental_quantization import IncrementalQuantization
from effdl_lightning.callbacks.low_rank import LowRankFactorization
from effdl_lightning.callbacks.magnitude_pruning import MagnitudePruning
from effdl_lightning.callbacks.quantization_aware_training import QuantizationAwareTraining
from effdl_lightning.callbacks.structure import StructureChangingCallback
from effdl_lightning.callbacks.weight_sharing import WeightSharing

__all__ = [
    "ChannelPruning",
    "CompressionReport",
    "DeepCompressionExport",
    "FilterPruning",
    "IncrementalQuantization",
    "LowRankFactorization",
    "MagnitudePruning",
    "QuantizationAwareTraining",
    "StructureChangingCallback",
    "WeightSharing",
    "format_report",
]
