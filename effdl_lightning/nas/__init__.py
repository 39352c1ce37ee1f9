"""Platform-aware architecture search (MnasNet, arXiv 1807.11626): the driver around the core pieces.

The space and the reward are plain data in :mod:`effdl_lightning.core.nas.mnas`, the latency table in
:mod:`effdl_lightning.core.nas.latency_table`; this package measures the table with
:mod:`effdl_lightning.measure`, builds candidates (``model=mnas_space``), trains them briefly through
:class:`~effdl_lightning.modules.ClassificationModule`, and searches with a REINFORCE controller or at
random. ``python train.py nas=mnas_soft`` runs it from Hydra (:func:`effdl_lightning.nas.job.run_search`).
"""

from effdl_lightning.nas.controller import PolicyController, ReinforceConfig, ReinforceLearner
from effdl_lightning.nas.evaluate import CandidateTrainer, candidate_seed
from effdl_lightning.nas.latency import (
    LatencyPredictor,
    block_measure_fn,
    compare_predicted_measured,
    measure_architectures,
)
from effdl_lightning.nas.objective import MnasRewardCallback
from effdl_lightning.nas.search import (
    STRATEGIES,
    Candidate,
    PlatformAwareSearch,
    SearchResult,
    SearchSettings,
    pareto_front,
)
from effdl_lightning.nas.space import CandidateBuilder, build_candidate

__all__ = [
    "STRATEGIES",
    "Candidate",
    "CandidateBuilder",
    "CandidateTrainer",
    "LatencyPredictor",
    "MnasRewardCallback",
    "PlatformAwareSearch",
    "PolicyController",
    "ReinforceConfig",
    "ReinforceLearner",
    "SearchResult",
    "SearchSettings",
    "block_measure_fn",
    "build_candidate",
    "candidate_seed",
    "compare_predicted_measured",
    "measure_architectures",
    "pareto_front",
]
