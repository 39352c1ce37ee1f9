"""Graph-level activation quantization: each tensor that a residual add reads or writes is quantized once,
where it is produced, as integer inference will hold it.

Per-layer input quantizers (``input_quantizer`` of each quantized twin) quantize what a conv or linear reads;
a residual ``x + F(x)`` then still adds float tensors, and an int8 runtime has to leave the convs that feed it
in float. Jacob et al. (arXiv 1712.05877, §3 and Fig. 1.1c) simulate quantization "at the points where it
would occur at inference": after each layer's output (after the ReLU that follows it) and after each addition.
This module finds those points with ``torch.fx`` and attaches one fake quantizer per point:

* for every residual add, each input (walking back across functions that keep values on the quantization
  grid: slicing, zero padding, reshapes) and its output (after a following ReLU);
* a point must be a module's output (a hook quantizes it): a leaf module called once (a BatchNorm, a ReLU, a
  conv) or a user block whose ``forward`` returns the tensor (``return x + self.conv(x)``); an add whose
  points are not all hostable stays float, with a logged reason;
* a quantized layer whose input walks back to a point already quantized drops its own input quantizer: the
  tensor is on the grid and a consumer that re-quantized it with another scale would round twice.

Each quantizer is the host module's child ``output_quantizer`` (so it checkpoints, moves and synchronizes like
any buffer), applied by a forward hook on the host.
Which modules host one is plain data in the ``quantize`` record entry (``"outputs"``), replayed without tracing.
"""

from __future__ import annotations

import logging
import operator
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from effdl_lightning.core.quant.quantizers import FakeQuantizer, build_quantizer

__all__ = [
    "ATTRIBUTE",
    "attach_output_quantizers",
    "commutes",
    "keeps_grid",
    "module_of",
    "move_output_quantizer",
    "output_quantizers",
    "plan_activation_sites",
    "remove_output_hooks_",
    "trace",
]

log = logging.getLogger(__name__)

#: the child of a host module that quantizes its output
ATTRIBUTE = "output_quantizer"
_STATE = threading.local()  # tracing: hooks are replaced by explicit graph nodes

# ops f with g∘f∘g = g∘f for a monotone idempotent fake quantizer g: a quantize moves back across them
_COMMUTING_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten,
                      nn.Unflatten, nn.Identity, nn.Dropout, nn.AdaptiveMaxPool2d)  # fmt: skip
_COMMUTING_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, torch.clamp, torch.clip, F.max_pool1d,
                        F.max_pool2d, F.max_pool3d, torch.flatten, torch.reshape, torch.permute,
                        torch.transpose, torch.squeeze, torch.unsqueeze, F.dropout}  # fmt: skip
_COMMUTING_METHODS = {"relu", "clamp", "clip", "flatten", "view", "reshape", "permute", "transpose",
                      "squeeze", "unsqueeze", "contiguous"}  # fmt: skip
_CLAMPS = (torch.clamp, torch.clip, F.hardtanh, F.relu6, "clamp", "clip")
_CLAMP_MODULES = (nn.ReLU6, nn.Hardtanh)
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_RELU_MODULES = (nn.ReLU,)
_RELU_FUNCTIONS = (F.relu, torch.relu, "relu", "relu_")
_SHAPE_ONLY = ("size", "dim")


def _output_hook(module: nn.Module, args: Any, output: Any) -> Any:
    quantizer = module._modules.get(ATTRIBUTE)
    if getattr(_STATE, "tracing", 0) or quantizer is None or not isinstance(output, Tensor):
        return None
    return quantizer(output)


def _attach(host: nn.Module, quantizer: nn.Module, path: str) -> None:
    if hasattr(host, ATTRIBUTE):
        raise ValueError(f"module {path!r} already has an attribute {ATTRIBUTE!r}")
    host.add_module(ATTRIBUTE, quantizer)
    host.register_forward_hook(_output_hook)


