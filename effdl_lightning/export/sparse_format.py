"""The per-tensor sparse format of Deep Compression (Han et al., arXiv:1510.00149, §2 Fig. 2, §3 Fig. 3, §4).

A weight tensor is flattened in row-major (C) order and only its nonzero entries are stored, as

1. **relative index gaps** of ``index_bits`` bits. Entry ``j`` at flat position ``p_j`` stores the number of
   zeros skipped since the previous entry, ``code_j = p_j − p_{j−1} − 1`` with ``p_{−1} = −1`` (the
   zero-run convention of EIE, arXiv:1602.01528), so a code in ``[0, 2^bits − 1]`` covers a gap
   ``p_j − p_{j−1}`` of 1 … ``2^bits``. When a gap is longer than ``2^bits`` a **filler zero** entry — an
   explicit zero value — is inserted ``2^bits`` positions after the previous entry (code ``2^bits − 1``),
   as often as needed, exactly as in the paper's Figure 2: with 3-bit codes, nonzeros at positions 1, 4
   and 15 are stored as entries at 1, 4, 12 (filler) and 15, i.e. gaps 2, 3, 8, 3 and codes 1, 2, 7, 2.
   (The figure draws the first gap from position 0; counting it from −1 lets position 0 be stored too.)
2. **values**, one per entry (fillers included), either
   - **codebook codes** when the tensor is weight-shared (paper §3, Fig. 3): the codebook of float32
     centroids is stored first (32 bits per entry), and each entry stores a ``value_bits``-bit code. When the
     tensor has filler entries, **code 0 is the exact value 0.0** (the filler) and centroid ``i`` is code
     ``i + 1``; without fillers no zero is stored and centroid ``i`` is code ``i``; or
   - **plain floats** otherwise: float32 (``value_bits=32``, exact) or float16 (``value_bits=16``, rounded).
3. optionally **Huffman coding** (paper §4), per tensor and separately for the gap codes and the value
   codes: a stream is Huffman-coded when that is smaller than fixed width, its canonical table (one byte per
   symbol) included. Plain float values are never Huffman-coded.

Sections of one tensor in the file, each padded to a whole byte, in this order::

    [codebook: K × float32 LE]  (codebook values only; K = centroids + 1 if the filler zero is stored)
    [gap table: T_g bytes]      (Huffman-coded gaps only; one uint8 code length per symbol 0 … T_g − 1)
    gap stream                  (ceil(n·index_bits / 8) bytes fixed, or ceil(nbits / 8) bytes Huffman)
    [value table: T_v bytes]    (Huffman-coded codebook codes only)
    value stream                (ceil(n·value_bits / 8) bytes fixed or Huffman; n × 4 or n × 2 bytes plain)

Pruned zeros (``+0.0`` or ``−0.0``) are all restored as ``+0.0``; every other value is restored bit-exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from effdl_lightning.export.huffman import HuffmanCode, pack_fixed, unpack_fixed

#: relative-index bits the paper uses (§2): 8 for conv layers, 5 for fully connected layers
CONV_INDEX_BITS, FC_INDEX_BITS = 8, 5
#: bounds of ``index_bits`` and of the width of codebook codes
MIN_BITS, MAX_BITS = 1, 16
#: widths of plain (not weight-shared) values
PLAIN_VALUE_BITS: tuple[int, ...] = (16, 32)


def default_index_bits(shape: tuple[int, ...]) -> int:
    """The paper's relative-index width: 5 bits for a matrix (fc), 8 for a higher-rank (conv) weight."""
    return FC_INDEX_BITS if len(shape) <= 2 else CONV_INDEX_BITS


