"""Deep Compression's trained quantization as a callback: k-means weight sharing, centroids fine-tuned."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from typing_extensions import override

from effdl_lightning.callbacks.utils import target_model
from effdl_lightning.core.selection import DEFAULT_LAYER_TYPES, select_modules
from effdl_lightning.core.weight_sharing import (
    GRADIENT_REDUCTIONS,
    MAX_BITS,
    MIN_BITS,
    SHARING_INITS,
    SharedWeight,
    cluster_gradient_,
    share_weights_,
    snap_,
)

#: layer types that ``bits`` may name, by class name
LAYER_TYPES_BY_NAME: dict[str, type[nn.Module]] = {t.__name__: t for t in DEFAULT_LAYER_TYPES}


def _valid_bits(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and MIN_BITS <= value <= MAX_BITS


class WeightSharing(Callback):
    """Share weights by per-layer k-means and fine-tune the centroids (Han et al., arXiv:1510.00149, §3).

    At the start of epoch ``start_epoch`` (typically after pruning has ended) every selected layer's weight is
    clustered into k = 2^bits values by 1-D k-means (:func:`~effdl_lightning.core.weight_sharing.kmeans_1d`,
    linear initialization between min and max by default). Zeros count as pruned: they are left out, are not
    a centroid and stay zero, so the callback composes with a pruning callback placed before it. The
    optimizer state (momentum) of the shared weights is reset then, so that it starts equal within each
    cluster.

    Then, around every optimizer step and without any forward hook, the weights stay ordinary parameters:

    - before the step each weight's gradient becomes its cluster's summed gradient
      ``∂L/∂C_k = Σ_ij ∂L/∂W_ij · 1(I_ij = k)`` (paper eq. 3), so all members take the centroid's step (SGD
      with momentum and weight decay, or any element-wise optimizer);
    - after the step each cluster is re-set to its mean and pruned weights to zero — a no-op for element-wise
      optimizers, needed for those whose per-element state could diverge within a cluster.

    As the centroid gradient is a sum over the cluster, fine-tune with a smaller learning rate than dense
    training. With ``finetune=False`` the centroids stay fixed: the shared weights' gradients are dropped
    (so neither the update, momentum nor weight decay moves them) and the weights are re-written from the
    codebook after each step.

    The codebooks (centroids, assignments, bits) are the callback's state, so ``fit(ckpt_path=...)`` resumes
    with the same clusters; :meth:`codebooks` hands them to the Deep Compression file format. Logged at each
    training epoch end once clustered: ``compress/weight_sharing_bits`` (index bits per kept weight, averaged
    over the kept weights) and ``compress/<layer>/clusters`` (distinct nonzero values of the layer's weight).

    Args:
        bits: index bits per weight (k = 2^bits), in [1, 16]: one int for every selected layer, or bits per
            layer type by class name, e.g. ``{"Conv2d": 8, "Linear": 5}`` (the paper's settings), in which
            case layers of other types are left alone.
        start_epoch: the epoch at whose start the weights are clustered.
        init: centroid initialization: ``"linear"`` (the paper's), ``"density"`` or ``"random"``.
        include: glob patterns of layer names to share (all layers of the eligible types when ``None``).
        exclude: glob patterns of layer names to leave alone.
        finetune: fine-tune the centroids (``True``) or keep them fixed.
        gradient: the centroid gradient: ``"sum"`` of its cluster's gradients (the paper's eq. 3; its step
            grows with the cluster's size, so it needs a small learning rate) or their ``"mean"``.
    """

    def __init__(
        self,
        bits: int | Mapping[str, int] = 5,
        start_epoch: int = 0,
        init: str = "linear",
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        finetune: bool = True,
        gradient: str = "sum",
    ) -> None:
        if isinstance(bits, Mapping):
            if not bits:
                raise MisconfigurationException(
                    f"`bits` as a dict needs at least one layer type of {sorted(LAYER_TYPES_BY_NAME)}"
                )
            for name, value in bits.items():
                if name not in LAYER_TYPES_BY_NAME:
                    raise MisconfigurationException(
                        f"`bits` names an unknown layer type {name!r}; known types: {sorted(LAYER_TYPES_BY_NAME)}"
                    )
                if not _valid_bits(value):
                    raise MisconfigurationException(
                        f"`bits[{name!r}]` must be an int in [{MIN_BITS}, {MAX_BITS}], got {value!r}"
                    )
            self.bits: int | dict[str, int] = {str(name): int(value) for name, value in bits.items()}
        elif _valid_bits(bits):
            self.bits = int(bits)
        else:
            raise MisconfigurationException(
                f"`bits` must be an int in [{MIN_BITS}, {MAX_BITS}] or a dict of such ints per layer type "
                f"({sorted(LAYER_TYPES_BY_NAME)}), got {bits!r}"
            )
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise MisconfigurationException(f"`start_epoch` must be an int >= 0, got {start_epoch!r}")
        if gradient not in GRADIENT_REDUCTIONS:
            raise MisconfigurationException(
                f"`gradient` must be one of {GRADIENT_REDUCTIONS}, got {gradient!r}"
            )
        if init not in SHARING_INITS:
            raise MisconfigurationException(f"`init` must be one of {SHARING_INITS}, got {init!r}")
        self.start_epoch = start_epoch
        self.init = init
        self.include = (include,) if isinstance(include, str) else tuple(include or ())
        self.exclude = (exclude,) if isinstance(exclude, str) else tuple(exclude or ())
        self.finetune = bool(finetune)
        self.gradient = gradient
        #: parameter name (key in the target model's state_dict) -> codebook, once clustered
        self.shared: dict[str, SharedWeight] = {}
        self._layers: dict[str, tuple[str, int]] = {}  # parameter name -> (layer name, bits)
        self._params: dict[str, nn.Parameter] = {}
        self._stepped = False

    @property
    @override
    def state_key(self) -> str:
        # several instances (e.g. convolutions and fc layers clustered at different epochs) keep apart states
        return self._generate_state_key(bits=self.bits, include=self.include, exclude=self.exclude)

    # ----------------------------------------------------------------------------------------- selection
    def _bits_of(self, module: nn.Module) -> int | None:
        if isinstance(self.bits, int):
            return self.bits
        for cls in type(module).__mro__:  # subclasses of nn.Linear etc. take their base's bits
            if cls.__name__ in self.bits:
                return self.bits[cls.__name__]
        return None

    def select(self, model: nn.Module) -> dict[str, tuple[str, int]]:
        """Return ``{parameter name: (layer name, bits)}`` of the weights this callback shares in ``model``.

        Raises:
            MisconfigurationException: a pattern that matches no layer, an empty selection, or a selected layer
                whose weight is not a parameter (e.g. still reparametrized by ``torch.nn.utils.prune``).
        """
        types = (
            DEFAULT_LAYER_TYPES
            if isinstance(self.bits, int)
            else tuple(LAYER_TYPES_BY_NAME[name] for name in self.bits)
        )
        try:
            modules = select_modules(model, self.include or None, self.exclude or None, layer_types=types)
        except ValueError as err:
            raise MisconfigurationException(f"WeightSharing: {err}") from err
        names = {id(p): n for n, p in model.named_parameters()}
        layers: dict[str, tuple[str, int]] = {}
        for layer, module in modules.items():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, nn.Parameter) or id(weight) not in names:
                raise MisconfigurationException(
                    f"WeightSharing: the weight of layer {layer!r} is not a parameter of the model (is it "
                    "reparametrized, e.g. by torch.nn.utils.prune? make the pruning permanent first)"
                )
            bits = self._bits_of(module)
            if bits is not None:
                layers.setdefault(names[id(weight)], (layer, bits))  # a tied weight is shared once
        return layers

    # -------------------------------------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._layers = self.select(target_model(pl_module))

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        max_epochs = trainer.max_epochs
        if not self.shared and max_epochs is not None and 0 <= max_epochs <= self.start_epoch:
            rank_zero_warn(
                f"WeightSharing(start_epoch={self.start_epoch}) never clusters: the fit has max_epochs={max_epochs}"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after the checkpoint (weights, callbacks, optimizer state) has been restored
        model = target_model(pl_module)
        if not self._layers:
            self._layers = self.select(model)
        named = dict(model.named_parameters())
        self._params = {name: named[name] for name in self._layers}
        if self.shared:  # resumed: check the codebooks against the model, then write them into it
            if set(self.shared) != set(self._layers):
                raise MisconfigurationException(
                    f"WeightSharing: the restored codebooks are for {sorted(self.shared)} but the layers selected "
                    f"now have the weights {sorted(self._layers)}"
                )
            for name, shared in self.shared.items():
                param = self._params[name]
                if shared.assignments.shape != param.shape:
                    raise MisconfigurationException(
                        f"WeightSharing: the restored assignments of {name!r} have shape "
                        f"{tuple(shared.assignments.shape)}, the weight has {tuple(param.shape)}"
                    )
                shared.to(param.device)
                shared.centroids = shared.centroids.to(param.dtype)
                snap_(param, shared, update_centroids=False)

    def on_structure_change(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, sliced: Mapping[str, Mapping[str, Tensor]]
    ) -> None:
        """Called by a structure-changing callback after it replaced parameters: re-bind them by name."""
        if self.shared:
            raise MisconfigurationException(
                "WeightSharing: the model's structure changed after the weights were clustered; cut channels "
                f"or factorize before WeightSharing's start_epoch ({self.start_epoch})"
            )
        named = dict(target_model(pl_module).named_parameters())
        self._params = {name: named[name] for name in self._layers if name in named}

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.shared or trainer.current_epoch < self.start_epoch:
            return
        for name, (_, bits) in self._layers.items():
            self.shared[name] = share_weights_(self._params[name], bits, init=self.init)
        # momentum etc. must start equal within each cluster (the buffers are rebuilt at the next step)
        params = set(self._params.values())
        for optimizer in trainer.optimizers:
            for param in list(optimizer.state):
                if param in params:
                    del optimizer.state[param]

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.shared:
            return
        for name, shared in self.shared.items():
            param = self._params[name]
            if self.finetune:
                cluster_gradient_(param, shared, self.gradient)
            else:
                param.grad = None  # the optimizer skips it: no update, momentum or weight decay
        self._stepped = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._stepped:
            return
        for name, shared in self.shared.items():
            snap_(self._params[name], shared, update_centroids=self.finetune)
        self._stepped = False

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.shared:
            return
        kept_bits = kept = 0
        for name, shared in self.shared.items():
            weight = self._params[name].detach()
            n = int(shared.mask.sum())
            kept_bits, kept = kept_bits + n * shared.bits, kept + n
            layer = self._layers[name][0]
            distinct = torch.unique(weight[weight != 0]).numel()
            pl_module.log(f"compress/{layer}/clusters", float(distinct), on_step=False, on_epoch=True)
        pl_module.log("compress/weight_sharing_bits", kept_bits / max(kept, 1), on_step=False, on_epoch=True)

    # ------------------------------------------------------------------------------------------- state
    def codebooks(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The codebooks for ``export.save_deep_compressed``; empty before the clustering.

        Returns:
            ``{parameter name: (centroids, assignments)}``, keyed as in the target model's ``state_dict``
            (e.g. ``"fc1.weight"``): the ``2**bits`` centroids and the int64 cluster index of each weight,
            shaped like the weight, −1 (``core.weight_sharing.PRUNED``) where the weight is pruned (zero).
        """
        return {
            name: (shared.centroids.detach().clone(), shared.assignments.clone())
            for name, shared in self.shared.items()
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        # plain containers of CPU tensors (loads with weights_only=True); bits <= 16 fits int32 indices
        return {
            "bits": {name: s.bits for name, s in self.shared.items()},
            "centroids": {name: s.centroids.detach().cpu().clone() for name, s in self.shared.items()},
            "assignments": {name: s.assignments.to(torch.int32).cpu() for name, s in self.shared.items()},
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        bits, centroids, assignments = (
            state_dict.get(key, {}) for key in ("bits", "centroids", "assignments")
        )
        self.shared = {
            name: SharedWeight(
                centroids=centroids[name].clone(), assignments=assignments[name].long(), bits=int(bits[name])
            )
            for name in bits
        }
        self._stepped = False
