"""The Deep Compression file: pruned, weight-shared, Huffman-coded weights with exact byte accounting.

After Han, Mao & Dally, "Deep Compression" (ICLR 2016, arXiv:1510.00149): §2 (relative-index sparse storage
with filler zeros, Fig. 2), §3 (weight sharing: a codebook plus a ``bits``-bit cluster index per weight,
Fig. 3) and §4 (Huffman coding of the indices and the gaps). The per-tensor format is spelled out in
:mod:`effdl_lightning.export.sparse_format`.

File layout (all integers little-endian)::

    offset 0   4 bytes   magic b"EDC1"
    offset 4   uint32    H = length of the JSON header
    offset 8   H bytes   zlib-compressed UTF-8 JSON header: {"format", "version", "tensors": [per tensor, in state-dict
                         order: name, shape, dtype, "format": "raw" | "sparse" and, for sparse tensors, the
                         entry count, index/value bits, codebook size and each stream's coding and bit
                         count]} — what a reader needs to split the payload, nothing it could not rebuild
    offset 8+H payload   every tensor's sections, in header order, each byte-aligned:
                         raw tensors: numel × itemsize bytes in their own dtype (biases, BN, buffers);
                         sparse tensors: [codebook] [gap table] gap stream [value table] value stream

The report counts the **payload** exactly (``StorageReport.total_bytes``) and the header separately
(``StorageReport.header_bytes``, 8 + H); the file's size is exactly their sum. The compression ratio
``dense_fp32_bytes / total_bytes`` compares against 4 bytes per element of every tensor, as the paper's
tables do; ``file_ratio`` includes the header.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from effdl_lightning.export.report import StorageReport, TensorReport
from effdl_lightning.export.sparse_format import (
    MAX_BITS,
    MIN_BITS,
    PLAIN_VALUE_BITS,
    EncodedTensor,
    decode_sparse,
    default_index_bits,
    encode_sparse,
)

MAGIC = b"EDC1"
FORMAT_VERSION = 2
_PREFIX = struct.Struct("<4sI")  # magic, header length
#: dtypes a compressed tensor may have: their values are exactly representable in float32
_SPARSE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

CompressFn = Callable[[str, Tensor], bool]
BitsArg = Mapping[str, int] | int | None
#: ``index_bits="auto"``: the relative-index widths tried per tensor (the smallest encoding is kept)
AUTO_INDEX_BITS = range(2, 9)


def default_compress(name: str, tensor: Tensor) -> bool:
    """The tensors stored in the sparse format by default: floating weights of dim >= 2 (fc and conv)."""
    return tensor.dim() >= 2 and tensor.is_floating_point()


def _state_dict(state_dict_or_module: Mapping[str, Tensor] | nn.Module) -> dict[str, Tensor]:
    source = (
        state_dict_or_module.state_dict()
        if isinstance(state_dict_or_module, nn.Module)
        else state_dict_or_module
    )
    state: dict[str, Tensor] = {}
    for name, value in source.items():
        if not isinstance(value, Tensor):
            raise ValueError(f"state-dict entry {name!r} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.is_quantized:
            raise ValueError(
                f"state-dict entry {name!r} has layout {value.layout}; only dense tensors are stored"
            )
        state[str(name)] = value.detach().cpu()
    return state


def _check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{what} must be an int in [{low}, {high}]; got {value!r}")
    return value


def _per_tensor(arg: BitsArg, what: str, names: list[str]) -> dict[str, int | None]:
    """Spread an int / per-name mapping / None over the compressed tensors; unknown names raise."""
    if arg is None or isinstance(arg, int):
        return dict.fromkeys(names, arg)
    if not isinstance(arg, Mapping):
        raise ValueError(f"{what} must be an int, a mapping of tensor name to int, or None; got {arg!r}")
    unknown = sorted(set(arg) - set(names))
    if unknown:
        raise ValueError(
            f"{what} names tensors that are not compressed: {unknown}; compressed tensors: {names}"
        )
    return {name: arg.get(name) for name in names}


def _check_codebook(name: str, weight: Tensor, codebook: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``(centroids, assignments)`` against the weight; return them as numpy (float32, int64 flat)."""
    if not (isinstance(codebook, tuple | list) and len(codebook) == 2):
        raise ValueError(f"codebooks[{name!r}] must be a (centroids, assignments) pair of tensors")
    centroids, assignments = (torch.as_tensor(c).detach().cpu() for c in codebook)
    if (
        centroids.dim() != 1
        or not centroids.is_floating_point()
        or not 1 <= centroids.numel() < 1 << MAX_BITS
    ):
        raise ValueError(
            f"centroids of {name!r} must be a 1-D float tensor of 1 to {(1 << MAX_BITS) - 1} values; got "
            f"dtype {centroids.dtype}, shape {tuple(centroids.shape)}"
        )
    if assignments.is_floating_point() or assignments.is_complex() or assignments.dtype == torch.bool:
        raise ValueError(f"assignments of {name!r} must be an integer tensor; got {assignments.dtype}")
    if assignments.shape != weight.shape:
        raise ValueError(
            f"assignments of {name!r} have shape {tuple(assignments.shape)} but the weight has {tuple(weight.shape)}"
        )
    kept = weight != 0
    kept_assignments = assignments[kept].long()
    k = centroids.numel()
    if kept_assignments.numel() and (int(kept_assignments.min()) < 0 or int(kept_assignments.max()) >= k):
        raise ValueError(
            f"assignments of {name!r} at nonzero weights must be in [0, {k - 1}] (k = {k} centroids); got "
            f"[{int(kept_assignments.min())}, {int(kept_assignments.max())}]"
        )
    stored = centroids.to(torch.float32)
    decoded = stored[kept_assignments].to(weight.dtype)
    differ = decoded != weight[kept]
    if bool(differ.any()):
        raise ValueError(
            f"the weight {name!r} differs from centroids[assignments] at {int(differ.sum())} of "
            f"{int(kept.sum())} nonzero positions; write the shared weights into the model first (a file must "
            "load back to the model's weights)"
        )
    return stored.numpy(), assignments.reshape(-1).long().numpy()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _encode(
    state_dict_or_module: Mapping[str, Tensor] | nn.Module,
    codebooks: Mapping[str, tuple[Tensor, Tensor]] | None,
    index_bits: BitsArg | str,
    value_bits: BitsArg,
    huffman: bool,
    compress: CompressFn | None,
) -> tuple[bytes, list[bytes], StorageReport]:
    """Encode a state dict: ``(header bytes, payload sections, report)``."""
    if sys.byteorder != "little":
        raise NotImplementedError("the Deep Compression file is written on little-endian machines only")
    state = _state_dict(state_dict_or_module)
    choose = compress or default_compress
    compressed = [name for name, t in state.items() if choose(name, t)]
    for name in compressed:
        if state[name].dtype not in _SPARSE_DTYPES:
            raise ValueError(
                f"tensor {name!r} of dtype {state[name].dtype} cannot be stored sparse; compressed tensors must "
                f"be one of {[_dtype_name(d) for d in _SPARSE_DTYPES]} (exclude it with `compress`)"
            )
    books = dict(codebooks or {})
    unknown = sorted(set(books) - set(state))
    if unknown:
        raise ValueError(f"codebooks name unknown tensors {unknown}; state-dict keys: {list(state)}")
    not_compressed = sorted(set(books) - set(compressed))
    if not_compressed:
        raise ValueError(
            f"codebooks are given for {not_compressed}, which are not compressed; compressed: {compressed}"
        )
    auto = index_bits == "auto"
    if isinstance(index_bits, str) and not auto:
        raise ValueError(f"index_bits must be an int, a mapping, None or 'auto'; got {index_bits!r}")
    index_of = _per_tensor(None if auto else index_bits, "index_bits", compressed)  # type: ignore[arg-type]
    value_of = _per_tensor(value_bits, "value_bits", compressed)
    for name in compressed:
        if index_of[name] is not None:
            _check_int(index_of[name], f"index_bits of {name!r}", MIN_BITS, MAX_BITS)
        bits = value_of[name]
        if bits is not None and name in books:
            _check_int(bits, f"value_bits of {name!r} (codebook code width)", MIN_BITS, MAX_BITS)
        elif bits is not None and (isinstance(bits, bool) or bits not in PLAIN_VALUE_BITS):
            raise ValueError(
                f"value_bits of {name!r} (not weight-shared: plain floats) must be one of {PLAIN_VALUE_BITS}; "
                f"got {bits!r}"
            )
    checked = {name: _check_codebook(name, state[name], book) for name, book in books.items()}

    metas: list[dict[str, Any]] = []
    sections: list[bytes] = []
    reports: list[TensorReport] = []
    for name, tensor in state.items():
        shape = tuple(int(d) for d in tensor.shape)
        numel = tensor.numel()
        meta: dict[str, Any] = {"name": name, "shape": list(shape), "dtype": _dtype_name(tensor.dtype)}
        if name in index_of:
            flat = tensor.reshape(-1).to(torch.float32).numpy()
            bits = index_of[name]
            widths = AUTO_INDEX_BITS if auto else [default_index_bits(shape) if bits is None else bits]
            candidates = [
                encode_sparse(
                    flat, index_bits=w, value_bits=value_of[name], codebook=checked.get(name), huffman=huffman
                )
                for w in widths
            ]
            encoded: EncodedTensor = min(candidates, key=lambda e: e.nbytes)
            meta.update(encoded.meta)
            sections += encoded.sections
            n = max(encoded.entries, 1)
            report = TensorReport(
                name=name, shape=shape, numel=numel, nonzero=encoded.nonzero,
                index_bits=encoded.index_bits, value_bits=encoded.value_bits, huffman=encoded.huffman,
                bytes_dense_fp32=4 * numel, bytes=encoded.nbytes,
                kept_fraction=encoded.nonzero / numel if numel else 1.0, format="sparse",
                entries=encoded.entries, fillers=encoded.fillers,
                index_bits_avg=encoded.index_stream_bits / n, value_bits_avg=encoded.value_stream_bits / n,
            )  # fmt: skip
        else:
            raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            meta["format"] = "raw"
            sections.append(raw)
            nonzero = int(torch.count_nonzero(tensor)) if numel else 0
            report = TensorReport(
                name=name, shape=shape, numel=numel, nonzero=nonzero, index_bits=0,
                value_bits=8 * tensor.element_size(), huffman=False, bytes_dense_fp32=4 * numel,
                bytes=len(raw), kept_fraction=nonzero / numel if numel else 1.0,
            )  # fmt: skip
        metas.append(meta)
        reports.append(report)
    header_json = zlib.compress(
        json.dumps(
            {"format": "effdl-deep-compression", "version": FORMAT_VERSION, "tensors": metas},
            separators=(",", ":"),
        ).encode("utf-8"),
        level=9,
    )
    header = _PREFIX.pack(MAGIC, len(header_json)) + header_json
    storage = StorageReport(
        tensors=reports,
        total_bytes=sum(r.bytes for r in reports),
        dense_fp32_bytes=sum(r.bytes_dense_fp32 for r in reports),
        header_bytes=len(header),
    )
    return header, sections, storage


