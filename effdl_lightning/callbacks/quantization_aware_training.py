"""Quantization-aware training of any model: int8, k-bit affine, DoReFa, BinaryConnect and BinaryNet."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from effdl_lightning.callbacks.structure import StructureChangingCallback
from effdl_lightning.callbacks.utils import target_model
from effdl_lightning.core.quant.modules import (
    QuantizationConfig,
    freeze_ranges_,
    quantize_,
    quantized_layers,
    quantized_size_bytes,
)
from effdl_lightning.core.selection import select_modules

__all__ = ["QuantizationAwareTraining"]

_BINARY = ("binaryconnect", "binarynet")


class QuantizationAwareTraining(StructureChangingCallback):
    """Fake-quantize every conv and linear of any model during ``fit`` (straight-through gradients).

    ``QuantizationAwareTraining()`` alone is int8 QAT (Jacob et al., arXiv 1712.05877): per-channel symmetric
    int8 weights (range of the current weight), per-tensor affine uint8 inputs of every conv and linear
    (exponential moving average of the observed range), from the first epoch. Other schemes:

    * ``affine``: the same at 2..16 bits (``learn_scale=True``: LSQ scales, arXiv 1902.08153);
    * ``dorefa`` (arXiv 1606.06160): k-bit weights ``2·q_k(tanh w / 2max|tanh w| + ½) − 1`` (k = 1:
      ``sign(w)·E|w|``), k-bit inputs ``q_k(clip(x, 0, 1))`` (they must be post-ReLU activations, as in the
      paper), k-bit gradients at each layer's output (``gradient_bits``); first and last layers in full
      precision by default;
    * ``binaryconnect`` (arXiv 1511.00363): ±1 weights, deterministic (sign) or ``stochastic`` (+1 with
      probability hard_sigmoid(w); the real weights are used at test time); activations real;
    * ``binarynet`` (arXiv 1602.02830): ±1 weights and ±1 inputs (sign, gradient cancelled where |x| > 1),
      the first layer reads real inputs. The inputs must be signed (e.g. BN then hardtanh, no ReLU before the
      sign): a warning says so when the first quantized batch is all non-negative.

    For the binary schemes the binary weights are ``±H`` and the real weights are clipped to ``[−H, H]``
    after every step, ``H`` per layer (``binary_scale``: Glorot's ``√(1.5/(fan_in + fan_out))`` as the
    authors' code, or a number; 1.0 is the papers' formula literally). Weights that are exactly zero (pruned) stay zero. The layers are swapped in
    place (same parameters, names and optimizer), the swap is recorded in the compression record, so
    ``fit(ckpt_path=...)`` resumes mid-QAT and ``load_compressed`` rebuilds the quantized model. Order with
    other techniques: structure changes (filter/channel pruning) before quantization, masks
    (``MagnitudePruning``) compose in the same fit.

    Logs ``compress/quantized_layers`` and ``compress/size_bytes`` (parameters at their quantized widths,
    scales included; the exporters in ``effdl_lightning.export`` write the real files).

    Args:
        scheme: ``int8``, ``affine``, ``dorefa``, ``binaryconnect`` or ``binarynet``.
        weight_bits / activation_bits / gradient_bits: bits (``None`` = the scheme's default; activation or
            gradient bits of 32 = full precision).
        first_layer / last_layer: ``quantize``, ``weights`` (weights only) or ``full_precision``; ``None`` =
            the paper's choice for the scheme. First/last = the first/last selected layer in module order.
        start_epoch: epoch at whose start the model is quantized (> 0: fine-tune a trained model).
        freeze_ranges_epoch: epoch from which observed ranges stop updating (``None``: never).
        freeze_bn_epoch: epoch from which batch norms use their running statistics and stop updating them
            (Jacob et al. §3.2; ``None``: never).
        include / exclude: glob patterns on module names.
        learn_scale: affine schemes: learned (LSQ) scales.
        stochastic: BinaryConnect's stochastic binarization.
        clip_weights: clip the quantized layers' real weights to ``[−c, c]`` after every step; ``None`` =
            each layer's ``H`` for the binary schemes, off otherwise; 0 = off.
        binary_scale: binary schemes: ``"glorot"`` (per-layer ``H``) or a number (see above).
        activation_sites: ``auto`` (default), ``graph`` or ``inputs``: with ``graph`` (``auto`` for int8/affine
            on an fx-traceable model) every tensor a residual add reads or writes is quantized once where it is
            produced, so the int8 export adds integers and keeps the convs around each add in int8; ``inputs``
            quantizes only each layer's input (see ``QuantizationConfig``).
    """

    def __init__(
        self,
        scheme: str = "int8",
        weight_bits: int | None = None,
        activation_bits: int | None = None,
        gradient_bits: int | None = None,
        first_layer: str | None = None,
        last_layer: str | None = None,
        start_epoch: int = 0,
        freeze_ranges_epoch: int | None = None,
        freeze_bn_epoch: int | None = None,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        learn_scale: bool = False,
        stochastic: bool = False,
        clip_weights: float | None = None,
        binary_scale: str | float = "glorot",
        activation_sites: str = "auto",
    ) -> None:
        try:
            self.config = QuantizationConfig(
                scheme,
                weight_bits,
                activation_bits,
                gradient_bits,
                learn_scale,
                stochastic,
                first_layer,
                last_layer,
                binary_scale,
                activation_sites,
            )
        except ValueError as err:
            raise MisconfigurationException(f"QuantizationAwareTraining: {err}") from err
        for name, value in (
            ("start_epoch", start_epoch),
            ("freeze_ranges_epoch", freeze_ranges_epoch),
            ("freeze_bn_epoch", freeze_bn_epoch),
        ):
            if value is not None and value < 0:
                raise MisconfigurationException(f"`{name}` must be >= 0 or None, got {value!r}")
        if clip_weights is not None and clip_weights < 0:
            raise MisconfigurationException(f"`clip_weights` must be >= 0 or None, got {clip_weights!r}")
        self.start_epoch = start_epoch
        self.freeze_ranges_epoch = freeze_ranges_epoch
        self.freeze_bn_epoch = freeze_bn_epoch
        self.include, self.exclude = include, exclude
        # None: binary schemes clip each layer at its binary magnitude H (see binary_scale), others not at all
        self.clip_weights = clip_weights if clip_weights is None or clip_weights > 0 else 0.0
        self._clip = scheme in _BINARY if clip_weights is None else bool(clip_weights)
        self.quantized_at: int | None = None
        self._clipped: list[tuple[Tensor, float]] = []
        self._batch_norms: list[nn.Module] = []

    # --- hooks ------------------------------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            try:  # patterns that match nothing fail before training
                select_modules(target_model(pl_module), self.include, self.exclude)
            except ValueError as err:
                raise MisconfigurationException(f"QuantizationAwareTraining: {err}") from err

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = target_model(pl_module)
        epoch = trainer.current_epoch
        if not quantized_layers(model) and epoch >= self.start_epoch:
            self.quantize(trainer, pl_module)
        if quantized_layers(model):  # also after a resume, where the record rebuilt the quantized layers
            self._bind(model)
            if self.freeze_ranges_epoch is not None and epoch >= self.freeze_ranges_epoch:
                freeze_ranges_(model)
        if self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch:
            self._batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def quantize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Mapping[str, Any]:
        """Swap in the quantized layers now (what ``on_train_epoch_start`` does at ``start_epoch``)."""

        def change(model: nn.Module) -> tuple[dict[str, Any], None]:
            try:
                return quantize_(model, self.config, self.include, self.exclude), None
            except ValueError as err:
                raise MisconfigurationException(f"QuantizationAwareTraining: {err}") from err

        entry = self.change_structure(trainer, pl_module, change)
        self.quantized_at = trainer.current_epoch
        model = target_model(pl_module)
        self._bind(model)
        if self.config.scheme == "binarynet":
            self._check_signed_inputs(model)
        w, a, g = self.config.bits()
        rank_zero_info(
            f"QuantizationAwareTraining: {self.config.scheme} W{w} A{a or 'fp'} G{g or 'fp'} on "
            f"{len(entry['layers'])} layers at epoch {trainer.current_epoch}"
        )
        return entry

    def _bind(self, model: nn.Module) -> None:
        layers = quantized_layers(model)
        self._clipped = []
        if self._clip:
            for layer in layers.values():
                if layer.weight_quantizer is not None:
                    bound = self.clip_weights or float(getattr(layer.weight_quantizer, "h", 1.0))
                    self._clipped.append((layer.weight, bound))

    def _check_signed_inputs(self, model: nn.Module) -> None:
        handles: list[torch.utils.hooks.RemovableHandle] = []

        def check(module: nn.Module, args: tuple[Any, ...]) -> None:
            for h in handles:
                h.remove()
            x = args[0]
            if isinstance(x, Tensor) and bool((x >= 0).all()):
                rank_zero_warn(
                    "QuantizationAwareTraining(binarynet): the first binarized input is all >= 0, so its "
                    "sign is constant +1; BinaryNet needs signed pre-sign activations (BN + hardtanh, no ReLU)"
                )

        for layer in quantized_layers(model).values():
            if layer.input_quantizer is not None:
                handles.append(layer.input_quantizer.register_forward_pre_hook(check))
                break

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for bn in self._batch_norms:  # Lightning puts the model back in train mode each epoch
            bn.eval()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._clipped:
            with torch.no_grad():
                for weight, bound in self._clipped:
                    weight.clamp_(-bound, bound)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = target_model(pl_module)
        layers = quantized_layers(model)
        if layers:
            pl_module.log_dict(
                {
                    "compress/quantized_layers": float(len(layers)),
                    "compress/size_bytes": float(quantized_size_bytes(model)),
                },
                on_step=False,
                on_epoch=True,
                rank_zero_only=True,
            )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"quantized_at": self.quantized_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.quantized_at = state_dict.get("quantized_at")
