"""Deploy an int8 QAT model on real int8 CPU kernels: an ONNX file in the QDQ format, run by ONNX Runtime.

The model of ``quantize_(model, QuantizationConfig("int8"))`` (Jacob et al. arXiv 1712.05877) becomes a graph
ORT (``ORT_ENABLE_ALL``) fuses into integer kernels (``DQ→Conv→Q`` → ``QLinearConv``, ``DQ→Gemm`` → ``QGemm``):

1. :func:`fold_batch_norm_` folds each BatchNorm into its conv (``quant(W·k; s·|k|) = k·quant(W; s)``).
2. An fx deploy copy holds each quantized layer as integer codes: 8-bit weights with per-channel scales into
   ``DequantizeLinear`` (a linear's bias as int32 codes at ``s_in·s_w``; a conv's bias in float, which ORT
   ≥ 1.20 quantizes the same way when it fuses the conv), the input quantizer as a ``QuantizeLinear``/
   ``DequantizeLinear`` pair (custom ops of :mod:`effdl_lightning.export.qdq_ops`, which
   ``torch.onnx.export(dynamo=True)`` writes as those ONNX nodes).
3. Graph-level output quantizers (``activation_sites="graph"``, :mod:`effdl_lightning.core.quant.graph`)
   become ``QuantizeLinear``/``DequantizeLinear`` pairs where the QAT model quantized: around each residual
   add, so ORT fuses ``DQ, DQ → Add → Q`` into ``QLinearAdd``; a layer whose input was quantized upstream
   reads it through the same pair (``DQ → Conv``).
4. Where exact, a quantize ``g`` of a layer's input or of a graph-level site is also applied at the output of
   the conv/linear feeding it, across a single-user chain of ops ``f`` with ``g∘f∘g = g∘f`` (ReLU, ReLU6,
   clamp, max-pool, flatten, reshape, eval dropout), so ORT sees ``DQ→Conv→Q``, drops a ReLU before a ``Q``
   at zero point 0 and max-pools uint8. A conv whose output meets anything else (a float average pool,
   several users, the logits; with ``activation_sites="inputs"`` also a residual add) stays a float conv on
   dequantized weights: the QAT model never quantized that tensor and no rounding it did not simulate is
   added.

onnx, onnxscript and onnxruntime are optional: ``pip install effdl_lightning[deploy]``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import os
import platform
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.modules.conv import _ConvNd

from effdl_lightning.core.quant.fold import fold_batch_norm_, set_module, trace_with_quantized_leaves
from effdl_lightning.core.quant.graph import (
    ATTRIBUTE,
    commutes,
    is_add,
    module_of,
    remove_output_hooks_,
    value_users,
    walk_back,
)
from effdl_lightning.core.quant.modules import is_quantized, quantized_layers
from effdl_lightning.core.quant.quantizers import AffineQuantizer
from effdl_lightning.export.qdq_ops import dequantize_linear, onnx_translations, quantize_linear

__all__ = ["Int8Export", "export_int8_onnx", "fold_batch_norm_", "int8_agreement", "load_int8_session",
           "run_int8"]  # fmt: skip

log = logging.getLogger(__name__)

_ACT_RANGES = {(0, 255): torch.uint8, (-128, 127): torch.int8}  # the codes ONNX QuantizeLinear saturates to
_INT32 = (-(2**31), 2**31 - 1)
_PLAIN = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _require(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(f"int8 deployment needs {name}: pip install effdl_lightning[deploy]") from err


# ------------------------------------------------------------------------------------------ deploy copy


class _QDQ(nn.Module):
    """``DequantizeLinear(QuantizeLinear(x))`` per tensor: the exported form of an activation quantizer."""

    scale: Tensor
    zero_point: Tensor

    def __init__(self, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.args = (scale, zero_point, qmin, qmax)
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=_ACT_RANGES[(qmin, qmax)]))

    def forward(self, x: Tensor) -> Tensor:
        return dequantize_linear(quantize_linear(x, self.scale, self.zero_point), self.scale, self.zero_point)


def _input_qdq(name: str, quantizer: Any) -> _QDQ | None:
    if quantizer is None or not quantizer.enabled:
        return None
    ok = isinstance(quantizer, AffineQuantizer) and quantizer.axis is None
    if not ok or (quantizer.qmin, quantizer.qmax) not in _ACT_RANGES:
        raise ValueError(
            f"layer {name!r}: input quantizer {quantizer!r} has no ONNX QuantizeLinear form: per-tensor codes "
            f"in {sorted(_ACT_RANGES)} are needed (the 'int8' scheme)"
        )
    if not bool(quantizer.initialized):
        raise ValueError(
            f"layer {name!r}: its input quantizer never observed a range: run forwards in training mode"
        )
    scale, zero_point = quantizer.qparams()
    return _QDQ(float(scale), int(zero_point), quantizer.qmin, quantizer.qmax)


class _Int8Layer(nn.Module):
    """A quantized conv/linear as integer codes + scales, dequantized in the graph (ONNX QDQ format)."""

    weight: Tensor
    qweight: Tensor
    w_scale: Tensor
    w_zero: Tensor
    qbias: Tensor
    b_scale: Tensor
    bias: Tensor | None

    def __init__(self, name: str, layer: Any, weight_dtype: str, upstream: _QDQ | None = None) -> None:
        super().__init__()
        # no input quantizer of its own: the tensor it reads was quantized upstream (a graph-level site) and is
        # still on that grid; the same QDQ again (exact: g∘g = g) gives ORT its DQ→Conv pattern
        self.input = _input_qdq(name, layer.input_quantizer) or upstream
        self.requantize = True  # False where the graph already quantizes the input with the same parameters
        self.conv: dict[str, Any] | None = None  # a conv's hyperparameters; None: a linear layer
        if isinstance(layer, _ConvNd):
            self.conv = {k: getattr(layer, k) for k in ("stride", "padding", "dilation", "groups")}
            self.conv["pad"] = (layer.padding_mode, layer._reversed_padding_repeated_twice)
        weight, wq = layer.weight.detach(), layer.weight_quantizer
        bias = None if layer.bias is None else layer.bias.detach()
        self.int8 = wq is not None and wq.enabled
        if not self.int8:
            self.register_buffer("weight", weight)
        else:
            affine = isinstance(wq, AffineQuantizer) and wq.axis in (None, 0)
            if not affine or wq.qmin < -128 or wq.qmax > 127 or wq.qparams()[1].any():
                raise ValueError(
                    f"layer {name!r}: weight quantizer {wq!r} does not give int8 codes with zero point 0 per "
                    "tensor or per output channel (the 'int8' scheme)"
                )
            shift = 128 if weight_dtype == "uint8" else 0  # u8u8: the same values at zero point 128
            codes = torch.where(weight == 0, 0, wq.codes(weight)) + shift  # pruned zeros stay zero
            scale = wq.qparams()[0]  # after codes(), which observes a never-observed weight
            self.register_buffer("qweight", codes.to(torch.uint8 if shift else torch.int8))
            self.register_buffer("w_scale", scale.expand(weight.shape[0]).clone())
            self.register_buffer("w_zero", torch.full_like(self.w_scale, shift, dtype=self.qweight.dtype))
            # a linear's bias: int32 codes at s_in·s_w, what the kernel adds (ORT fuses DQ(int32)→Gemm into QGemm);
            # a conv's bias stays float: ORT ≥ 1.20 quantizes it the same way when it fuses QLinearConv (its
            # BiasQuantization transformer), which saves the file a per-channel scale tensor
            if bias is not None and self.input is not None and self.conv is None:
                b_scale = self.input.args[0] * self.w_scale.double()
                self.register_buffer("qbias", torch.round(bias.double() / b_scale).clamp(*_INT32).int())
                self.register_buffer("b_scale", b_scale.float())
                self.register_buffer("b_zero", torch.zeros_like(self.qbias))
                bias = None
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        b, padding = self.bias, self.conv["padding"] if self.conv is not None else 0
        if self.conv is not None and self.conv["pad"][0] != "zeros":  # reflect/replicate/circular: data
            x, padding = F.pad(x, self.conv["pad"][1], mode=self.conv["pad"][0]), 0  # movement, before the Q
        x = self.input(x) if self.input is not None and self.requantize else x
        w = self.weight if not self.int8 else dequantize_linear(self.qweight, self.w_scale, self.w_zero, 0)
        if b is None and hasattr(self, "qbias"):
            b = dequantize_linear(self.qbias, self.b_scale, self.b_zero, 0)
        if self.conv is None:
            return F.linear(x, w, b)
        conv = (F.conv1d, F.conv2d, F.conv3d)[w.dim() - 3]
        return conv(x, w, b, self.conv["stride"], padding, self.conv["dilation"], self.conv["groups"])


def _qdq_node(gm: fx.GraphModule, node: Any) -> _QDQ | None:
    module = module_of(gm, node)
    return module if isinstance(module, _QDQ) else None


def _deploy(model: nn.Module, weight_dtype: str) -> tuple[fx.GraphModule, list[str], list[str]]:
    """The deploy graph of a folded eval model, its int8-output layers and its float-output int8 layers."""
    gm = trace_with_quantized_leaves(model)
    remove_output_hooks_(gm)  # the graph calls them as nodes
    for node in gm.graph.nodes:  # graph-level output quantizers → QDQ pairs
        if node.op == "call_module" and str(node.target).split(".")[-1] == ATTRIBUTE:
            qdq = _input_qdq(str(node.target), gm.get_submodule(str(node.target)))
            set_module(gm, str(node.target), qdq if qdq is not None else nn.Identity())  # disabled: float
    layers: dict[fx.Node, _Int8Layer] = {}
    for node in list(gm.graph.nodes):
        module = module_of(gm, node)
        if module is not None and is_quantized(module):
            upstream = _qdq_node(gm, walk_back(gm, node.args[0])) if node.args else None
            module = _Int8Layer(str(node.target), module, weight_dtype, upstream)
            set_module(gm, str(node.target), module)
        if isinstance(module, _Int8Layer):
            layers[node] = module
    count = 0

    def insert_qdq(point: fx.Node, qdq: _QDQ, only: fx.Node | None = None) -> None:
        nonlocal count
        count += 1
        name = f"int8_qdq_{count}"
        gm.add_submodule(name, _QDQ(*qdq.args[:4]))
        with gm.graph.inserting_after(point):
            new = gm.graph.call_module(name, (point,))
        keep = (lambda u: u is not new) if only is None else (lambda u: u is only)
        point.replace_all_uses_with(new, delete_user_cb=keep)

    int8_out: list[str] = []
    float_out: list[str] = []
    for node, layer in layers.items():
        if not (layer.int8 and layer.input is not None):
            continue
        chain: list[fx.Node] = []
        cur, consumer = node, None
        while len(users := value_users(cur)) == 1:
            if users[0] in layers and users[0].args[:1] == (cur,):
                consumer = layers[users[0]].input
                break
            if (qdq := _qdq_node(gm, users[0])) is not None:
                consumer = qdq
                break
            if not commutes(gm, users[0], cur):
                break
            chain.append(cur := users[0])
        (int8_out if consumer is not None else float_out).append(str(node.target))
        if consumer is not None and any(not isinstance(module_of(gm, c), nn.Identity) for c in chain):
            insert_qdq(node, consumer)  # DQ→Conv→Q, then DQ→op→Q: ORT drops a ReLU before a Q at zero point 0
    for node, layer in layers.items():  # already DQ(Q(x)) with the same parameters: no second pair
        qdq = _qdq_node(gm, node.args[0]) if node.args else None
        layer.requantize = layer.input is not None and (qdq is None or qdq.args != layer.input.args)
    for node in list(
        gm.graph.nodes
    ):  # an add reads DQ(x) directly: ORT fuses DQ,DQ → Add → Q into QLinearAdd
        if is_add(node):
            for arg in node.args[:2]:
                direct = arg  # identities vanish from the ONNX graph
                while isinstance(module_of(gm, direct), nn.Identity):
                    direct = direct.args[0]
                qdq = _qdq_node(gm, walk_back(gm, arg))
                if qdq is not None and _qdq_node(gm, direct) is None:
                    insert_qdq(arg, qdq, only=node)
    gm.graph.lint()
    gm.recompile()
    return gm, int8_out, float_out


def _float_copy(model: nn.Module) -> nn.Module:
    """A copy with every quantized twin turned back into its plain class (the fp32 reference)."""
    plain = copy.deepcopy(model)
    for layer in quantized_layers(plain).values():
        layer.__class__ = next(b for b in type(layer).__mro__ if b in _PLAIN)  # type: ignore[assignment]
        for slot in ("weight_quantizer", "input_quantizer", "gradient_quantizer"):
            delattr(layer, slot)
    remove_output_hooks_(plain)
    for module in plain.modules():
        module._modules.pop(ATTRIBUTE, None)
    return plain


# ---------------------------------------------------------------------------------------- ONNX / ORT


def _to_onnx(module: nn.Module, example: Tensor, opset: int | None) -> Any:
    """The ONNX ``ModelProto`` of ``module`` with a dynamic batch dimension, without per-node debug metadata."""
    batch = example if example.shape[0] > 1 else torch.cat([example, example])  # size 1 would specialize
    kwargs: dict[str, Any] = {"dynamo": True, "dynamic_shapes": ({0: torch.export.Dim("batch")},),
                              "custom_translation_table": onnx_translations()}  # fmt: skip
    kwargs.update({} if opset is None else {"opset_version": opset})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module.eval(), (batch,), **kwargs)
    assert program is not None
    proto = program.model_proto
    for node in proto.graph.node:  # stack traces and fx dumps: not needed to run the file
        del node.metadata_props[:]
    del proto.graph.value_info[:]
    del proto.graph.metadata_props[:]  # the exporter's notes (16 kB for ResNet-20): not needed either
    return _short_names(proto)


def _short_names(proto: Any) -> Any:
    """Rename the graph's inner tensors to short ids and drop node names (``layer3.2.conv2.qweight`` → ``t5f``):
    the same graph in fewer bytes, for the int8 file and its fp32 reference alike."""
    graph = proto.graph
    keep = {v.name for v in (*graph.input, *graph.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names):x}")

    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for node in graph.node:
        node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    return proto


def load_int8_session(
    path: str | os.PathLike[str], threads: int = 1, optimized_path: str | None = None
) -> Any:
    """An ``onnxruntime.InferenceSession`` of ``path``: CPU, ``ORT_ENABLE_ALL``, ``threads`` intra-op threads;
    ``optimized_path``: where to save the graph ORT optimized (``FusedConv``, ``QLinearConv``, ...)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # no "the optimized model is hardware specific" warning
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])


