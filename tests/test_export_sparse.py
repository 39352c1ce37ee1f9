"""CSR sparse inference: SparseLinear equals nn.Linear; to_sparse_inference converts only sparse layers."""

from __future__ import annotations

import copy
import io
import logging

import pytest
import torch
from torch import nn

from effdl_lightning.export import SparseLinear, to_sparse_inference
from effdl_lightning.models import create


def _pruned_linear(in_features: int, out_features: int, sparsity: float, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) >= sparsity)
    return layer


@pytest.mark.parametrize("input_shape", [(5, 12), (1, 12), (12,), (2, 3, 12), (2, 1, 3, 12), (0, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_equals_dense(input_shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    dense = _pruned_linear(12, 7, sparsity=0.8, bias=bias)
    sparse = SparseLinear.from_linear(dense)
    assert sparse.weight.layout == torch.sparse_csr
    assert sparse.nnz == int(torch.count_nonzero(dense.weight))
    assert torch.equal(sparse.to_dense_weight(), dense.weight.detach())
    x = torch.randn(*input_shape)
    with torch.no_grad():
        expected = dense(x)
    out = sparse(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert list(sparse.parameters()) == []  # inference only


def test_sparse_linear_weight_tracks_buffers() -> None:
    torch.manual_seed(0)
    layer = SparseLinear.from_linear(_pruned_linear(12, 7, 0.5, bias=False))
    x = torch.randn(3, 12)
    y = layer(x)
    assert layer.weight is layer.weight  # cached
    with torch.no_grad():
        layer.values.mul_(2)  # in place: shared memory, seen by the cached CSR tensor
    torch.testing.assert_close(layer(x), 2 * y)
    layer.set_weight(torch.zeros(7, 12))  # new buffers: rebuilt
    assert layer.nnz == 0 and torch.equal(layer(x), torch.zeros(3, 7))


def test_sparse_linear_bad_input() -> None:
    sparse = SparseLinear.from_linear(_pruned_linear(12, 7, 0.5))
    with pytest.raises(ValueError, match="last dimension 12"):
        sparse(torch.randn(3, 11))
    with pytest.raises(ValueError, match=r"weight must have shape \(7, 12\)"):
        sparse.set_weight(torch.zeros(12, 7))
    with pytest.raises(ValueError, match="must be >= 1"):
        SparseLinear(0, 3)


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = _pruned_linear(20, 16, 0.9)
        self.fc2 = _pruned_linear(16, 16, 0.3)
        self.block = nn.Sequential(_pruned_linear(16, 8, 0.6), nn.ReLU())
        self.head = _pruned_linear(8, 4, 0.95)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(torch.relu(self.fc2(torch.relu(self.fc1(x))))))


def test_to_sparse_inference_replaces_only_sparse_layers(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    model = _MLP()
    before = copy.deepcopy(model.state_dict())
    with caplog.at_level(logging.INFO, logger="effdl_lightning.export.sparse"):
        sparse = to_sparse_inference(model, min_sparsity=0.5)
    kinds = {
        name: type(m).__name__
        for name, m in sparse.named_modules()
        if name in {"fc1", "fc2", "block.0", "head"}
    }
    assert kinds == {
        "fc1": "SparseLinear",
        "fc2": "Linear",
        "block.0": "SparseLinear",
        "head": "SparseLinear",
    }
    assert "fc2 kept dense (sparsity" in caplog.text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # original untouched
    x = torch.randn(6, 20)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)
    assert isinstance(to_sparse_inference(model, 0.0).fc2, SparseLinear)
    assert not any(isinstance(m, SparseLinear) for m in to_sparse_inference(model, 1.0).modules())
    only = to_sparse_inference(model, 0.5, exclude="head")
    assert isinstance(only.fc1, SparseLinear) and isinstance(only.head, nn.Linear)
    only = to_sparse_inference(model, 0.5, include="block.*")
    assert isinstance(only.block[0], SparseLinear) and isinstance(only.fc1, nn.Linear)


def test_convs_and_attention_stay_dense() -> None:
    torch.manual_seed(0)
    lenet = create("lenet5")
    with torch.no_grad():
        for p in lenet.parameters():
            p.mul_(torch.rand_like(p) > 0.8)
    sparse = to_sparse_inference(lenet, 0.5)
    assert isinstance(sparse.conv1, nn.Conv2d) and isinstance(sparse.conv2, nn.Conv2d)
    assert isinstance(sparse.fc1, SparseLinear) and isinstance(sparse.fc2, SparseLinear)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), lenet(x), atol=1e-5, rtol=1e-5)
    attention = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0)
    with torch.no_grad():
        for p in attention.parameters():
            p.mul_(torch.rand_like(p) > 0.8)
    converted = to_sparse_inference(attention.eval(), 0.5)
    assert isinstance(converted.self_attn.out_proj, nn.Linear)  # MultiheadAttention reads its weight
    assert isinstance(converted.linear1, SparseLinear)
    src = torch.randn(5, 3, 16)
    with torch.no_grad():
        torch.testing.assert_close(converted(src), attention(src), atol=1e-5, rtol=1e-5)
    bare = _pruned_linear(8, 4, 0.9)
    assert isinstance(to_sparse_inference(bare), SparseLinear)


def test_state_dict_save_load_and_copy() -> None:
    torch.manual_seed(0)
    model = _MLP()
    sparse = to_sparse_inference(model, 0.5)
    x = torch.randn(4, 20)
    expected = sparse(x)
    # torch.save of the state dict, loaded (weights_only) into a model converted from other weights:
    # the nonzero counts differ, the buffers take the stored ones
    buffer = io.BytesIO()
    torch.save(sparse.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    other = to_sparse_inference(_MLP(), 0.5)
    assert other.fc1.nnz != sparse.fc1.nnz
    other.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(other(x), expected, atol=0, rtol=0)
    # the whole module, a deep copy, a dtype change
    buffer = io.BytesIO()
    torch.save(sparse, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.load(buffer, weights_only=False)(x), expected, atol=0, rtol=0)
    torch.testing.assert_close(copy.deepcopy(sparse)(x), expected, atol=0, rtol=0)
    double = copy.deepcopy(sparse).to(torch.float64)
    assert double.fc1.weight.dtype == torch.float64
    torch.testing.assert_close(double(x.double()).float(), expected, atol=1e-5, rtol=1e-5)
    bad = sparse.state_dict()
    bad["fc1.crow_indices"] = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match=r"crow_indices has shape \(3,\), expected \(17,\)"):
        other.load_state_dict(bad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True])
def test_bad_min_sparsity(bad: object) -> None:
    with pytest.raises(ValueError, match="min_sparsity must be a number in"):
        to_sparse_inference(_MLP(), bad)  # type: ignore[arg-type]


def test_pattern_matching_nothing() -> None:
    with pytest.raises(ValueError, match="include pattern 'fc9' matches no layer"):
        to_sparse_inference(_MLP(), include="fc9")