def attach_output_quantizers(model: nn.Module, outputs: Mapping[str, Mapping[str, Any]]) -> None:
    """Quantize the output of each module ``path`` of ``model`` with a quantizer built from its config.

    The quantizer becomes the host's child ``output_quantizer`` (so it checkpoints, moves and synchronizes like
    any buffer) and a forward hook applies it. Hosts are leaf modules or blocks with their own ``forward``,
    never containers that iterate their children (``nn.Sequential``): those are refused.
    """
    params = [*model.parameters(), *model.buffers()]
    device = params[0].device if params else None
    for path, cfg in outputs.items():
        try:
            host = model.get_submodule(path)
        except AttributeError as err:
            raise ValueError(f"the record quantizes the output of {path!r}, which this model lacks") from err
        if isinstance(host, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            raise ValueError(f"{path!r} is a {type(host).__name__}: it cannot host an output quantizer")
        quantizer = build_quantizer(cfg)
        _attach(host, quantizer.to(device) if device is not None else quantizer, path)


def output_quantizers(model: nn.Module) -> dict[str, FakeQuantizer]:
    """``{host module path: quantizer}`` of the graph-level output quantizers of ``model``."""
    return {
        path: q
        for path, m in model.named_modules()
        if isinstance(q := m._modules.get(ATTRIBUTE), FakeQuantizer)
        and _output_hook in m._forward_hooks.values()
    }


def remove_output_hooks_(model: nn.Module) -> int:
    """Stop the output quantizers' hooks of ``model`` (for a traced copy that calls them as graph nodes)."""
    count = 0
    for m in model.modules():
        for key, hook in list(m._forward_hooks.items()):
            if hook is _output_hook:
                del m._forward_hooks[key]
                count += 1
    return count


def move_output_quantizer(old: nn.Module, new: nn.Module) -> None:
    """Give ``new`` (which replaces ``old`` in the model) the output quantizer of ``old``, if it has one."""
    quantizer = old._modules.get(ATTRIBUTE)
    if isinstance(quantizer, FakeQuantizer) and _output_hook in old._forward_hooks.values():
        _attach(new, quantizer, type(new).__name__)


# ---------------------------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """fx tracer: quantized twins and fake quantizers are leaves; output hooks become explicit nodes."""

    def __init__(self, root: nn.Module, leaf: Any) -> None:
        super().__init__()
        self.leaf = leaf
        self.calls: Counter[str] = Counter()
        self.hosts = {id(root.get_submodule(p)): p for p in output_quantizers(root)}

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return bool(self.leaf(m)) or isinstance(m, FakeQuantizer) or super().is_leaf_module(m, qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        self.calls[self.path_of_module(m)] += 1
        out = super().call_module(m, forward, args, kwargs)
        path = self.hosts.get(id(m))
        if path is not None and isinstance(out, fx.Proxy):
            out = self.create_proxy("call_module", f"{path}.{ATTRIBUTE}" if path else ATTRIBUTE, (out,), {})
        return out


def trace(model: nn.Module, leaf: Any = None) -> tuple[fx.GraphModule, Counter[str]]:
    """``torch.fx`` trace of ``model`` (``leaf(m)`` marks more leaf modules) and each module's call count.

    Output quantizers appear as ``call_module`` nodes on ``<host>.output_quantizer`` after their host.

    Raises:
        ValueError: ``model`` is not fx-traceable.
    """
    tracer = _Tracer(model, leaf or (lambda m: False))
    _STATE.tracing = getattr(_STATE, "tracing", 0) + 1
    try:
        graph = tracer.trace(model)
    except Exception as err:  # fx raises many types on untraceable Python
        raise ValueError(f"{type(model).__name__} is not torch.fx-traceable: {err!r}") from err
    finally:
        _STATE.tracing -= 1
    return fx.GraphModule(model, graph), tracer.calls


def module_of(gm: fx.GraphModule, node: Any) -> nn.Module | None:
    ok = isinstance(node, fx.Node) and node.op == "call_module"
    return gm.get_submodule(str(node.target)) if ok else None


def _tensor_args(node: fx.Node) -> bool:
    return any(isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values()))


def _zero_pad(node: fx.Node) -> bool:
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    return node.target is F.pad and mode == "constant" and value in (None, 0, 0.0) and not _tensor_args(node)


def _slicing(node: fx.Node) -> bool:
    """``x[..., ::2, :]``-style indexing (at least one slice; tuple outputs are indexed by ints only)."""
    if node.target is not operator.getitem or len(node.args) != 2:
        return False
    index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
    ok = all(isinstance(i, (slice, int)) or i is None or i is Ellipsis for i in index)
    return ok and any(isinstance(i, slice) for i in index)


def commutes(gm: fx.GraphModule, node: fx.Node, data: fx.Node) -> bool:
    """Whether ``node`` applies an op ``f`` with ``g∘f∘g = g∘f`` to ``data``, its first argument."""
    if not node.args or node.args[0] is not data or node.kwargs.get("return_indices"):
        return False
    module = module_of(gm, node)
    if module is not None:
        return isinstance(module, _COMMUTING_MODULES) and not getattr(module, "return_indices", False)
    if node.target in _CLAMPS and _tensor_args(node):
        return False  # bounds computed from tensors
    if _slicing(node) or _zero_pad(node):
        return True
    if node.op == "call_function":
        return node.target in _COMMUTING_FUNCTIONS and not (len(node.args) > 6 and node.args[6])
    return node.op == "call_method" and node.target in _COMMUTING_METHODS


def keeps_grid(gm: fx.GraphModule, node: fx.Node, data: fx.Node) -> bool:
    """Whether ``node`` maps values on a quantization grid (with 0 on it) to values on the same grid."""
    if not commutes(gm, node, data):
        return False
    module = module_of(gm, node)
    clamps = isinstance(module, _CLAMP_MODULES) or (module is None and node.target in _CLAMPS)
    return not clamps  # clamp bounds (ReLU6's 6) need not lie on the grid


def walk_back(gm: fx.GraphModule, node: Any) -> Any:
    """The first node before ``node`` (itself included) that is a module call or not a grid-keeping function
    of its first input: where a tensor that reaches ``node`` unchanged in value grid was produced. Module calls
    other than ``nn.Identity`` stop the walk as they can host the quantizer themselves (a ReLU's output has zero point 0, which lets an
    int8 runtime drop the ReLU)."""
    while isinstance(node, fx.Node) and node.args and isinstance(node.args[0], fx.Node):
        if not isinstance(module_of(gm, node), nn.Identity) and (
            node.op == "call_module" or not keeps_grid(gm, node, node.args[0])
        ):
            break
        node = node.args[0]
    return node


def value_users(node: fx.Node) -> list[fx.Node]:
    """Users of ``node`` that read its values (not only its shape)."""
    return [u for u in node.users if u.target not in _SHAPE_ONLY]


def is_add(node: fx.Node) -> bool:
    """A residual add of two tensors (``a + b``, ``torch.add(a, b)``, ``a.add(b)``), no ``alpha``."""
    ok = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )
    return ok and "alpha" not in node.kwargs and sum(isinstance(a, fx.Node) for a in node.args[:2]) == 2