def storage_report(
    state_dict_or_module: Mapping[str, Tensor] | nn.Module,
    *,
    codebooks: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    index_bits: BitsArg | str = None,
    value_bits: BitsArg = None,
    huffman: bool = True,
    compress: CompressFn | None = None,
) -> StorageReport:
    """The exact :class:`StorageReport` of :func:`save_deep_compressed` with the same arguments, no file written."""
    return _encode(state_dict_or_module, codebooks, index_bits, value_bits, huffman, compress)[2]


def save_deep_compressed(
    state_dict_or_module: Mapping[str, Tensor] | nn.Module,
    path: str | os.PathLike[str],
    *,
    codebooks: Mapping[str, tuple[Tensor, Tensor]] | None = None,
    index_bits: BitsArg | str = None,
    value_bits: BitsArg = None,
    huffman: bool = True,
    compress: CompressFn | None = None,
) -> StorageReport:
    """Write a state dict in the Deep Compression format (arXiv:1510.00149 §2–4; layout in the module doc).

    Args:
        state_dict_or_module: a module (its ``state_dict()``) or a mapping of names to dense tensors.
        path: the file to write (written to a temporary file, then renamed: never left half-written).
        codebooks: ``{name: (centroids[k], assignments)}`` of weight-shared tensors, e.g.
            ``WeightSharing.codebooks()``; ``assignments`` is an integer tensor shaped like the weight (any
            value, e.g. −1, where the weight is zero) and the weight must equal ``centroids[assignments]`` at
            every nonzero. Tensors without a codebook store float values.
        index_bits: relative-index bits, one int for all compressed tensors or per name; default 5 for
            matrices (fc) and 8 for higher-rank (conv) weights, as in the paper; ``"auto"`` tries 2–8 bits
            per tensor and keeps the smallest encoding (the width is stored, so loading is unchanged).
        value_bits: per tensor (or one int): the codebook-code width of a shared tensor (default: the fewest
            bits that index its codes, the filler zero included) or 32/16 for plain float values (default
            32; 16 rounds to float16).
        huffman: Huffman-code the gaps and the codebook codes of each tensor (separate codes per tensor and
            per stream), each stream only where that, with its table, is smaller than fixed width.
        compress: ``compress(name, tensor) -> bool`` picks the tensors stored sparse; default
            :func:`default_compress` (floating tensors of dim >= 2). The others are stored raw.

    Returns:
        The exact storage report; the file has ``report.file_bytes`` bytes.

    Raises:
        ValueError: bits out of range, codebooks for unknown or uncompressed tensors, assignments of the
            wrong shape or range, weights that differ from their codebook, unsupported dtypes.
    """
    header, sections, report = _encode(
        state_dict_or_module, codebooks, index_bits, value_bits, huffman, compress
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(header)
            for section in sections:
                handle.write(section)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return report


def load_deep_compressed(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a file written by :func:`save_deep_compressed` back to its state dict.

    Every tensor comes back with its name, shape and dtype; nonzero values are bit-exact
    (``centroids[assignments]`` for shared tensors, float16-rounded where ``value_bits=16`` was asked) and
    pruned positions are ``+0.0``.
    """
    data = Path(path).read_bytes()
    if len(data) < _PREFIX.size:
        raise ValueError(f"{path}: not a Deep Compression file (too short)")
    magic, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"{path}: not a Deep Compression file (magic {magic!r}, expected {MAGIC!r})")
    header = json.loads(zlib.decompress(data[_PREFIX.size : _PREFIX.size + header_len]).decode("utf-8"))
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format version {header.get('version')!r}")
    offset = _PREFIX.size + header_len

    def read(n: int) -> bytes:
        nonlocal offset
        if offset + n > len(data):
            raise ValueError(f"{path}: truncated file (needs {offset + n} bytes, has {len(data)})")
        chunk = data[offset : offset + n]
        offset += n
        return chunk

    state: dict[str, Tensor] = {}
    for meta in header["tensors"]:
        shape = tuple(int(d) for d in meta["shape"])
        dtype = getattr(torch, meta["dtype"])
        numel = math.prod(shape)
        if meta["format"] == "raw":
            itemsize = torch.empty(0, dtype=dtype).element_size()
            raw = read(numel * itemsize)
            tensor = (
                torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
                if numel
                else torch.empty(shape, dtype=dtype)
            )
        elif meta["format"] == "sparse":
            tensor = torch.from_numpy(decode_sparse(meta, numel, read)).to(dtype).reshape(shape)
        else:
            raise ValueError(f"{path}: unknown tensor format {meta['format']!r} for {meta['name']!r}")
        state[meta["name"]] = tensor
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes after the last tensor")
    return state
