"""Deployment formats: the Deep Compression file (arXiv:1510.00149), CSR sparse inference, int8 ONNX (QDQ),
early-exit stages on ONNX Runtime."""

from effdl_lightning.export.deep_compression import (
    default_compress,
    load_deep_compressed,
    save_deep_compressed,
    storage_report,
)
from effdl_lightning.export.huffman import HuffmanCode, huffman_decode, huffman_encode
from effdl_lightning.export.int8 import (
    Int8Export,
    export_int8_onnx,
    fold_batch_norm_,
    int8_agreement,
    load_int8_session,
    run_int8,
)
from effdl_lightning.export.packed import PackedReport, PackedTensor, load_packed, save_packed
from effdl_lightning.export.report import StorageReport, TensorReport
from effdl_lightning.export.sparse import SparseLinear, to_sparse_inference
from effdl_lightning.export.sparse_format import relative_index_decode, relative_index_encode
from effdl_lightning.export.staged import OnnxStages, export_stages_onnx

__all__ = [
    "HuffmanCode",
    "Int8Export",
    "OnnxStages",
    "PackedReport",
    "PackedTensor",
    "SparseLinear",
    "StorageReport",
    "TensorReport",
    "default_compress",
    "export_int8_onnx",
    "export_stages_onnx",
    "fold_batch_norm_",
    "huffman_decode",
    "huffman_encode",
    "int8_agreement",
    "load_deep_compressed",
    "load_int8_session",
    "load_packed",
    "relative_index_decode",
    "relative_index_encode",
    "run_int8",
    "save_deep_compressed",
    "save_packed",
    "storage_report",
    "to_sparse_inference",
]
