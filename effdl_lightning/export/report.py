"""Storage reports of the Deep Compression file (arXiv:1510.00149): exact bytes per tensor and in total."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TensorReport:
    """Storage of one tensor in the file.

    Attributes:
        name: state-dict key.
        shape: tensor shape.
        numel: number of elements.
        nonzero: nonzero elements (the kept weights).
        index_bits: relative-index code width (0 for raw tensors).
        value_bits: bits per value: codebook-code width, 32/16 for plain floats, itemsize·8 for raw tensors.
        huffman: whether a stream of this tensor is Huffman-coded.
        bytes_dense_fp32: ``numel × 4``, the fp32 reference.
        bytes: payload bytes of this tensor in the file.
        kept_fraction: ``nonzero / numel``.
        format: ``"sparse"`` or ``"raw"``.
        entries: stored entries (nonzeros + filler zeros) of a sparse tensor.
        fillers: filler zero entries (gap overflow).
        index_bits_avg: bits spent per entry on the gap stream (below ``index_bits`` when Huffman-coded).
        value_bits_avg: bits spent per entry on the value stream (below ``value_bits`` when Huffman-coded).
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    nonzero: int
    index_bits: int
    value_bits: int
    huffman: bool
    bytes_dense_fp32: int
    bytes: int
    kept_fraction: float
    format: str = "raw"
    entries: int = 0
    fillers: int = 0
    index_bits_avg: float = 0.0
    value_bits_avg: float = 0.0

    @property
    def ratio(self) -> float:
        """``bytes_dense_fp32 / bytes`` (``inf`` for an empty tensor)."""
        return self.bytes_dense_fp32 / self.bytes if self.bytes else math.inf


@dataclass
class StorageReport:
    """Exact storage of a Deep Compression file.

    Attributes:
        tensors: one report per state-dict entry, in file order.
        total_bytes: payload bytes (sum of ``tensors[i].bytes``).
        dense_fp32_bytes: 4 bytes per element of every tensor.
        header_bytes: magic + length + JSON header; the file has ``total_bytes + header_bytes`` bytes.
    """

    tensors: list[TensorReport]
    total_bytes: int
    dense_fp32_bytes: int
    header_bytes: int = 0

    @property
    def ratio(self) -> float:
        """Compression ratio of the payload: ``dense_fp32_bytes / total_bytes``."""
        return self.dense_fp32_bytes / self.total_bytes if self.total_bytes else math.inf

    @property
    def file_bytes(self) -> int:
        """Size of the file on disk."""
        return self.total_bytes + self.header_bytes

    @property
    def file_ratio(self) -> float:
        """``dense_fp32_bytes / file_bytes``: the ratio with the header counted."""
        return self.dense_fp32_bytes / self.file_bytes if self.file_bytes else math.inf

    def to_table(self) -> str:
        """Markdown table: per tensor kept fraction, index and value bits, bytes and ratio; totals."""
        head = (
            "| tensor | shape | kept | entries (fillers) | index bits (avg) | value bits (avg) | Huffman "
            "| bytes | fp32 bytes | ratio |"
        )
        lines = [head, "|" + "---|" * 10]
        for t in self.tensors:
            sparse = t.format == "sparse"
            lines.append(
                f"| {t.name} | {'×'.join(map(str, t.shape)) or 'scalar'} | {t.kept_fraction:.2%} | "
                + (f"{t.entries} ({t.fillers}) | " if sparse else "raw | ")
                + (f"{t.index_bits} ({t.index_bits_avg:.2f}) | " if sparse else "– | ")
                + (f"{t.value_bits} ({t.value_bits_avg:.2f}) | " if sparse else f"{t.value_bits} | ")
                + f"{'yes' if t.huffman else 'no'} | {t.bytes:,} | {t.bytes_dense_fp32:,} | {t.ratio:.1f}× |"
            )
        numel = sum(t.numel for t in self.tensors)
        nonzero = sum(t.nonzero for t in self.tensors)
        kept = nonzero / numel if numel else 1.0
        lines.append(
            f"| **total** | | {kept:.2%} | | | | | {self.total_bytes:,} | {self.dense_fp32_bytes:,} | "
            f"**{self.ratio:.1f}×** |"
        )
        lines.append("")
        lines.append(
            f"Header (magic, length, JSON of names/shapes/dtypes/stream sizes): {self.header_bytes:,} bytes; "
            f"file: {self.file_bytes:,} bytes, {self.file_ratio:.1f}× smaller than fp32. Ratio = fp32 bytes "
            "(4 per parameter and buffer element) / stored bytes; avg bits = bits spent per stored entry."
        )
        return "\n".join(lines)
