"""Deep Compression's trained quantization: per-layer k-means weight sharing (Han et al., arXiv:1510.00149, §3).

Each layer's surviving (nonzero) weights are clustered into k = 2^bits clusters by 1-D k-means; every weight
is replaced by its cluster's centroid, so a layer stores a codebook of k values plus a ``bits``-bit index per
weight. Pruned weights (zeros) are left out of the clustering, are not a centroid and stay zero.

The centroids are then fine-tuned. With ``W_ij = C_{I_ij}`` the gradient of centroid k is (paper eq. 3)

    ∂L/∂C_k = Σ_ij ∂L/∂W_ij · 1(I_ij = k),

the sum of the gradients of the weights of cluster k. Here the weights stay ordinary parameters (no forward
hook, no reparametrization): :func:`cluster_gradient_` replaces each weight's gradient by its cluster's summed
gradient before the optimizer step, so every member of a cluster receives the same gradient, the same
momentum and weight decay, hence the same update — the centroid's update — and the cluster stays one value.
:func:`snap_` then re-sets every member to the cluster mean after the step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

#: centroid initializations compared in the paper (§3.2); ``linear`` is its choice
SHARING_INITS: tuple[str, ...] = ("linear", "density", "random")
#: the index in ``SharedWeight.assignments`` of a pruned weight (no cluster; the weight is zero)
PRUNED: int = -1
#: bounds of the index width (k = 2^bits clusters per layer)
MIN_BITS, MAX_BITS = 1, 16


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"`bits` must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return bits


def _init_centroids(x: Tensor, k: int, init: str, seed: int) -> Tensor:
    """Initial centroids (sorted, float64) of the 1-D data ``x`` (paper §3.2, Figure 4)."""
    if init == "linear":  # evenly spaced between the smallest and the largest weight
        lo, hi = x.aminmax()
        return torch.linspace(float(lo), float(hi), k, dtype=torch.float64, device=x.device)
    if init == "density":  # evenly spaced on the y-axis of the CDF, mapped back through it (quantiles)
        s = x.sort().values
        pos = torch.linspace(0.0, 1.0, k, dtype=torch.float64, device=x.device) * (s.numel() - 1)
        low = pos.floor().long()
        high = pos.ceil().long()
        return s[low] + (pos - low.to(pos.dtype)) * (s[high] - s[low])
    # random (Forgy): k observations drawn from the data (with replacement only when there are fewer than k)
    g = torch.Generator().manual_seed(seed)
    n = x.numel()
    idx = torch.randperm(n, generator=g)[:k] if n >= k else torch.randint(n, (k,), generator=g)
    return x[idx.to(x.device)].sort().values


def _nearest(x: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest of the sorted ``centroids`` for each value of ``x``: exact, O(n log k)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(x, midpoints)


def _cluster_means(x: Tensor, assignments: Tensor, previous: Tensor) -> Tensor:
    """Mean of each cluster (float64); an empty cluster keeps its previous centroid."""
    k = previous.numel()
    sums = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(
        0, assignments, x.to(torch.float64)
    )
    counts = torch.bincount(assignments, minlength=k)
    return torch.where(counts > 0, sums / counts.clamp(min=1), previous.to(torch.float64))


def kmeans_1d(
    values: Tensor, k: int, init: str = "linear", iters: int = 1000, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Cluster scalar values into ``k`` clusters with Lloyd's algorithm (exact, vectorized).

    Minimizes Σ_i (x_i − c_{a_i})² (paper eq. 1) by alternating the nearest-centroid assignment and the
    cluster means until the assignment stops changing, or for ``iters`` iterations. In 1-D each cluster is a
    run of the sorted values, so the values are sorted once (float64) and every iteration costs O(k log n):
    the run boundaries are a binary search of the midpoints between sorted centroids, the cluster sums are
    differences of prefix sums. 10^6 values take well under a second. The returned centroids are the exact
    means of the returned clusters.

    Initializations (paper §3.2): ``linear`` spaces the centroids evenly between min and max of the values
    (the paper's choice: it keeps centroids at the rare large weights that matter most); ``density`` spaces
    them evenly on the CDF (quantiles at 0, 1/(k−1), …, 1); ``random`` (Forgy) picks k of the values.

    Args:
        values: the values to cluster, any shape.
        k: number of clusters.
        init: ``"linear"``, ``"density"`` or ``"random"``.
        iters: maximal number of Lloyd iterations (0: assign to the initial centroids).
        seed: seed of the ``random`` initialization.

    Returns:
        ``(centroids, assignments)``: the ``k`` centroids, sorted ascending, in the dtype of ``values``
        (an empty cluster keeps its previous centroid), and each value's cluster index (int64, shaped like
        ``values``). No values gives ``k`` zero centroids.

    Raises:
        ValueError: ``k < 1``, an unknown ``init``, ``iters < 0`` or non-floating-point ``values``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}")
    if init not in SHARING_INITS:
        raise ValueError(f"`init` must be one of {SHARING_INITS}, got {init!r}")
    if iters < 0:
        raise ValueError(f"`iters` must be >= 0, got {iters}")
    if not values.is_floating_point():
        raise ValueError(f"`values` must be floating point, got {values.dtype}")
    x = values.detach().reshape(-1).to(torch.float64)
    n = x.numel()
    if n == 0:
        empty = torch.empty(values.shape, dtype=torch.long, device=values.device)
        return torch.zeros(k, dtype=values.dtype, device=values.device), empty
    s = x.sort().values
    prefix = torch.cat([s.new_zeros(1), s.cumsum(0)])
    centroids = _init_centroids(x, k, init, seed)
    # cluster j of the sorted values is s[ends[j-1]:ends[j]] (ends[-1] = 0): the values <= its upper midpoint,
    # as in _nearest (torch.bucketize, right=False)
    ends = torch.searchsorted(s, (centroids[1:] + centroids[:-1]) / 2, right=True)
    for _ in range(iters):
        bounds = torch.cat([ends.new_zeros(1), ends, ends.new_full((1,), n)])
        counts = bounds[1:] - bounds[:-1]
        sums = prefix[bounds[1:]] - prefix[bounds[:-1]]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
        updated = torch.searchsorted(s, (centroids[1:] + centroids[:-1]) / 2, right=True)
        if torch.equal(updated, ends):
            break
        ends = updated
    assignments = _nearest(x, centroids)
    if iters > 0:  # exact means of the final clusters (prefix-sum differences can be off in the last bits)
        centroids = _cluster_means(x, assignments, centroids)
    return centroids.to(values.dtype), assignments.reshape(values.shape)


@dataclass(eq=False)
class SharedWeight:
    """The codebook of one shared weight tensor: ``weight == decode()``.

    Attributes:
        centroids: the ``2**bits`` shared values, in the weight's dtype and device.
        assignments: the cluster index of each weight (int64, shaped like the weight), ``PRUNED`` (−1) where
            the weight is pruned (zero).
        bits: index bits per weight; ``k = 2**bits``.
    """

    centroids: Tensor
    assignments: Tensor
    bits: int
    _kept_index: Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _kept_assignments: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def mask(self) -> Tensor:
        """True where the weight is kept (not pruned)."""
        return self.assignments != PRUNED

    def kept(self) -> tuple[Tensor, Tensor]:
        """Flat indices of the kept weights and their cluster indices (cached)."""
        if self._kept_index is None or self._kept_assignments is None:
            flat = self.assignments.reshape(-1)
            self._kept_index = torch.nonzero(flat != PRUNED).squeeze(1)
            self._kept_assignments = flat[self._kept_index]
        return self._kept_index, self._kept_assignments

    def to(self, device: torch.device | str) -> SharedWeight:
        """Move the codebook to ``device`` in place (drops the cache) and return it."""
        self.centroids = self.centroids.to(device)
        self.assignments = self.assignments.to(device)
        self._kept_index = self._kept_assignments = None
        return self

    def cluster_sizes(self) -> Tensor:
        """Number of weights in each cluster (int64, length ``2**bits``)."""
        return torch.bincount(self.kept()[1], minlength=self.centroids.numel())

    def decode(self) -> Tensor:
        """The shared weight: ``centroids[assignments]``, zero where pruned."""
        index, assignments = self.kept()
        flat = torch.zeros(self.assignments.numel(), dtype=self.centroids.dtype, device=self.centroids.device)
        flat[index] = self.centroids[assignments]
        return flat.reshape(self.assignments.shape)


def share_weights_(
    weight: Tensor,
    bits: int,
    mask: Tensor | None = None,
    init: str = "linear",
    iters: int = 1000,
    seed: int = 0,
) -> SharedWeight:
    """Cluster ``weight``'s kept values into ``2**bits`` shared values and write them into ``weight`` in place.

    Pruned weights — the exact zeros, or where ``mask`` is False — are excluded from the k-means, belong to no
    cluster (``PRUNED`` in ``assignments``) and are set to zero.

    Args:
        weight: a layer's weight (e.g. ``linear.weight``); modified in place.
        bits: index bits per weight, in [1, 16]: k = 2^bits clusters.
        mask: True where a weight is kept; ``None`` treats exact zeros as pruned.
        init: centroid initialization, one of ``SHARING_INITS`` (see :func:`kmeans_1d`).
        iters: maximal number of Lloyd iterations.
        seed: seed of the ``random`` initialization.

    Returns:
        The codebook (centroids, assignments, bits).

    Raises:
        ValueError: ``bits`` outside [1, 16], a ``mask`` not shaped like ``weight``, or a bad ``init``/``iters``.
    """
    bits = _check_bits(bits)
    with torch.no_grad():
        if mask is None:
            kept = weight != 0
        else:
            if mask.shape != weight.shape:
                raise ValueError(
                    f"`mask` must have the weight's shape {tuple(weight.shape)}, got {tuple(mask.shape)}"
                )
            kept = mask.to(device=weight.device, dtype=torch.bool)
        centroids, kept_assignments = kmeans_1d(weight[kept], 2**bits, init=init, iters=iters, seed=seed)
        assignments = torch.full(weight.shape, PRUNED, dtype=torch.long, device=weight.device)
        assignments[kept] = kept_assignments
        shared = SharedWeight(centroids=centroids, assignments=assignments, bits=bits)
        weight.copy_(shared.decode())
    return shared


GRADIENT_REDUCTIONS = ("sum", "mean")


def cluster_gradient_(weight: Tensor, shared: SharedWeight, reduction: str = "sum") -> Tensor | None:
    """Replace ``weight.grad`` by its cluster's summed gradient (paper eq. 3); call before the optimizer step.

    ``∂L/∂C_k = Σ_ij ∂L/∂W_ij · 1(I_ij = k)`` is computed with one ``index_add`` (a scatter-add; on CUDA it is
    deterministic under ``torch.use_deterministic_algorithms(True)``) and gathered back to every member of
    cluster k, so that an element-wise optimizer (SGD with momentum and weight decay, Adam, …) whose state is
    equal within a cluster moves all members by the centroid's update. Pruned positions get zero gradient.
    As the gradient is a sum, a cluster's step grows with its size: fine-tune with a smaller learning rate
    than dense training, or use ``reduction="mean"`` (the sum divided by the cluster's size, i.e. a
    per-cluster learning rate of ``lr / |cluster|``), which keeps the dense training's learning rate usable.

    Args:
        weight: the shared weight, whose ``.grad`` is replaced in place.
        shared: its codebook.
        reduction: ``"sum"`` (the paper's eq. 3) or ``"mean"``.

    Returns:
        The centroid gradients ``∂L/∂C`` (length ``2**bits``), or ``None`` when ``weight.grad`` is ``None``.
    """
    grad = weight.grad
    if grad is None:
        return None
    with torch.no_grad():
        index, assignments = shared.kept()
        flat = grad.reshape(-1)
        sums = torch.zeros(shared.centroids.numel(), dtype=grad.dtype, device=grad.device)
        sums.index_add_(0, assignments, flat[index])
        if reduction == "mean":
            sums /= torch.bincount(assignments, minlength=sums.numel()).clamp_min(1).to(sums.dtype)
        elif reduction != "sum":
            raise ValueError(f"reduction must be one of {GRADIENT_REDUCTIONS}, got {reduction!r}")
        new = torch.zeros_like(flat)
        new[index] = sums[assignments]
        grad.copy_(new.reshape(grad.shape))
    return sums


def snap_(weight: Tensor, shared: SharedWeight, update_centroids: bool = True) -> None:
    """Re-set every weight of a cluster to one value, and pruned weights to zero, in place; after a step.

    With ``update_centroids`` each centroid becomes the mean of its cluster's current weights (an empty
    cluster keeps its centroid) and ``shared.centroids`` is updated. After an element-wise optimizer step
    whose state is equal within each cluster (see :func:`cluster_gradient_`) all members are already equal and
    this is exact and idempotent; it guards against float drift and against optimizers whose state is not
    element-wise (e.g. Adafactor's factored second moments, or state loaded from before the clustering),
    under which members would diverge. With ``update_centroids=False`` the weights are re-written from the
    stored (frozen) centroids.

    Args:
        weight: the shared weight, modified in place.
        shared: its codebook, whose centroids are updated in place.
        update_centroids: recompute centroids as cluster means (``True``) or keep them fixed.
    """
    with torch.no_grad():
        if update_centroids:
            index, assignments = shared.kept()
            means = _cluster_means(weight.detach().reshape(-1)[index], assignments, shared.centroids)
            shared.centroids.copy_(means.to(shared.centroids.dtype))
        weight.copy_(shared.decode().to(weight.dtype))
