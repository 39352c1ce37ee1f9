"""Deep Compression storage (arXiv:1510.00149): Huffman coding, relative indices, the file and its bytes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from effdl_lightning.export import (
    HuffmanCode,
    huffman_decode,
    huffman_encode,
    load_deep_compressed,
    relative_index_decode,
    relative_index_encode,
    save_deep_compressed,
    storage_report,
)
from effdl_lightning.export.huffman import canonical_codes, pack_fixed, unpack_fixed
from effdl_lightning.models import create

# -- Huffman ------------------------------------------------------------------------------------------------


def _entropy(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / symbols.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


@pytest.mark.parametrize(
    "symbols",
    [
        np.random.default_rng(0).integers(0, 64, 5000),  # near uniform
        np.random.default_rng(1).geometric(0.3, 3000) - 1,  # skewed
        np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 9]),
    ],
    ids=["random", "skewed", "small"],
)
def test_huffman_round_trip_and_optimality(symbols: np.ndarray) -> None:
    code, data, nbits = huffman_encode(symbols)
    assert len(data) == math.ceil(nbits / 8)
    np.testing.assert_array_equal(huffman_decode(code.table(), data, nbits), symbols)
    entropy, average = _entropy(symbols), nbits / symbols.size
    assert entropy - 1e-9 <= average <= entropy + 1  # Shannon: H <= L < H + 1
    assert code.encoded_bits(np.bincount(symbols)) == nbits
    lengths = [n for n in code.lengths if n]
    assert sum(2.0**-n for n in lengths) == pytest.approx(1.0)  # a full (complete) prefix code


def test_huffman_single_symbol_and_empty() -> None:
    code, data, nbits = huffman_encode([7, 7, 7, 7, 7])
    assert code.lengths == (0,) * 7 + (1,) and nbits == 5 and data == b"\x00"
    np.testing.assert_array_equal(huffman_decode(code.table(), data, nbits), [7] * 5)
    code, data, nbits = huffman_encode([])
    assert code.lengths == () and code.table() == b"" and data == b"" and nbits == 0
    assert huffman_decode(b"", b"", 0).size == 0


def test_huffman_canonical_and_deterministic() -> None:
    # frequencies 1, 1, 2: symbol 2 gets 1 bit; ties between 0 and 1 are broken by symbol order
    code = HuffmanCode.from_frequencies([1, 1, 2])
    assert code.lengths == (2, 2, 1)
    assert code.codes == [0b10, 0b11, 0b0]  # canonical: shorter codes first, then by symbol
    assert canonical_codes([2, 1, 3, 3]) == [0b10, 0b0, 0b110, 0b111]
    assert HuffmanCode.from_frequencies([5, 5, 5, 5]).lengths == (2, 2, 2, 2)
    assert HuffmanCode.from_table(code.table()) == code
    symbols = np.random.default_rng(2).integers(0, 20, 400)
    assert huffman_encode(symbols)[1] == huffman_encode(symbols.copy())[1]


def test_huffman_errors() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        huffman_encode([1, -2])
    with pytest.raises(ValueError, match="no code"):
        HuffmanCode.from_frequencies([3, 0, 1]).encode([1])
    with pytest.raises(ValueError, match="Kraft"):
        HuffmanCode.from_table(bytes([1, 1, 1]))
    code, data, _ = huffman_encode([0, 1, 2, 2])
    with pytest.raises(ValueError, match="corrupt Huffman stream"):
        code.decode(data, 3)  # "10 1|": the last code is cut


def test_fixed_width_packing() -> None:
    assert pack_fixed([1, 2, 7, 2], 3) == bytes([0b00101011, 0b10100000])  # 001 010 111 010, MSB first
    values = np.random.default_rng(3).integers(0, 1 << 11, 101)
    np.testing.assert_array_equal(unpack_fixed(pack_fixed(values, 11), 11, 101), values)
    with pytest.raises(ValueError, match="does not fit in 3 bits"):
        pack_fixed([8], 3)


# -- relative indices ---------------------------------------------------------------------------------------


def test_relative_index_paper_figure_2() -> None:
    # Fig. 2: nonzeros at 1, 4, 15 with 3-bit indices; the gap 4 -> 15 overflows, a filler zero goes at 12
    codes, entries = relative_index_encode(np.array([1, 4, 15]), index_bits=3)
    np.testing.assert_array_equal(entries, [1, 4, 12, 15])
    np.testing.assert_array_equal(codes, [1, 2, 7, 2])  # zeros skipped: gaps 2, 3, 8, 3
    np.testing.assert_array_equal(relative_index_decode(codes), entries)


@pytest.mark.parametrize(
    ("positions", "codes", "entries"),
    [
        ([0], [0], [0]),
        ([7], [7], [7]),  # gap 8: the largest without a filler
        ([8], [7, 0], [7, 8]),  # gap 9: one filler
        ([2, 19], [2, 7, 7, 0], [2, 10, 18, 19]),  # gap 17: two fillers
        ([], [], []),
    ],
)
def test_relative_index_fillers(positions: list[int], codes: list[int], entries: list[int]) -> None:
    got_codes, got_entries = relative_index_encode(np.array(positions, dtype=np.int64), index_bits=3)
    np.testing.assert_array_equal(got_codes, codes)
    np.testing.assert_array_equal(got_entries, entries)
    np.testing.assert_array_equal(relative_index_decode(got_codes), entries)


# -- the file -----------------------------------------------------------------------------------------------


def _bits(t: Tensor) -> Tensor:
    """The raw bits of a tensor, to compare bit-exactly."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _assert_bit_exact(loaded: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert list(loaded) == list(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert torch.equal(_bits(loaded[name]), _bits(tensor)), name


