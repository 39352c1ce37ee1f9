"""Bit-packed storage of low-bit and binary networks: exact bytes and a loader that reproduces the outputs.

A weight a quantizer maps to integer codes is stored as those codes at ``ceil(log2(#codes))`` bits: 1 for
BinaryConnect (arXiv 1511.00363), BinaryNet (arXiv 1602.02830) and DoReFa W1, k for DoReFa Wk (arXiv
1606.06160), b for b-bit symmetric affine weights (arXiv 1712.05877, ``2^b − 1`` codes), with what decoding
needs (float32 scales, int32 zero points, DoReFa W1's ``E|w|``). A weight without quantizer whose nonzeros
are all ``±2^n``, ``n`` in a window of ``2^(b−2)`` exponents (INQ, arXiv 1702.03044), is stored at the
smallest such b (≤ 8) plus its ``n1``. Everything else the network needs (biases, batch norm, full-precision
layers, activation quantizers' ranges) is stored raw in its own dtype: float32 stays float32 (no float16).

Exactness. In eval mode a quantized layer computes with ``where(w == 0, w, q(w))``; the file holds exactly
those values: the codes, plus a 1-bit exact-zero mask where the code grid has no zero (DoReFa, binary) and
the weight has zeros (pruned). The loaded layer's weight *is* that tensor and its weight quantizer is
disabled: quantizers are not idempotent (DoReFa's ``tanh`` normalisation of a quantized tensor moves codes;
W1 recomputes ``E|w|`` with rounding). :func:`save_packed` decodes each weight exactly as the loader does
and refuses (``ValueError`` naming the layer) if that differs from the forward.

Stored raw, with the reason in the report: a weight whose quantizer is disabled (and whose codes do not
reproduce it, e.g. a loaded DoReFa W4 model saved again), or whose quantizer has no integer codes
(stochastic BinaryConnect, evaluated with its real weights, arXiv 1511.00363 §2.6; 32-bit DoReFa). Not
stored: a packed weight quantizer's observer state (``min_val``, ``max_val``, ``initialized``; "omitted").

File layout (little-endian)::

    offset 0    4 bytes  magic b"EPK1"
    offset 4    uint32   H = length of the header
    offset 8    H bytes  zlib-compressed UTF-8 JSON: {"format", "version", "model" (class path), "records"
                         ([{"target": module path, "entries": compression-record entries}]), "enabled"
                         (every quantizer's flag), "omitted", "tensors": per state-dict entry, in order:
                         name, shape, dtype, "format" = "raw" (+ "stored" dtype) | "codes" (+ "bits",
                         "offset", "zero_mask", and "quantizer": {module, config} or "power_of_two": {bits, n1})}
    offset 8+H  payload  per tensor, in header order, each section byte-aligned:
                         raw: numel × itemsize bytes of the stored dtype (int64 as int32 when the values fit);
                         codes: [zero mask: ceil(numel/8) bytes, 1 bit per weight, 1 = exact zero, MSB first]
                         then ceil(n·bits/8) bytes: ``code − offset`` of the n weights the mask leaves (all
                         without a mask), MSB first (:func:`~effdl_lightning.export.huffman.pack_fixed`)
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from effdl_lightning.core.quant import inq
from effdl_lightning.core.quant.modules import quantized_layers
from effdl_lightning.core.quant.quantizers import FakeQuantizer, build_quantizer
from effdl_lightning.core.record import get_record, replay
from effdl_lightning.export.huffman import pack_fixed, unpack_fixed

__all__ = ["PackedReport", "PackedTensor", "load_packed", "save_packed"]

MAGIC = b"EPK1"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sI")  # magic, header length
#: the state a packed weight's quantizer needs to decode its codes (the rest of its state is omitted)
_DECODE_STATE = ("scale", "zero_point")
_INT32 = torch.iinfo(torch.int32)


@dataclass(frozen=True)
class PackedTensor:
    """Storage of one state-dict entry in the packed file.

    Attributes:
        name: state-dict key.
        shape: tensor shape.
        format: ``"codes"`` (a quantizer's codes), ``"power_of_two"`` (INQ codes) or ``"raw"``.
        bits: code width (raw: the stored itemsize × 8).
        bytes: payload bytes (zero mask + codes of the other weights, or the raw bytes).
        fp32_bytes: 4 × numel for a floating tensor of the network (0 for integer tensors and quantizer state).
        note: why a weight was not packed, or the decoder's parameters.
    """

    name: str
    shape: tuple[int, ...]
    format: str
    bits: int
    bytes: int
    fp32_bytes: int
    note: str = ""

    @property
    def bits_per_element(self) -> float:
        """``8 · bytes / numel``: what an element costs, the zero mask included."""
        n = math.prod(self.shape)
        return 8 * self.bytes / n if n else 0.0


@dataclass(frozen=True)
class PackedReport:
    """Exact storage of a packed file: ``file_bytes == header_bytes + sum(t.bytes for t in tensors)``.

    Attributes:
        path: the file written.
        file_bytes: its size on disk (``os.path.getsize``).
        header_bytes: magic, length and compressed JSON header.
        fp32_bytes: 4 bytes per floating-point element of the network's state (quantizer state excluded).
        tensors: one row per state-dict entry stored, in file order.
    """

    path: Path
    file_bytes: int
    header_bytes: int
    fp32_bytes: int
    tensors: tuple[PackedTensor, ...]

    @property
    def payload_bytes(self) -> int:
        """Bytes after the header."""
        return self.file_bytes - self.header_bytes

    @property
    def ratio(self) -> float:
        """``fp32_bytes / file_bytes`` (the header counted)."""
        return self.fp32_bytes / self.file_bytes if self.file_bytes else math.inf

    def to_markdown(self) -> str:
        """Markdown table: per tensor format, bits per element, bytes, fp32 bytes and note; then the totals."""
        lines = [
            "| tensor | shape | format | code bits | bits/element | bytes | fp32 bytes | note |",
            "|---" * 8 + "|",
        ]
        lines += [
            f"| {t.name} | {'×'.join(map(str, t.shape)) or 'scalar'} | {t.format} | {t.bits} | "
            f"{t.bits_per_element:.2f} | {t.bytes:,} | {t.fp32_bytes:,} | {t.note} |"
            for t in self.tensors
        ]
        lines.append(f"| **total** | | | | | {self.payload_bytes:,} | {self.fp32_bytes:,} | |\n")
        lines.append(
            f"File {self.path.name}: {self.file_bytes:,} bytes (header {self.header_bytes:,}), "
            f"{self.ratio:.1f}× smaller than fp32 ({self.fp32_bytes:,} bytes: 4 per float element)."
        )
        return "\n".join(lines)


@dataclass
class _Packed:
    codes: Tensor
    bits: int
    offset: int
    mask: Tensor | None
    decoder: dict[str, Any]
    side: dict[str, Tensor]


def _quantizers(model: nn.Module) -> dict[str, FakeQuantizer | inq.PowerOfTwoQuantizer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantizer | inq.PowerOfTwoQuantizer)}


def _records(model: nn.Module) -> list[dict[str, Any]]:
    """The compression records of ``model`` and its submodules (``target`` = the module path)."""
    records = []
    for name, module in model.named_modules():
        entries = get_record(module)
        if entries:
            records.append({"target": name, "entries": [dict(e) for e in entries]})
    rebuilt = {
        ".".join(filter(None, (r["target"], layer)))
        for r in records
        for e in r["entries"]
        if e.get("kind") == "quantize"
        for layer in e.get("layers", {})
    }
    for name in quantized_layers(model):
        if name not in rebuilt:
            raise ValueError(
                f"layer {name!r} is quantized but no compression-record entry rebuilds it, so a fresh model could "
                "not be given its quantizers; record the swap: record.append(model, quantize_(model, config))"
            )
    return records


def _pack_quantized(name: str, layer: Any) -> _Packed | str:
    """The codes of a quantized layer's weight, checked to decode to its eval forward; or why it stays raw."""
    w = layer.weight.detach().cpu()
    q = copy.deepcopy(layer.weight_quantizer).cpu().eval()  # codes() updates state: not the model's
    try:
        lo, hi = q.code_range
    except NotImplementedError as err:
        return f"no integer codes: {str(err).split(';')[0]}"
    with torch.no_grad():
        reference = torch.where(w == 0, w, q(w))  # the forward's weight (w itself when q is disabled)
        codes = q.codes(w)
    side = {k: v.detach().clone() for k, v in q.state_dict().items() if k in _DECODE_STATE}
    fresh = build_quantizer(q.config())  # decode exactly as the loader will
    fresh.load_state_dict(side, strict=False)
    decoded = fresh.decode(codes).to(w.dtype)
    zero = w == 0
    mask = zero if bool((decoded[zero] != 0).any()) else None
    if mask is not None:
        decoded = decoded.masked_fill(mask, 0.0)
    bad = int((decoded != reference).sum())
    if not q.enabled and bad:  # e.g. a loaded model's weights: packed only if the codes reproduce them
        return "weight quantizer disabled and its codes do not reproduce the weights"
    if bad or (codes.numel() and (int(codes.min()) < lo or int(codes.max()) > hi)):
        raise ValueError(
            f"layer {name!r}: {type(q).__name__} codes do not decode to its eval forward ({bad} of {w.numel()} "
            f"weights differ, or codes outside [{lo}, {hi}]); it cannot be packed exactly"
        )
    decoder = {"quantizer": {"module": f"{name}.weight_quantizer", "config": q.config()}}
    return _Packed(codes, max(1, (hi - lo).bit_length()), lo, mask, decoder, side)


def _pack_power_of_two(w: Tensor) -> _Packed | None:
    """INQ codes of ``w`` if every nonzero is ``±2^n`` with the ``n`` spanning at most ``2^(b−2)``, b <= 8."""
    if not w.is_floating_point() or w.dim() < 2:
        return None
    nonzero = w[w != 0].abs().to(torch.float64)
    if not bool(torch.isfinite(nonzero).all()):
        return None
    mantissa, exponent = torch.frexp(nonzero)  # |w| = m·2^e, m in [0.5, 1): a power of two iff m = 0.5
    if not bool((mantissa == 0.5).all()):
        return None
    n1 = int(exponent.max()) - 1 if nonzero.numel() else 0
    window = n1 - (int(exponent.min()) - 1) + 1 if nonzero.numel() else 1
    bits = max(inq.BITS_RANGE[0], 2 + (window - 1).bit_length())
    if bits > inq.BITS_RANGE[1]:
        return None
    codes = inq.power_of_two_codes(w, bits, n1)
    if not torch.equal(inq.power_of_two_decode(codes, bits, n1, w.dtype), w):
        return None
    k = 2 ** (bits - 2)
    return _Packed(codes, bits, -k, None, {"power_of_two": {"bits": bits, "n1": n1}}, {})


def _raw(tensor: Tensor) -> tuple[str, bytes]:
    stored = tensor.contiguous()
    if stored.dtype == torch.int64 and bool(((stored >= _INT32.min) & (stored <= _INT32.max)).all()):
        stored = stored.to(torch.int32)  # exact: the loader casts back
    return str(stored.dtype).removeprefix("torch."), stored.reshape(-1).view(torch.uint8).numpy().tobytes()


def _encode(model: nn.Module) -> tuple[dict[str, Any], list[bytes], list[PackedTensor]]:
    """The header data, the payload sections and the report rows of ``model``."""
    records, quantizers = _records(model), _quantizers(model)
    full = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name, tensor in full.items():
        if tensor.layout != torch.strided or tensor.is_quantized:
            raise ValueError(
                f"state-dict entry {name!r} has layout {tensor.layout}; only dense tensors are stored"
            )
    state, packed, notes = dict(full), dict[str, _Packed](), dict[str, str]()
    for name, layer in quantized_layers(model).items():
        result = _pack_quantized(name, layer)
        if isinstance(result, str):
            notes[f"{name}.weight"] = result
            continue
        packed[f"{name}.weight"] = result
        prefix = f"{name}.weight_quantizer."
        for key in [k for k in state if k.startswith(prefix)]:  # keep only the decode state, as computed
            del state[key]
        state.update({prefix + k: v for k, v in result.side.items()})
    for name in dict(model.named_parameters()):
        if name in state and name not in packed and (p2 := _pack_power_of_two(state[name])) is not None:
            packed[name] = p2
    metas, sections, rows = [], [], []
    for name in [k for k in full if k in state]:
        tensor = state[name]
        shape = tuple(int(d) for d in tensor.shape)
        meta: dict[str, Any] = {
            "name": name,
            "shape": list(shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
        }
        in_quantizer = any(name.startswith(f"{q}.") for q in quantizers)
        fp32 = 4 * tensor.numel() if tensor.is_floating_point() and not in_quantizer else 0
        if (p := packed.get(name)) is not None:
            kept = p.codes if p.mask is None else p.codes[~p.mask]  # masked zeros need no code
            data = pack_fixed((kept - p.offset).reshape(-1).numpy(), p.bits) if kept.numel() else b""
            mask = b"" if p.mask is None else np.packbits(p.mask.reshape(-1).numpy()).tobytes()
            meta.update(format="codes", bits=p.bits, offset=p.offset, zero_mask=p.mask is not None)
            meta.update(p.decoder)
            sections += [mask, data]
            p2 = p.decoder.get("power_of_two")
            note = f"n1={p2['n1']}" if p2 else "zero mask" if p.mask is not None else ""
            kind = "power_of_two" if p2 else "codes"
            rows.append(PackedTensor(name, shape, kind, p.bits, len(data) + len(mask), fp32, note))
        else:
            stored, raw = _raw(tensor)
            meta.update(format="raw", stored=stored)
            sections.append(raw)
            bits = 8 * torch.empty(0, dtype=getattr(torch, stored)).element_size()
            rows.append(PackedTensor(name, shape, "raw", bits, len(raw), fp32, notes.get(name, "")))
        metas.append(meta)
    header = {
        "format": "effdl-packed",
        "version": FORMAT_VERSION,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "records": records,
        "enabled": {n: bool(q.enabled) for n, q in quantizers.items()},
        "omitted": sorted(set(full) - set(state)),
        "tensors": metas,
    }
    return header, sections, rows


def save_packed(model: nn.Module, path: str | os.PathLike[str]) -> PackedReport:
    """Write ``model`` (its compression records and every tensor) as one bit-packed file; see the module doc.

    Args:
        model: a network (or any module holding it) after ``quantize_`` with its entry appended to the
            compression record, after INQ, or plain; it is read, not changed.
        path: the file, written to a temporary file then renamed (never left half-written).

    Returns:
        The exact storage report (``report.file_bytes == os.path.getsize(path)``).

    Raises:
        ValueError: a quantized layer that no record entry rebuilds, a quantizer whose codes do not decode to
            its forward, a record that is not JSON data, a tensor that is not dense.
    """
    if sys.byteorder != "little":
        raise NotImplementedError("the packed file is written on little-endian machines only")
    data, sections, rows = _encode(model)
    try:
        text = json.dumps(data, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(f"the compression record is not plain JSON data: {err}") from err
    body = zlib.compress(text.encode("utf-8"), level=9)
    header = _PREFIX.pack(MAGIC, len(body)) + body
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for chunk in (header, *sections):
                handle.write(chunk)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fp32_bytes = sum(r.fp32_bytes for r in rows)  # omitted keys are quantizer state, not network fp32 bytes
    return PackedReport(target, os.path.getsize(target), len(header), fp32_bytes, tuple(rows))


def _read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The header and the decoded state dict of a packed file (packed weights as their forward values)."""
    data = Path(path).read_bytes()
    if len(data) < _PREFIX.size or data[:4] != MAGIC:
        raise ValueError(f"{path}: not a packed file (expected magic {MAGIC!r})")
    _, length = _PREFIX.unpack_from(data)
    try:
        header = json.loads(zlib.decompress(data[_PREFIX.size : _PREFIX.size + length]).decode("utf-8"))
    except (zlib.error, ValueError) as err:
        raise ValueError(f"{path}: corrupt header ({err})") from err
    if header.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {header.get('version')!r}; this reader: {FORMAT_VERSION}")
    offset = _PREFIX.size + length

    def read(n: int) -> bytes:
        nonlocal offset
        if offset + n > len(data):
            raise ValueError(f"{path}: truncated file (needs {offset + n} bytes, has {len(data)})")
        offset += n
        return data[offset - n : offset]

    state: dict[str, Tensor] = {}
    coded: list[dict[str, Any]] = []
    for meta in header["tensors"]:
        shape = tuple(int(d) for d in meta["shape"])
        numel, dtype = math.prod(shape), getattr(torch, meta["dtype"])
        if meta["format"] == "raw":
            stored = getattr(torch, meta["stored"])
            raw = bytearray(read(numel * torch.empty(0, dtype=stored).element_size()))
            flat = torch.frombuffer(raw, dtype=stored) if numel else torch.empty(0, dtype=stored)
            state[meta["name"]] = flat.to(dtype).reshape(shape)
            continue
        zero = np.zeros(numel, dtype=bool)
        if meta["zero_mask"]:
            zero = np.unpackbits(np.frombuffer(read(math.ceil(numel / 8)), np.uint8), count=numel).astype(
                bool
            )
        kept, bits = numel - int(zero.sum()), meta["bits"]
        codes = np.full(numel, meta["offset"], dtype=np.int64)  # masked positions: any code, zeroed below
        codes[~zero] += unpack_fixed(read(math.ceil(kept * bits / 8)), bits, kept)
        mask = torch.from_numpy(zero).reshape(shape) if meta["zero_mask"] else None
        coded.append({**meta, "codes": torch.from_numpy(codes).reshape(shape), "mask": mask, "torch": dtype})
    if offset != len(data):
        raise ValueError(f"{path}: {len(data) - offset} trailing bytes after the last tensor")
    for meta in coded:  # after the raw tensors: a quantizer decodes with its stored scale and zero point
        if "power_of_two" in meta:
            p2 = meta["power_of_two"]
            value = inq.power_of_two_decode(meta["codes"], int(p2["bits"]), int(p2["n1"]), meta["torch"])
        else:
            quantizer = build_quantizer(meta["quantizer"]["config"])
            prefix = meta["quantizer"]["module"] + "."
            own = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            quantizer.load_state_dict(own, strict=False)
            value = quantizer.decode(meta["codes"]).to(meta["torch"])
        state[meta["name"]] = value if meta["mask"] is None else value.masked_fill(meta["mask"], 0.0)
    return header, state


def load_packed(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Turn a freshly built ``model`` into the packed one and load its tensors; returns it in eval mode.

    ``model`` is built like the saved one (same class and arguments, e.g. ``create("mlp", hidden=(512,) * 3)``).
    The file's compression records are replayed on it (quantized layers come back with their quantizers),
    every tensor is decoded and loaded, and each quantizer's ``enabled`` flag is restored, except that the
    weight quantizer of a packed layer is disabled: its weight already holds the quantized values (see the
    module doc). In eval mode its outputs equal the saved model's exactly. Saved again, such a weight is
    packed where its quantizer's codes reproduce it (binary schemes) and stored raw otherwise.

    Raises:
        ValueError: a file that is not a packed file (or is truncated), or a model that does not match it (its
            class, a record it cannot replay, a missing, extra or differently shaped tensor, other quantizers).
    """
    header, state = _read(path)
    cls = f"{type(model).__module__}.{type(model).__qualname__}"
    if header["model"] != cls:
        raise ValueError(
            f"{path} was saved from a {header['model']}, not a {cls}: build the same model class"
        )
    modules = dict(model.named_modules())
    for record in header["records"]:
        if (target := modules.get(record["target"])) is None:
            raise ValueError(f"{path}: a record applies to {record['target']!r}, which the model lacks")
        replay(target, record["entries"])
    own, names = model.state_dict(), [m["name"] for m in header["tensors"]]
    differ = [
        k for k in names if k not in own or (own[k].shape, own[k].dtype) != (state[k].shape, state[k].dtype)
    ]
    differ += [k for k in own if k not in state and k not in header["omitted"]]
    if differ:
        shown = {k: [tuple(t[k].shape) if k in t else None for t in (own, state)] for k in differ[:3]}
        raise ValueError(
            f"the model does not match {path}: {len(differ)} tensor(s) differ, e.g. {{name: [model shape, file "
            f"shape]}} {shown}; build the model with the arguments it was saved with"
        )
    quantizers = _quantizers(model)
    packed = [m["quantizer"] for m in header["tensors"] if "quantizer" in m]
    for spec in packed:
        if spec["module"] not in quantizers or quantizers[spec["module"]].config() != spec["config"]:
            raise ValueError(f"the model's {spec['module']} is not the {spec['config']} of {path}")
    if sorted(quantizers) != sorted(header["enabled"]):
        raise ValueError(f"the model's quantizers {sorted(quantizers)} are not {sorted(header['enabled'])}")
    model.load_state_dict(state, strict=False)
    for name, flag in header["enabled"].items():
        quantizers[name].enabled = bool(flag)
    for spec in packed:
        quantizers[spec["module"]].enabled = False
    return model.eval()