def relative_index_encode(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Relative-index codes of sorted flat ``positions``, with filler entries on overflow.

    Args:
        positions: strictly increasing flat positions of the nonzero entries.
        index_bits: width of a code; a code ``c`` means a gap of ``c + 1``.

    Returns:
        ``(codes, entry_positions)``: one code per stored entry and that entry's flat position; entries
        whose position is not in ``positions`` are fillers.
    """
    if not MIN_BITS <= index_bits <= MAX_BITS:
        raise ValueError(f"index_bits must be in [{MIN_BITS}, {MAX_BITS}]; got {index_bits}")
    positions = np.asarray(positions, dtype=np.int64)
    max_gap = 1 << index_bits
    gaps = np.diff(positions, prepend=-1)
    if gaps.size and int(gaps.min()) < 1:
        raise ValueError("positions must be strictly increasing and non-negative")
    fillers = (gaps - 1) // max_gap  # entries of gap max_gap inserted before each real entry
    per_real = fillers + 1
    owner = np.repeat(np.arange(gaps.size), per_real)  # the real entry each stored entry precedes or is
    rank = np.arange(owner.size) - np.repeat(np.cumsum(per_real) - per_real, per_real)
    is_real = rank == fillers[owner]
    codes = np.where(is_real, gaps[owner] - fillers[owner] * max_gap - 1, max_gap - 1)
    entry_positions = np.cumsum(codes + 1) - 1
    return codes.astype(np.int64), entry_positions


def relative_index_decode(codes: np.ndarray) -> np.ndarray:
    """Flat positions of the stored entries: ``p_j = p_{j−1} + code_j + 1`` from ``p_{−1} = −1``."""
    return np.cumsum(np.asarray(codes, dtype=np.int64) + 1) - 1


@dataclass
class EncodedTensor:
    """One tensor in the file: its header entry, its payload sections and what the report needs."""

    meta: dict[str, Any]
    sections: list[bytes]
    nonzero: int
    entries: int = 0
    fillers: int = 0
    index_bits: int = 0
    value_bits: int = 0
    huffman: bool = False
    index_stream_bits: int = 0
    value_stream_bits: int = 0

    @property
    def nbytes(self) -> int:
        """Payload bytes of this tensor (header entry excluded)."""
        return sum(len(s) for s in self.sections)


def _encode_stream(symbols: np.ndarray, width: int, huffman: bool) -> tuple[dict[str, Any], list[bytes], int]:
    """Encode codes at fixed ``width`` or, if smaller, with a Huffman code: ``(meta, sections, nbits)``."""
    fixed = pack_fixed(symbols, width)
    if huffman and symbols.size:
        code = HuffmanCode.from_symbols(symbols)
        table = code.table()
        data, nbits = code.encode(symbols)
        if len(table) + len(data) < len(fixed):
            return {"coding": "huffman", "table": len(table), "nbits": nbits}, [table, data], nbits
    return {"coding": "fixed"}, [fixed], symbols.size * width


def _decode_stream(meta: dict[str, Any], width: int, n: int, read: Callable[[int], bytes]) -> np.ndarray:
    if meta["coding"] == "huffman":
        table = read(int(meta["table"]))
        nbits = int(meta["nbits"])
        symbols = HuffmanCode.from_table(table).decode(read(math.ceil(nbits / 8)), nbits)
        if symbols.size != n:
            raise ValueError(f"corrupt file: a Huffman stream holds {symbols.size} codes, expected {n}")
        return symbols
    if meta["coding"] != "fixed":
        raise ValueError(f"corrupt file: unknown stream coding {meta['coding']!r}")
    return unpack_fixed(read(math.ceil(n * width / 8)), width, n)


def encode_sparse(
    flat: np.ndarray,
    *,
    index_bits: int,
    value_bits: int | None,
    codebook: tuple[np.ndarray, np.ndarray] | None,
    huffman: bool,
) -> EncodedTensor:
    """Encode a flat float32 tensor in the sparse format (see the module docstring).

    Args:
        flat: the tensor's values, flattened in row-major order, as float32.
        index_bits: relative-index code width.
        value_bits: code width for a codebook (``None``: the fewest bits that index all codes), or 32/16 for
            plain values (``None``: 32).
        codebook: ``(centroids float32[k], assignments int64[numel])``; ``assignments`` is read only where
            ``flat`` is nonzero, and ``centroids[assignments]`` must equal ``flat`` there (checked by the
            caller).
        huffman: Huffman-code the gap codes and the codebook codes where that is smaller.

    Returns:
        The header entry (without name/shape/dtype) and the payload sections.
    """
    positions = np.flatnonzero(flat)
    codes, entry_positions = relative_index_encode(positions, index_bits)
    n, nonzero = int(codes.size), int(positions.size)
    is_real = np.zeros(n, dtype=bool)
    is_real[np.searchsorted(entry_positions, positions)] = True
    meta: dict[str, Any] = {"format": "sparse", "entries": n, "index_bits": index_bits}
    sections: list[bytes] = []
    if codebook is not None:
        centroids, assignments = codebook
        zero_code = bool(n > nonzero)
        stored = np.concatenate([np.zeros(1, np.float32), centroids]) if zero_code else centroids
        needed = max(1, math.ceil(math.log2(stored.size)))
        width = needed if value_bits is None else value_bits
        if width < needed or width > MAX_BITS:
            raise ValueError(
                f"value_bits={width} cannot index {stored.size} codebook codes ({centroids.size} centroids"
                f"{' + the filler zero at code 0' if zero_code else ''}); need {needed} to {MAX_BITS} bits"
            )
        value_codes = np.zeros(n, dtype=np.int64)
        value_codes[is_real] = assignments[positions] + int(zero_code)
        meta.update(values="codebook", value_bits=width, codebook=int(stored.size), zero_code=zero_code)
        sections.append(stored.astype("<f4").tobytes())
        gap_meta, gap_sections, gap_bits = _encode_stream(codes, index_bits, huffman)
        value_meta, value_sections, value_bits_used = _encode_stream(value_codes, width, huffman)
    else:
        width = 32 if value_bits is None else value_bits
        if width not in PLAIN_VALUE_BITS:
            raise ValueError(
                f"value_bits of plain (not weight-shared) values must be one of {PLAIN_VALUE_BITS}; got {width}"
            )
        values = flat[entry_positions]  # fillers read a zero
        gap_meta, gap_sections, gap_bits = _encode_stream(codes, index_bits, huffman)
        value_meta = {"coding": "plain"}
        value_sections = [values.astype("<f4" if width == 32 else "<f2").tobytes()]
        value_bits_used = n * width
        meta.update(values=f"float{width}", value_bits=width)
    meta.update(gaps=gap_meta, codes=value_meta)
    sections += gap_sections + value_sections
    return EncodedTensor(
        meta=meta,
        sections=sections,
        nonzero=nonzero,
        entries=n,
        fillers=n - nonzero,
        index_bits=index_bits,
        value_bits=width,
        huffman="huffman" in (gap_meta["coding"], value_meta["coding"]),
        index_stream_bits=gap_bits,
        value_stream_bits=value_bits_used,
    )


def decode_sparse(meta: dict[str, Any], numel: int, read: Callable[[int], bytes]) -> np.ndarray:
    """Decode one sparse tensor's sections (read in order through ``read(nbytes)``) to flat float32."""
    n, index_bits, width = int(meta["entries"]), int(meta["index_bits"]), int(meta["value_bits"])
    stored: np.ndarray | None = None
    if meta["values"] == "codebook":
        stored = np.frombuffer(read(4 * int(meta["codebook"])), dtype="<f4")
    codes = _decode_stream(meta["gaps"], index_bits, n, read)
    positions = relative_index_decode(codes)
    if n and int(positions[-1]) >= numel:
        raise ValueError(f"corrupt file: a relative index reaches position {int(positions[-1])} of {numel}")
    if stored is not None:
        value_codes = _decode_stream(meta["codes"], width, n, read)
        if n and int(value_codes.max()) >= stored.size:
            raise ValueError(
                f"corrupt file: code {int(value_codes.max())} outside a codebook of {stored.size}"
            )
        values = stored[value_codes]
    elif meta["values"] in ("float32", "float16"):
        values = np.frombuffer(read(n * width // 8), dtype="<f4" if width == 32 else "<f2")
    else:
        raise ValueError(f"corrupt file: unknown value kind {meta['values']!r}")
    flat = np.zeros(numel, dtype=np.float32)
    flat[positions] = values.astype(np.float32)
    return flat