def _prune_(weight: Tensor, kept: float) -> None:
    """Keep the ``kept`` fraction of largest-magnitude weights, zero (+0.0) the rest."""
    k = round(kept * weight.numel())
    threshold = weight.abs().flatten().kthvalue(weight.numel() - k).values
    with torch.no_grad():
        weight.copy_(torch.where(weight.abs() > threshold, weight, torch.zeros_like(weight)))


def _share_(weight: Tensor, bits: int, iters: int = 15) -> tuple[Tensor, Tensor]:
    """Tiny 1-D k-means with linear init (paper §3.2) on the nonzeros; writes centroids into the weight."""
    kept = weight.detach() != 0
    x = weight.detach()[kept]
    centroids = torch.linspace(float(x.min()), float(x.max()), 2**bits)

    def nearest_of(c: Tensor) -> Tensor:  # 1-D: the centroids stay sorted, cut at the midpoints
        return torch.bucketize(x, (c[1:] + c[:-1]) / 2)

    for _ in range(iters):
        nearest = nearest_of(centroids)
        sums = torch.zeros_like(centroids).index_add_(0, nearest, x)
        counts = torch.bincount(nearest, minlength=centroids.numel())
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    nearest = nearest_of(centroids)
    assignments = torch.full(weight.shape, -1, dtype=torch.long)
    assignments[kept] = nearest
    with torch.no_grad():
        weight[kept] = centroids[nearest]
    return centroids, assignments


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(64, 10)


