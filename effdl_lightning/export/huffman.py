"""Canonical Huffman coding and fixed-width bit packing of non-negative integer symbols.

Deep Compression (Han et al., arXiv:1510.00149, §4) Huffman-codes the cluster indices and the relative
index gaps of a pruned, weight-shared layer, saving a further 20–30 %. This module is the entropy coder
used by :mod:`effdl_lightning.export.deep_compression`; it has no torch dependency.

Conventions (all of them part of the file format, so they never change):

- **Bit order**: streams are written most significant bit first; the last byte is padded with zero bits.
  ``len(data) == ceil(nbits / 8)``.
- **Code construction**: Huffman's algorithm on the symbol frequencies, ties broken deterministically
  (by weight, then by creation order: leaves in ascending symbol order, then internal nodes in the order
  they are made). Only the resulting *code lengths* are kept.
- **Canonical codes**: symbols sorted by ``(length, symbol)`` get consecutive codes, each code shifted left
  when the length grows (as in DEFLATE, RFC 1951 §3.2.2). So the code is fully described by the length of
  each symbol, and the **code table** is stored as one ``uint8`` length per symbol ``0 … max_symbol``
  (``0`` = symbol absent): exactly ``max_symbol + 1`` bytes.
- **One distinct symbol** gets the 1-bit code ``0`` (a Huffman code needs at least one bit per symbol);
  **empty input** gives an empty table and an empty stream.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count

import numpy as np

#: code lengths are stored as one uint8 each
MAX_CODE_LENGTH = 255
#: positions of the bit stream scanned per numpy batch while decoding
_DECODE_CHUNK = 1 << 20


def _as_symbols(symbols: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(symbols)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"symbols must be a 1-D sequence of integers; got dtype {array.dtype}, shape {array.shape}"
        )
    if int(array.min()) < 0:
        raise ValueError(f"symbols must be non-negative; got {int(array.min())}")
    return array.astype(np.int64, copy=False)


def huffman_code_lengths(frequencies: Sequence[int] | np.ndarray) -> list[int]:
    """Code length of every symbol under an optimal (Huffman) prefix code.

    Args:
        frequencies: ``frequencies[s]`` is the count of symbol ``s`` (0 for an absent symbol).

    Returns:
        ``lengths[s]`` in bits, 0 for absent symbols; one present symbol gets length 1. Trailing absent
        symbols are dropped, so ``len(lengths) == max_present_symbol + 1``.
    """
    freqs = [int(f) for f in np.asarray(frequencies, dtype=np.int64).reshape(-1)]
    if any(f < 0 for f in freqs):
        raise ValueError(f"frequencies must be non-negative; got {min(freqs)}")
    present = [s for s, f in enumerate(freqs) if f > 0]
    if not present:
        return []
    lengths = [0] * (present[-1] + 1)
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    order = count()  # creation order: leaves (ascending symbol) first, then internal nodes
    heap: list[tuple[int, int, list[int]]] = [(freqs[s], next(order), [s]) for s in present]
    heapq.heapify(heap)
    while len(heap) > 1:
        weight_a, _, members_a = heapq.heappop(heap)
        weight_b, _, members_b = heapq.heappop(heap)
        for s in members_a:
            lengths[s] += 1
        for s in members_b:
            lengths[s] += 1
        heapq.heappush(heap, (weight_a + weight_b, next(order), members_a + members_b))
    if max(lengths) > MAX_CODE_LENGTH:  # needs Fibonacci-like counts beyond 2^180: cannot happen in practice
        raise ValueError(f"a Huffman code length exceeds {MAX_CODE_LENGTH} bits")
    return lengths


def canonical_codes(lengths: Sequence[int]) -> list[int]:
    """Canonical code of every symbol from its code length (RFC 1951 §3.2.2); 0 for absent symbols."""
    codes = [0] * len(lengths)
    code, previous = 0, 0
    for length, symbol in sorted((n, s) for s, n in enumerate(lengths) if n > 0):
        code <<= length - previous
        codes[symbol] = code
        code += 1
        previous = length
    return codes


def pack_codes(codes: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Concatenate variable-length codes (MSB first) into bytes; returns ``(data, nbits)``."""
    codes = np.asarray(codes, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    nbits = int(lengths.sum())
    if nbits == 0:
        return b"", 0
    starts = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(lengths.size), lengths)  # which code each output bit belongs to
    shift = lengths[owner] - 1 - (np.arange(nbits) - starts[owner])
    bits = ((codes[owner] >> shift) & 1).astype(np.uint8)
    return np.packbits(bits).tobytes(), nbits


def pack_fixed(values: Sequence[int] | np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers ``< 2**bits`` at ``bits`` bits each, MSB first: ``ceil(n·bits/8)`` bytes."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64]; got {bits}")
    array = _as_symbols(values)
    if array.size and int(array.max()) >= 1 << bits:
        raise ValueError(f"value {int(array.max())} does not fit in {bits} bits")
    data, _ = pack_codes(array, np.full(array.size, bits, dtype=np.int64))
    return data


