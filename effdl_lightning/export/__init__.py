"""Deployment formats: the Deep Compression file (arXiv:1510.00149) and CSR sparse inference."""

from effdl_lightning.export.deep_compression import (
    default_compress,
    load_deep_compressed,
    save_deep_compressed,
    storage_report,
)
from effdl_lightning.export.huffman import HuffmanCode, huffman_decode, huffman_encode
from effdl_lightning.export.report import StorageReport, TensorReport
from effdl_lightning.export.sparse import SparseLinear, to_sparse_inference
from effdl_lightning.export.sparse_format import relative_index_decode, relative_index_encode

__all__ = [
    "HuffmanCode",
    "SparseLinear",
    "StorageReport",
    "TensorReport",
    "default_compress",
    "huffman_decode",
    "huffman_encode",
    "load_deep_compressed",
    "relative_index_decode",
    "relative_index_encode",
    "save_deep_compressed",
    "storage_report",
    "to_sparse_inference",
]