def _net(prune: bool, share: bool) -> tuple[nn.Module, dict[str, tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    net = _Net()
    net.bn.num_batches_tracked += 3  # an int64 buffer
    books = {}
    for name, kept in (("conv.weight", 0.3), ("fc.weight", 0.1)):
        weight = net.get_parameter(name)
        if prune:
            _prune_(weight, kept)
        if share:
            books[name] = _share_(weight, bits=4)
    return net, books


@pytest.mark.parametrize("huffman", [True, False])
@pytest.mark.parametrize(("prune", "share"), [(True, True), (True, False), (False, False), (False, True)])
def test_file_round_trip_and_exact_bytes(tmp_path: Path, prune: bool, share: bool, huffman: bool) -> None:
    net, books = _net(prune, share)
    path = tmp_path / "model.edc"
    report = save_deep_compressed(net, path, codebooks=books, huffman=huffman)
    _assert_bit_exact(load_deep_compressed(path), net.state_dict())
    assert path.stat().st_size == report.total_bytes + report.header_bytes == report.file_bytes
    assert report.total_bytes == sum(t.bytes for t in report.tensors)
    assert report.dense_fp32_bytes == 4 * sum(t.numel() for t in net.state_dict().values())
    assert storage_report(net, codebooks=books, huffman=huffman) == report
    formats = {t.name: t.format for t in report.tensors}
    assert formats == {
        "conv.weight": "sparse",
        "conv.bias": "raw",
        "bn.weight": "raw",
        "bn.bias": "raw",
        "bn.running_mean": "raw",
        "bn.running_var": "raw",
        "bn.num_batches_tracked": "raw",
        "fc.weight": "sparse",
        "fc.bias": "raw",
    }
    by_name = {t.name: t for t in report.tensors}
    assert by_name["conv.weight"].index_bits == 8 and by_name["fc.weight"].index_bits == 5  # paper defaults
    assert by_name["bn.num_batches_tracked"].bytes == 8
    if prune:
        assert by_name["fc.weight"].nonzero == 64 and by_name["fc.weight"].kept_fraction == pytest.approx(0.1)


def test_hand_counted_bytes_of_figure_2(tmp_path: Path) -> None:
    weight = torch.zeros(1, 16)
    weight[0, 1], weight[0, 4], weight[0, 15] = 3.4, 0.9, 1.7
    state = {"w": weight}
    plain = save_deep_compressed(state, tmp_path / "plain.edc", index_bits=3, huffman=False)
    # 4 entries (one filler): 4 × 3-bit gaps -> 2 bytes; 4 float32 values -> 16 bytes
    (t,) = plain.tensors
    assert (t.entries, t.fillers, t.nonzero, t.bytes) == (4, 1, 3, 18)
    centroids = torch.tensor([0.9, 1.7, 3.4])
    assignments = torch.tensor([[-1, 2, -1, -1, 0] + [-1] * 10 + [1]])
    shared = save_deep_compressed(
        state, tmp_path / "shared.edc", codebooks={"w": (centroids, assignments)}, index_bits=3, huffman=False
    )
    # codebook 0.0 (filler) + 3 centroids -> 16 bytes; gaps 2 bytes; 4 × 2-bit codes -> 1 byte
    (t,) = shared.tensors
    assert (t.value_bits, t.bytes) == (2, 19)
    for name, report in (("plain", plain), ("shared", shared)):
        loaded = load_deep_compressed(tmp_path / f"{name}.edc")["w"]
        assert torch.equal(_bits(loaded), _bits(weight))
        assert (tmp_path / f"{name}.edc").stat().st_size == report.total_bytes + report.header_bytes


def test_float16_values_and_dtypes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weight = torch.randn(8, 8)
    _prune_(weight, 0.25)
    state = {"a": weight, "b": weight.to(torch.bfloat16), "c": torch.arange(5), "d": torch.tensor(2.5)}
    report = save_deep_compressed(state, tmp_path / "f.edc", value_bits={"a": 16})
    loaded = load_deep_compressed(tmp_path / "f.edc")
    assert torch.equal(loaded["a"], weight.half().float())  # float16 rounding, asked for
    for name in "bcd":
        assert torch.equal(_bits(loaded[name]), _bits(state[name]))
    assert [t.format for t in report.tensors] == ["sparse", "sparse", "raw", "raw"]
    assert report.tensors[0].value_bits == 16 and report.tensors[1].value_bits == 32


def test_lenet300_deep_compression_ratio(tmp_path: Path) -> None:
    """Paper Table 2 (LeNet-300-100): 8% / 9% / 26% kept, 6-bit weights, 5-bit indices -> 40×."""
    torch.manual_seed(0)
    model = create("lenet300")
    books = {}
    for name, kept in (("fc1.weight", 0.08), ("fc2.weight", 0.09), ("fc3.weight", 0.26)):
        weight = model.get_parameter(name)
        with torch.no_grad():  # trained weights are bell-shaped, not uniform like the initialization
            weight.normal_(0.0, weight.std().item())
        _prune_(weight, kept)
        books[name] = _share_(weight, bits=6)
    path = tmp_path / "lenet300.edc"
    report = save_deep_compressed(model, path, codebooks=books)
    _assert_bit_exact(load_deep_compressed(path), model.state_dict())
    assert path.stat().st_size == report.file_bytes
    assert report.ratio >= 35  # paper: 40× (with trained, structured sparsity; positions here are random)
    assert report.file_ratio >= 34
    plain = storage_report(model, codebooks=books, huffman=False)
    assert 0.7 * plain.total_bytes < report.total_bytes < 0.85 * plain.total_bytes  # Huffman saves 15–30%
    table = report.to_table()
    assert "fc1.weight" in table and "**total**" in table and f"{report.ratio:.1f}×" in table


# -- bad arguments ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"index_bits": 0}, r"index_bits of 'conv.weight' must be an int in \[1, 16\]; got 0"),
        ({"index_bits": 17}, r"index_bits .* in \[1, 16\]; got 17"),
        ({"index_bits": {"fc.weight": True}}, r"index_bits .* got True"),
        ({"index_bits": {"nope": 4}}, r"index_bits names tensors that are not compressed: \['nope'\]"),
        (
            {"value_bits": 8},
            r"value_bits of 'conv.weight' \(not weight-shared: plain floats\) must be one of",
        ),
        ({"value_bits": {"fc.weight": 0}}, r"value_bits of 'fc.weight' \(codebook code width\) .* got 0"),
        ({"value_bits": {"fc.weight": 17}}, r"value_bits of 'fc.weight' \(codebook code width\) .* got 17"),
        ({"value_bits": {"fc.weight": 3}, "index_bits": 1}, r"value_bits=3 cannot index 17 codebook codes"),
        ({"value_bits": "6"}, r"value_bits must be an int, a mapping"),
    ],
)
def test_bad_bits(kwargs: dict, match: str) -> None:
    net, books = _net(prune=True, share=False)
    books = {"fc.weight": _share_(net.fc.weight, bits=4)}
    with pytest.raises(ValueError, match=match):
        storage_report(net, codebooks=books, **kwargs)