def unpack_fixed(data: bytes, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`: the first ``n`` ``bits``-bit values of ``data`` (int64)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in [1, 64]; got {bits}")
    if len(data) * 8 < n * bits:
        raise ValueError(f"{len(data)} bytes hold fewer than {n} values of {bits} bits")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    stream = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[: n * bits].reshape(n, bits)
    weights = np.left_shift(np.int64(1), np.arange(bits - 1, -1, -1, dtype=np.int64))
    return stream.astype(np.int64) @ weights


@dataclass(frozen=True)
class HuffmanCode:
    """A canonical Huffman code, described entirely by its code lengths.

    Attributes:
        lengths: code length in bits of each symbol ``0 … len(lengths) - 1``; 0 for an absent symbol.
    """

    lengths: tuple[int, ...]

    @classmethod
    def from_frequencies(cls, frequencies: Sequence[int] | np.ndarray) -> HuffmanCode:
        """The Huffman code of the given symbol counts (see :func:`huffman_code_lengths`)."""
        return cls(tuple(huffman_code_lengths(frequencies)))

    @classmethod
    def from_symbols(cls, symbols: Sequence[int] | np.ndarray) -> HuffmanCode:
        """The Huffman code of the symbol frequencies of ``symbols``."""
        array = _as_symbols(symbols)
        return cls.from_frequencies(np.bincount(array) if array.size else [])

    @classmethod
    def from_table(cls, table: bytes) -> HuffmanCode:
        """Read the code back from :meth:`table` bytes (one uint8 length per symbol)."""
        lengths = tuple(int(n) for n in table)
        if any(lengths):
            kraft = sum(2.0 ** (-n) for n in lengths if n > 0)
            if kraft > 1.0 + 1e-12:
                raise ValueError(f"corrupt Huffman table: code lengths violate Kraft's inequality ({kraft})")
        return cls(lengths)

    def table(self) -> bytes:
        """The stored code table: one uint8 code length per symbol, ``len(self.lengths)`` bytes."""
        return bytes(self.lengths)

    @property
    def codes(self) -> list[int]:
        """The canonical code (as an int of ``lengths[s]`` bits) of every symbol ``s``."""
        return canonical_codes(self.lengths)

    def encoded_bits(self, frequencies: Sequence[int] | np.ndarray) -> int:
        """Bits of the stream that encodes symbols with these counts (without the table)."""
        freqs = np.asarray(frequencies, dtype=np.int64).reshape(-1)
        lengths = np.asarray(self.lengths[: freqs.size], dtype=np.int64)
        return int((freqs[: lengths.size] * lengths).sum())

    def encode(self, symbols: Sequence[int] | np.ndarray) -> tuple[bytes, int]:
        """Encode ``symbols``; returns ``(data, nbits)`` with ``len(data) == ceil(nbits / 8)``."""
        array = _as_symbols(symbols)
        if array.size == 0:
            return b"", 0
        lengths = np.asarray(self.lengths, dtype=np.int64)
        if int(array.max()) >= lengths.size or not lengths[array].all():
            missing = sorted({int(s) for s in array if s >= lengths.size or lengths[s] == 0})
            raise ValueError(f"symbols {missing[:10]} have no code in this Huffman code")
        codes = np.asarray(self.codes, dtype=np.int64)
        return pack_codes(codes[array], lengths[array])

    def decode(self, data: bytes, nbits: int) -> np.ndarray:
        """Decode the first ``nbits`` bits of ``data`` (which must end exactly on a code) to int64 symbols.

        Every bit position of a chunk is matched against the canonical ranges of each code length in numpy
        (a code of length ``l`` is a value in ``[first[l], first[l] + count[l])``, and at most one length
        matches as the code is prefix-free); a Python walk then follows ``position += length`` from 0.
        """
        if nbits == 0:
            return np.zeros(0, dtype=np.int64)
        if len(data) * 8 < nbits:
            raise ValueError(f"{len(data)} bytes hold fewer than {nbits} bits")
        present = sorted((n, s) for s, n in enumerate(self.lengths) if n > 0)
        if not present:
            raise ValueError("cannot decode a non-empty stream with an empty Huffman code")
        max_length = present[-1][0]
        sorted_symbols = np.asarray([s for _, s in present], dtype=np.int64)
        first: dict[int, int] = {}
        offset: dict[int, int] = {}
        counts: dict[int, int] = {}
        code, previous = 0, 0
        for i, (length, _) in enumerate(present):
            code <<= length - previous
            if length not in first:
                first[length], offset[length], counts[length] = code, i, 0
            counts[length] += 1
            code += 1
            previous = length
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:nbits].astype(np.int64)
        bits = np.concatenate([bits, np.zeros(max_length, dtype=np.int64)])
        out: list[int] = []
        position = 0
        while position < nbits:
            stop = min(nbits, position + _DECODE_CHUNK)
            span = stop - position
            window = np.zeros(span, dtype=np.int64)
            symbol = np.full(span, -1, dtype=np.int64)
            size = np.zeros(span, dtype=np.int64)
            for length in range(1, max_length + 1):
                window = (window << 1) | bits[position + length - 1 : position + length - 1 + span]
                if length in first:
                    rank = window - first[length]
                    hit = (rank >= 0) & (rank < counts[length]) & (symbol < 0)
                    symbol[hit] = sorted_symbols[offset[length] + rank[hit]]
                    size[hit] = length
            symbols, sizes = symbol.tolist(), size.tolist()
            local = 0
            while local < span:
                if symbols[local] < 0:
                    raise ValueError(f"corrupt Huffman stream: no code at bit {position + local}")
                out.append(symbols[local])
                local += sizes[local]
            position += local
        if position != nbits:
            raise ValueError(f"corrupt Huffman stream: the last code ends at bit {position}, not {nbits}")
        return np.asarray(out, dtype=np.int64)


def huffman_encode(symbols: Sequence[int] | np.ndarray) -> tuple[HuffmanCode, bytes, int]:
    """Build the Huffman code of ``symbols`` and encode them: ``(code, data, nbits)``."""
    code = HuffmanCode.from_symbols(symbols)
    data, nbits = code.encode(symbols)
    return code, data, nbits


def huffman_decode(table: bytes, data: bytes, nbits: int) -> np.ndarray:
    """Decode a stream given its stored code table (see :meth:`HuffmanCode.table`)."""
    return HuffmanCode.from_table(table).decode(data, nbits)