def run_int8(session: Any, x: Tensor) -> Tensor:
    """Run ``session`` on ``x`` (as CPU float32); returns its first output as a tensor."""
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])


def _ort_node_counts(path: str) -> dict[str, int]:
    """Node types of the graph ORT runs (``ORT_ENABLE_ALL``), read back from its saved optimized model."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        load_int8_session(path, 1, optimized)
        graph = _require("onnx").load(optimized).graph
    return dict(sorted(Counter(n.op_type for n in graph.node).items()))


def _auto_weight_dtype(model: nn.Module) -> str:
    """``int8`` unless on an x86 CPU without VNNI with 8-bit weight codes: there ORT's u8s8 GEMM (VPMADDUBSW)
    adds two u8·s8 products in a saturating int16 (255·127·2 > 32767), so weights go as uint8 (the slower u8u8
    kernel). Codes within ±63 (``weight_bits=7``, ORT's ``reduce_range``) cannot saturate: int8 everywhere."""
    quantizers = [layer.weight_quantizer for layer in quantized_layers(model).values()]
    ranges = [q.code_range for q in quantizers if q is not None and q.enabled]
    if all(lo >= -64 and hi <= 63 for lo, hi in ranges) or platform.machine().lower() not in (
        "x86_64",
        "amd64",
    ):
        return "int8"
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""  # noqa: SIM115
    return "int8" if any(v in flags for v in ("avx512_vnni", "avx_vnni", "amx_int8")) else "uint8"


# --------------------------------------------------------------------------------------------- public


@dataclass
class Int8Export:
    """What :func:`export_int8_onnx` wrote and what ONNX Runtime made of it.

    ``node_counts`` are the node types of the ORT-optimized graph (``QLinearConv``/``QGemm`` run int8 kernels,
    ``Conv``/``FusedConv`` float). ``weight_dtype``: ``int8`` (zero point 0) or ``uint8`` (codes + 128 at zero
    point 128, the same values: x86 CPUs without VNNI saturate int16 sums of two u8·s8 products). ``fp32_*``:
    the float reference (the folded model without quantizers). ``int8_output_layers`` are requantized for their
    consumer (``DQ→Conv→Q``); ``float_output_layers`` have int8 weights but an output the QAT model leaves in
    float (an add, an average pool, several users, the logits): ORT runs those convs in float.
    """

    path: str
    size_bytes: int
    node_counts: dict[str, int]
    weight_dtype: str
    fp32_path: str | None = None
    fp32_size_bytes: int | None = None
    fp32_node_counts: dict[str, int] | None = None
    folded: list[tuple[str, str]] = field(default_factory=list)
    int8_output_layers: list[str] = field(default_factory=list)
    float_output_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_int8_onnx(
    model: nn.Module, example_input: Tensor, path: str | os.PathLike[str], opset: int | None = None,
    weight_dtype: str = "auto", fp32_reference: bool = True,
) -> Int8Export:  # fmt: skip
    """Write the int8 QDQ ONNX file of a fake-quantized model (the graph: see the module docstring).

    Works on an eval-mode CPU copy of ``model`` (ranges observed); biases become int32 codes at ``s_in·s_w``
    where the input is quantized, else stay float; the batch dimension of ``example_input`` is dynamic.

    Args:
        opset: ONNX opset; None = the exporter's default.
        weight_dtype: ``int8``, ``uint8`` (see :class:`Int8Export`) or ``auto``: ``uint8`` for 8-bit weight
            codes on an x86 CPU without VNNI (this machine's ``/proc/cpuinfo``), else ``int8``. On such a CPU,
            QAT with 7-bit weights (``scheme="affine", weight_bits=7``) gives int8 weights that run ORT's faster
            u8s8 kernels exactly.
        fp32_reference: also write ``<path without .onnx>.fp32.onnx``, the float model, for size and speed.

    Raises:
        ImportError: onnx, onnxscript or onnxruntime is missing.
        ValueError: no quantized layer, a quantizer with no int8 ONNX form (the layer is named), a bad
            ``weight_dtype``, or a model torch.fx cannot trace.
    """
    onnx = _require("onnx")
    _require("onnxscript")
    weight_dtype = _auto_weight_dtype(model) if weight_dtype == "auto" else weight_dtype
    if weight_dtype not in ("int8", "uint8"):
        raise ValueError(f"weight_dtype={weight_dtype!r}; allowed: 'int8', 'uint8', 'auto'")
    if not quantized_layers(model):
        raise ValueError("the model has no quantized layer: run quantize_(model, QuantizationConfig('int8'))")
    work = copy.deepcopy(model).cpu().eval()
    example = example_input.detach().cpu().float()
    folded = fold_batch_norm_(work)
    deploy, int8_out, float_out = _deploy(copy.deepcopy(work), weight_dtype)
    with torch.no_grad():
        diff = float((deploy(example) - work(example)).abs().max())
    proto = _to_onnx(deploy, example, opset)
    path = os.fspath(path)
    onnx.save(proto, path)
    int8 = {f"{n}.qweight" for n, m in deploy.named_modules() if isinstance(m, _Int8Layer) and m.int8}
    notes = [f"{len(int8 & {i.name for i in proto.graph.initializer})} of {len(int8)} weights stored as "
             f"{weight_dtype}; torch deploy graph vs fake-quantized model on example_input: max |diff| {diff:.3g}"]  # fmt: skip
    result = Int8Export(path, os.path.getsize(path), _ort_node_counts(path), weight_dtype, folded=folded)
    result.int8_output_layers, result.float_output_layers, result.notes = int8_out, float_out, notes
    if fp32_reference:
        result.fp32_path = (path[:-5] if path.endswith(".onnx") else path) + ".fp32.onnx"
        onnx.save(_to_onnx(_float_copy(work), example, opset), result.fp32_path)
        result.fp32_size_bytes = os.path.getsize(result.fp32_path)
        result.fp32_node_counts = _ort_node_counts(result.fp32_path)
    return result


def int8_agreement(
    model: nn.Module, session: Any, batches: Iterable[Tensor | tuple[Tensor, ...]]
) -> dict[str, float]:
    """How closely the ORT int8 model follows the fake-quantized PyTorch model (eval mode) on ``batches``.

    ``batches`` yields inputs or ``(input, ...)`` tuples (a dataloader). Returns ``max_abs_diff`` and
    ``mean_abs_diff`` of the outputs, ``top1_agreement`` (the fraction of samples whose argmax agrees),
    ``ref_max_abs`` (the largest |output| of the PyTorch model: the scale to read differences against) and
    ``samples``.
    """
    training, device = model.training, next(model.parameters()).device
    model.eval()
    refs, outs = [], []
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            with torch.no_grad():
                refs.append(model(x.to(device)).float().cpu())
            outs.append(run_int8(session, x).reshape(refs[-1].shape))
    finally:
        model.train(training)
    if not refs:
        raise ValueError("int8_agreement needs at least one batch")
    ref, out = torch.cat(refs), torch.cat(outs)
    diff, top1 = (out - ref).abs(), out.flatten(1).argmax(1) == ref.flatten(1).argmax(1)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float(top1.float().mean()), "ref_max_abs": float(ref.abs().max()),
            "samples": float(len(ref))}  # fmt: skip
