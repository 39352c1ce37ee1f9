"""Honest measurement: parameters, nonzeros, MACs, state_dict bytes and latency (shared/BENCHMARKS.md)."""

from effdl_lightning.measure.latency import measure_latency
from effdl_lightning.measure.profile import (
    LayerProfile,
    ModelProfile,
    count_parameters,
    profile,
    register_macs_rule,
    state_dict_bytes,
)

__all__ = [
    "LayerProfile",
    "ModelProfile",
    "count_parameters",
    "measure_latency",
    "profile",
    "register_macs_rule",
    "state_dict_bytes",
]