def test_bad_codebooks(tmp_path: Path) -> None:
    net, books = _net(prune=True, share=True)
    centroids, assignments = books["fc.weight"]
    cases = [
        ({"fc.wieght": books["fc.weight"]}, r"codebooks name unknown tensors \['fc.wieght'\]"),
        ({"fc.bias": (centroids, torch.zeros(10, dtype=torch.long))}, r"not compressed"),
        (
            {"fc.weight": (centroids, assignments.reshape(-1))},
            r"assignments of 'fc.weight' have shape \(640,\)",
        ),
        ({"fc.weight": (centroids, assignments.float())}, r"must be an integer tensor"),
        ({"fc.weight": (centroids, assignments.clamp(min=0) + 16)}, r"must be in \[0, 15\]"),
        ({"fc.weight": (centroids + 1e-3, assignments)}, r"differs from centroids\[assignments\]"),
        ({"fc.weight": (centroids.reshape(4, 4), assignments)}, r"1-D float tensor"),
        ({"fc.weight": centroids}, r"\(centroids, assignments\) pair"),
    ]
    for codebooks, match in cases:
        with pytest.raises(ValueError, match=match):
            save_deep_compressed(net, tmp_path / "bad.edc", codebooks=codebooks)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_bad_state_and_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'w' of dtype torch.float64 cannot be stored sparse"):
        storage_report({"w": torch.ones(3, 3, dtype=torch.float64)})
    assert (
        storage_report({"w": torch.ones(3, 3, dtype=torch.float64)}, compress=lambda n, t: False).ratio == 0.5
    )
    with pytest.raises(ValueError, match="'extra' is a str, not a tensor"):
        storage_report({"extra": "x"})  # type: ignore[dict-item]
    bad = tmp_path / "bad.edc"
    bad.write_bytes(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="not a Deep Compression file"):
        load_deep_compressed(bad)
    good = tmp_path / "good.edc"
    save_deep_compressed({"w": torch.eye(4)}, good)
    bad.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        load_deep_compressed(bad)
    bad.write_bytes(good.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="1 trailing bytes"):
        load_deep_compressed(bad)


def test_auto_index_bits_keeps_the_smallest_encoding_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weight = torch.randn(64, 200)
    weight[torch.rand(64, 200) > 0.1] = 0.0
    state = {"w": weight}
    sizes = {bits: storage_report(state, index_bits=bits).total_bytes for bits in range(2, 9)}
    auto = save_deep_compressed(state, tmp_path / "auto.deepc", index_bits="auto")
    assert auto.total_bytes == min(sizes.values())
    assert auto.tensors[0].index_bits == min(sizes, key=sizes.__getitem__)
    assert torch.equal(load_deep_compressed(tmp_path / "auto.deepc")["w"], weight)
    with pytest.raises(ValueError, match="index_bits must be an int, a mapping, None or 'auto'; got 'best'"):
        storage_report(state, index_bits="best")
