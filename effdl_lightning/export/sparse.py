"""Sparse inference: pruned ``nn.Linear`` layers run as CSR sparse matrix products.

Deep Compression (Han et al., arXiv:1510.00149, §6 "Speedup") and EIE (arXiv:1602.01528) run pruned fc
layers as sparse matrix × dense vector products. :func:`to_sparse_inference` returns a deployable copy of a
model in which every ``nn.Linear`` at least ``min_sparsity`` sparse is a :class:`SparseLinear`:

    y = x Wᵀ + b   computed as   (W_csr · xᵀ)ᵀ + b   (``torch.sparse.mm``; ``W_csr · x`` for a single row).

Only fully connected layers are converted; convolutions stay dense (PyTorch has no sparse convolution
kernel on CPU, and lowering one to a sparse GEMM needs an im2col copy of the input). Whether CSR is faster
depends on density, batch size, threads and the BLAS: ``benchmarks/sparse_inference.py`` measures it.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parameter import UninitializedParameter

from effdl_lightning.core.selection import select_modules

log = logging.getLogger(__name__)

_CSR_BUFFERS = ("crow_indices", "col_indices", "values")
_BETA_WARNING = ".*Sparse CSR tensor support is in beta.*"


class SparseLinear(nn.Module):
    """An inference-only linear layer whose weight is a ``torch.sparse_csr`` matrix.

    The CSR components are plain dense buffers (``crow_indices`` [out + 1], ``col_indices`` [nnz],
    ``values`` [nnz]) so that ``state_dict``, ``torch.save``, ``deepcopy`` and ``.to()`` work as for any
    module; :attr:`weight` assembles them (without copying) into the ``sparse_csr`` tensor the forward pass
    multiplies with. The layer has no parameters: it is a deployment format, not trainable. Loading a state
    dict takes the stored nonzero count (the buffers are resized).

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether the layer adds a bias.
        dtype: floating dtype of the values and bias.
    """

    crow_indices: Tensor
    col_indices: Tensor
    values: Tensor
    bias: Tensor | None

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1; got {in_features}, {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.register_buffer("crow_indices", torch.zeros(out_features + 1, dtype=torch.int64))
        self.register_buffer("col_indices", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("values", torch.zeros(0, dtype=dtype))
        self.register_buffer("bias", torch.zeros(out_features, dtype=dtype) if bias else None)
        self._csr: tuple[tuple[Any, ...], Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> SparseLinear:
        """A :class:`SparseLinear` computing exactly the products of ``linear``'s (pruned) weight."""
        weight = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=weight.dtype)
        layer.set_weight(weight)
        if linear.bias is not None and layer.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer.to(weight.device)

    def set_weight(self, weight: Tensor) -> None:
        """Store a dense ``[out_features, in_features]`` weight in CSR form (its zeros are dropped)."""
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight must have shape {(self.out_features, self.in_features)}; got {tuple(weight.shape)}"
            )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_BETA_WARNING)
            csr = weight.detach().to_sparse_csr()
        self.crow_indices = csr.crow_indices().clone()
        self.col_indices = csr.col_indices().clone()
        self.values = csr.values().clone()
        self._csr = None

    @property
    def weight(self) -> Tensor:
        """The weight as a ``torch.sparse_csr`` tensor sharing the buffers' memory.

        Cached while the three buffers are the same tensor objects (the cache holds them, so their identity
        cannot be recycled); in-place changes of their values show through the shared memory, and ``.to()``
        or loading a state dict replaces them, which rebuilds the tensor.
        """
        parts = (self.crow_indices, self.col_indices, self.values)
        cache = self._csr
        if cache is None or any(a is not b for a, b in zip(cache[0], parts, strict=True)):
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_BETA_WARNING)
                csr = torch.sparse_csr_tensor(
                    *parts, size=(self.out_features, self.in_features), check_invariants=True
                )
            cache = self._csr = (parts, csr)
        return cache[1]

    @property
    def nnz(self) -> int:
        """Stored nonzero weights."""
        return int(self.values.numel())

    @property
    def density(self) -> float:
        """``nnz / (out_features · in_features)``."""
        return self.nnz / (self.out_features * self.in_features)

    def to_dense_weight(self) -> Tensor:
        """The weight as a dense ``[out_features, in_features]`` tensor."""
        return self.weight.to_dense()

    def forward(self, x: Tensor) -> Tensor:
        """``y = x Wᵀ + b`` over the last dimension of ``x`` (any leading dimensions)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"expected inputs with last dimension {self.in_features}; got shape {tuple(x.shape)}"
            )
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] == 1:  # sparse matrix × vector: the case Deep Compression / EIE accelerate
            out = (self.weight @ rows[0]).unsqueeze(0)
        elif rows.shape[0] == 0:
            out = rows.new_zeros(0, self.out_features)
        else:
            out = torch.sparse.mm(self.weight, rows.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"nnz={self.nnz}, density={self.density:.2%}"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_csr"] = None  # a sparse_csr tensor cannot be deep-copied; it is rebuilt from the buffers
        return state

    def _load_from_state_dict(
        self,
        state_dict: Mapping[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # the nonzero count is data, not architecture: take the stored buffers' sizes
        for name in _CSR_BUFFERS:
            key = prefix + name
            if key in state_dict and isinstance(state_dict[key], Tensor):
                current = getattr(self, name)
                setattr(self, name, torch.empty_like(current).resize_(state_dict[key].shape))
        crow = state_dict.get(prefix + "crow_indices")
        if isinstance(crow, Tensor) and crow.shape != (self.out_features + 1,):
            error_msgs.append(
                f"{prefix}crow_indices has shape {tuple(crow.shape)}, expected ({self.out_features + 1},)"
            )
            return
        self._csr = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _sparsity(weight: Tensor) -> float:
    return 1.0 - int(torch.count_nonzero(weight)) / weight.numel()


def to_sparse_inference(
    model: nn.Module,
    min_sparsity: float = 0.5,
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> nn.Module:
    """A deployable copy of ``model`` whose sparse ``nn.Linear`` layers are :class:`SparseLinear` (CSR).

    The model is deep-copied; every ``nn.Linear`` (selected by ``include``/``exclude`` glob patterns on
    module names, all by default) whose weight has a fraction of zeros ``>= min_sparsity`` is replaced.
    Outputs equal the original's up to float rounding (sums taken in another order). Skipped, with a logged
    reason: layers below ``min_sparsity``, uninitialized lazy layers, and the projections inside
    ``nn.MultiheadAttention`` (which reads their ``weight`` directly). Convolutions are left dense. Weights
    reparametrized by ``torch.nn.utils.prune`` are read through their masked ``weight``; the pruning hook is
    not carried over.

    Args:
        model: any module; it is not modified.
        min_sparsity: the fraction of zero weights, in [0, 1], from which a layer goes sparse.
        include: patterns of layer names eligible for replacement (all ``nn.Linear`` when ``None``).
        exclude: patterns of layer names to keep dense.

    Returns:
        The converted copy (same training flag as ``model``).

    Raises:
        ValueError: ``min_sparsity`` outside [0, 1], or a pattern that matches no ``nn.Linear``.
    """
    if (
        isinstance(min_sparsity, bool)
        or not isinstance(min_sparsity, int | float)
        or not 0 <= min_sparsity <= 1
    ):
        raise ValueError(f"min_sparsity must be a number in [0, 1]; got {min_sparsity!r}")
    if isinstance(model, nn.Linear) and include is None and exclude is None:  # a bare layer
        if _sparsity(model.weight.detach()) >= min_sparsity:
            return SparseLinear.from_linear(model)
        return copy.deepcopy(model)
    patterns = include is not None or exclude is not None
    wanted = set(select_modules(model, include, exclude, layer_types=(nn.Linear,), strict=patterns))
    converted = copy.deepcopy(model)
    attention_children = {
        f"{owner}.{child}" if owner else child
        for owner, module in converted.named_modules()
        if isinstance(module, nn.MultiheadAttention)
        for child, _ in module.named_children()
    }
    for name, module in list(converted.named_modules()):
        if name not in wanted or not isinstance(module, nn.Linear):
            continue
        if name in attention_children:
            log.info("to_sparse_inference: %s kept dense (nn.MultiheadAttention reads its weight)", name)
            continue
        if isinstance(module.weight, UninitializedParameter):
            log.info("to_sparse_inference: %s kept dense (uninitialized lazy layer)", name)
            continue
        sparsity = _sparsity(module.weight.detach())
        if sparsity < min_sparsity:
            log.info(
                "to_sparse_inference: %s kept dense (sparsity %.1f%% < %.1f%%)",
                name,
                100 * sparsity,
                100 * min_sparsity,
            )
            continue
        parent_name, _, child = name.rpartition(".")
        parent = converted.get_submodule(parent_name) if parent_name else converted
        setattr(parent, child, SparseLinear.from_linear(module))
        log.info("to_sparse_inference: %s -> SparseLinear (sparsity %.1f%%)", name, 100 * sparsity)
    return converted