def _relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    module = module_of(gm, node)
    return isinstance(module, _RELU_MODULES) or (module is None and node.target in _RELU_FUNCTIONS)


def _host(gm: fx.GraphModule, calls: Counter[str], node: Any) -> tuple[str | None, str]:
    """The module whose output is ``node`` and that is called once, or ``(None, why not)``."""
    if not isinstance(node, fx.Node) or node.op not in ("call_module", "call_function", "call_method"):
        return None, "it is the model's input or a constant"
    if node.op == "call_module":
        if isinstance(module_of(gm, node), FakeQuantizer):
            return None, "it is already quantized"
        path = str(node.target)
        return (path, "") if calls[path] == 1 else (None, f"module {path!r} is called {calls[path]} times")
    stack = list(node.meta.get("nn_module_stack", {}))
    for path in reversed(stack):  # innermost first
        inside = [n for n in gm.graph.nodes if path in n.meta.get("nn_module_stack", {})]
        leaving = {n for n in inside for u in n.users if path not in u.meta.get("nn_module_stack", {})}
        if leaving == {node} and calls[path] == 1 and path:
            return path, ""
    return None, f"{node.name} is not the output of a module called once (a hook cannot reach it)"


def plan_activation_sites(model: nn.Module, layers: set[str], leaf: Any = None) -> tuple[list[str], set[str]]:
    """Where the graph-level quantizers go: ``(host module paths, quantized layers whose input is hosted)``.

    ``layers`` are the names of the layers that will be quantized (their inputs may become hosted). Adds whose
    inputs or output cannot be hosted are logged and stay float.

    Raises:
        ValueError: ``model`` is not fx-traceable.
    """
    gm, calls = trace(model, leaf)
    hosts: list[str] = []
    for node in gm.graph.nodes:
        if not is_add(node):
            continue
        out = node
        while len(users := value_users(out)) == 1 and _relu(gm, users[0]) and users[0].args[:1] == (out,):
            out = users[0]
        points = [walk_back(gm, a) for a in node.args[:2]] + [out]
        found = [_host(gm, calls, p) for p in points]
        missing = [why for path, why in found if path is None and why != "it is already quantized"]
        if missing:
            log.info("graph activation quantization: add %s stays float: %s", node.name, "; ".join(missing))
            continue
        hosts += [p for p, _ in found if p is not None and p not in hosts]
    hosted: set[str] = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target) in layers and node.args:
            path, _ = _host(gm, calls, walk_back(gm, node.args[0]))
            if path in hosts:
                hosted.add(str(node.target))
    return hosts, hosted
