"""Dependency-aware channel surgery: find the channels that must be removed together, and remove them.

:class:`ChannelGraph` traces a model with ``torch.fx`` and runs the traced graph on *channel ids* instead of
activations: every tensor is replaced by an integer tensor of the same shape (batch 1) whose entries name
the channel each element belongs to. Layers that create channels (a conv or linear output) allocate fresh
ids; channel-wise layers (batch norm, activations, pooling, depthwise convs) pass them on; data movement
(``cat``, ``chunk``, ``view``, ``transpose``, ``flatten``, slicing of spatial dims) is executed on the id
tensors themselves, so concatenation, channel shuffle and flatten → linear come out right without a rule
per model; elementwise ops between tensors (residual adds, squeeze-and-excitation gates) *unite* the ids they
combine. The classes of united ids are the removable units (*atoms*); the atoms reachable from one another
through a layer's outputs form a :class:`ChannelGroup` (e.g. all convs writing into one residual stream).

What the graph does not understand is never guessed: an op without a rule freezes the channels it touches
(they are kept) with a reason naming the op, and so do grouped convs, constant-size reshapes or splits, the
model's inputs and outputs. :meth:`ChannelGraph.cut` slices every parameter and buffer of every layer that
touches a removed atom (conv/linear outputs and inputs, depthwise convs, batch-norm statistics), checks the
result on the example input, and returns a :class:`ChannelCut`: plain data that :func:`apply_cut` replays on a
freshly built model to rebuild the same architecture (the compression record, ../shared/DESIGN.md).

Li et al. (arXiv 1608.08710) score filters by the L1 norm of their weights; :meth:`ChannelGraph.importance`
sums it over all producers of an atom (coupled channels are removed together).
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ChannelCut",
    "ChannelGraph",
    "ChannelGroup",
    "SurgeryError",
    "apply_cut",
    "compose_cuts",
]


class SurgeryError(RuntimeError):
    """The model cannot be traced or a cut would not give a working model."""


_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
# modules that act on each channel independently and hold no per-channel parameter
_CHANNELWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)
# functions and tensor methods that act on each channel independently (any extra arguments are scalars)
_CHANNELWISE_FUNCTIONS: set[Any] = {
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.sigmoid,
    F.tanh,
    F.softplus,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.interpolate,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.neg,
    torch.abs,
    torch.exp,
    operator.neg,
}
_CHANNELWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "contiguous",
    "neg",
    "abs",
    "exp",
    "float",
    "to",
    "type_as",
    "clone",
    "detach",
    "mul_",
    "add_",
    "div_",
}
_BINARY = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
}
_BINARY_METHODS = {"add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "maximum", "minimum"}
_MOVE_FUNCTIONS: set[Any] = {torch.flatten, torch.transpose, torch.permute, torch.squeeze, torch.unsqueeze}
_MOVE_METHODS = {"flatten", "transpose", "permute", "squeeze", "unsqueeze", "expand", "expand_as", "view_as"}
_RESHAPE_METHODS = {"view", "reshape"}
_REDUCE_FUNCTIONS: set[Any] = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}


# --- union-find over channel ids ---------------------------------------------------------------------------
class _Ids:
    """Channel ids with union-find; an id can be frozen (its class is never removed) with a reason."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}

    def fresh(self, n: int, frozen: str | None = None) -> Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        if frozen is not None:
            for i in range(start, start + n):
                self.frozen[i] = frozen
        return torch.arange(start, start + n, dtype=torch.long)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self.parent[ra] = rb  # the older id stays the root

    def union_tensors(self, a: Tensor, b: Tensor) -> None:
        if a.numel() == 0:
            return
        pairs = torch.unique(torch.stack([a.reshape(-1), b.reshape(-1)], 1), dim=0)
        for x, y in pairs.tolist():
            if x != y:
                self.union(x, y)

    def freeze(self, ids: Tensor, reason: str) -> None:
        for i in torch.unique(ids).tolist():
            self.frozen.setdefault(i, reason)

    def roots(self, ids: Tensor) -> list[int]:
        return [self.find(i) for i in ids.tolist()]


def _channel_vector(ids: Tensor, dim: int = 1) -> Tensor:
    """The id of each index of ``dim`` (an id tensor is constant across the other dims of a channel)."""
    moved = ids.movedim(dim, 0).reshape(ids.shape[dim], -1)
    return moved[:, 0].clone()


def _broadcast(vector: Tensor, shape: Sequence[int], dim: int = 1) -> Tensor:
    view = [1] * len(shape)
    view[dim] = len(vector)
    return vector.reshape(view).expand(*shape).clone()


# --- results ---------------------------------------------------------------------------------------------
@dataclass
class ChannelGroup:
    """Channels that are removed together: the atoms of one or more coupled layers' outputs.

    Attributes:
        name: the first producing layer (e.g. ``"features.0"``).
        atoms: the removable units, in the first producer's output order (an atom is one channel of each
            coupled tensor, e.g. channel ``i`` of every conv adding into a residual stream).
        producers: layers whose outputs (filters) belong to the group.
        frozen: ``{atom index: reason}`` for atoms that must be kept.
        consumers: conv/linear layers that read the group's channels as inputs.
        members: every ``(layer, role)`` a cut of the group slices (``out``, ``in``, ``dw``, ``norm``).
    """

    name: str
    atoms: list[int]
    producers: list[str]
    frozen: dict[int, str] = field(default_factory=dict)
    consumers: list[str] = field(default_factory=list)
    members: list[tuple[str, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.atoms)

    @property
    def prunable(self) -> list[int]:
        """Indices (into ``atoms``) that may be removed."""
        return [i for i in range(len(self.atoms)) if i not in self.frozen]

    @property
    def reason(self) -> str | None:
        """Why the group is not prunable at all (``None`` when some atom is)."""
        if self.prunable:
            return None
        return next(iter(self.frozen.values()), "no atom")


@dataclass
class ChannelCut:
    """Kept indices per layer and role (``out``, ``in``, ``dw``, ``norm``): the replayable record of a cut."""

    modules: dict[str, dict[str, list[int]]]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "channel_cut", "modules": {n: dict(r) for n, r in self.modules.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelCut:
        if data.get("kind") != "channel_cut":
            raise ValueError(f"not a channel cut record: kind={data.get('kind')!r}")
        return cls({n: {k: list(map(int, v)) for k, v in r.items()} for n, r in data["modules"].items()})


# --- the tracer --------------------------------------------------------------------------------------------
class ChannelGraph:
    """The channel dependencies of ``model`` at ``example_input`` (see the module docstring).

    Args:
        model: any ``nn.Module`` that ``torch.fx.symbolic_trace`` can trace (no data-dependent control flow).
        example_input: one input batch (its first dimension is replaced by 1), or its shape without batch.
        exclude: names of layers whose outputs must be kept (e.g. a classifier); their channels are frozen.

    Attributes:
        groups: the channel groups, in the order of their first producer in the graph.
        slots: ``{(layer name, role): ids of the layer's indices along that role}``.
    """

    def __init__(
        self,
        model: nn.Module,
        example_input: Tensor | Sequence[int],
        exclude: Iterable[str] = (),
    ) -> None:
        self.model = model
        if isinstance(example_input, Tensor):
            example = example_input[:1].detach()
        else:
            example = torch.zeros(1, *example_input)
        self.example = example
        was_training = model.training
        model.eval()  # trace the inference path (no stochastic depth, dropout as identity)
        try:
            self.gm = torch.fx.symbolic_trace(model)
        except Exception as err:
            raise SurgeryError(
                f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}); channel "
                "surgery needs a model without data-dependent control flow"
            ) from err
        finally:
            model.train(was_training)
        self.modules = dict(model.named_modules())
        self.ids = _Ids()
        self.slots: dict[tuple[str, str], Tensor] = {}
        self.notes: list[str] = []
        self.sliced: dict[str, dict[str, Tensor]] = {}
        self._exclude = set(exclude)
        self._shapes = self._shape_of_nodes()
        with torch.no_grad():
            self._run()
        self.groups = self._groups()

    # --- tracing ------------------------------------------------------------------------------------------
    def _shape_of_nodes(self) -> dict[str, Any]:
        """Every node's output on the real example input (eval mode: batch 1 is fine for batch norm)."""
        shapes: dict[str, Any] = {}

        class Recorder(torch.fx.Interpreter):
            def run_node(self, n: torch.fx.Node) -> Any:
                out = super().run_node(n)
                shapes[n.name] = _shape_tree(out)
                return out

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                Recorder(self.gm).run(self.example.to(_device_of(self.model)))
        except Exception as err:
            raise SurgeryError(
                f"the traced {type(self.model).__name__} fails on the example input: {err}"
            ) from err
        finally:
            self.model.train(was_training)
        return shapes

    def _run(self) -> None:
        env: dict[str, Any] = {}
        placeholders = 0

        def load(a: Any) -> Any:
            return torch.fx.node.map_arg(a, lambda n: env[n.name])

        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if placeholders == 0:
                    env[node.name] = _broadcast(
                        self.ids.fresh(self.example.shape[1] if self.example.dim() > 1 else 1, "model input"),
                        self.example.shape,
                        1 if self.example.dim() > 1 else 0,
                    )
                else:
                    env[node.name] = node.args[0] if node.args else None
                placeholders += 1
            elif node.op == "get_attr":
                value = _fetch_attr(self.gm, node.target)
                if isinstance(value, Tensor):
                    vec = self.ids.fresh(1, f"tensor attribute {node.target!r}")
                    env[node.name] = vec.expand(value.shape).clone() if value.dim() else vec[0].clone()
                else:
                    env[node.name] = value
            elif node.op == "call_module":
                env[node.name] = self._module(node, load(node.args), load(node.kwargs))
            elif node.op in ("call_function", "call_method"):
                env[node.name] = self._function(node, load(node.args), load(node.kwargs))
            elif node.op == "output":
                for t in _tensors(load(node.args)):
                    self.ids.freeze(t, "model output")

    def _shape(self, node: torch.fx.Node) -> Any:
        return self._shapes[node.name]

    def _unknown(self, node: torch.fx.Node, args: Any, kwargs: Any, why: str) -> Any:
        """Freeze every channel an op touches and give its outputs fresh frozen ids."""
        reason = f"{why} (node {node.name!r})"
        self.notes.append(reason)
        for t in _tensors((args, kwargs)):
            self.ids.freeze(t, reason)
        return self._frozen_like(self._shape(node), reason)

    def _frozen_like(self, shape: Any, reason: str) -> Any:
        if isinstance(shape, torch.Size):
            if len(shape) == 0:
                return self.ids.fresh(1, reason)[0].clone()
            vec = self.ids.fresh(shape[1] if len(shape) > 1 else shape[0], reason)
            return _broadcast(vec, shape, 1 if len(shape) > 1 else 0)
        if isinstance(shape, (tuple, list)):
            return type(shape)(self._frozen_like(s, reason) for s in shape)
        return shape  # a non-tensor output: not needed (shape tree stores the value itself)

    def _module(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        name = str(node.target)
        module = self.modules[name]
        x = args[0] if args else None
        out_shape = self._shape(node)
        if not isinstance(x, Tensor) or not isinstance(out_shape, torch.Size):
            return self._unknown(
                node, args, kwargs, f"module {type(module).__name__} at {name!r} with non-tensor i/o"
            )
        if isinstance(module, _CONV):
            return self._conv(node, name, module, x, out_shape)
        if isinstance(module, nn.Linear):
            in_vec = _channel_vector(x, x.dim() - 1)
            self._slot(name, "in", in_vec)
            out = self._produce(name, module.out_features)
            return _broadcast(out, out_shape, len(out_shape) - 1)
        if isinstance(module, _NORM):
            if x.dim() < 2:
                return self._unknown(node, args, kwargs, f"{type(module).__name__} on a 1-D tensor")
            vec = _channel_vector(x)
            if getattr(module, "affine", False) or getattr(module, "track_running_stats", False):
                self._slot(name, "norm", vec)
            return x.clone()
        if isinstance(module, nn.PReLU) and module.num_parameters > 1:
            self._slot(name, "norm", _channel_vector(x))
            return x.clone()
        if isinstance(module, (*_CHANNELWISE_MODULES, nn.PReLU)):
            return self._channelwise(x, out_shape)
        if isinstance(module, nn.Flatten):
            return torch.flatten(x, module.start_dim, module.end_dim)
        return self._unknown(
            node, args, kwargs, f"no channel rule for module {type(module).__name__} at {name!r}"
        )

    def _conv(
        self, node: torch.fx.Node, name: str, conv: nn.Module, x: Tensor, out_shape: torch.Size
    ) -> Tensor:
        conv = cast(nn.Conv2d, conv)
        in_vec = _channel_vector(x)
        groups, cin, cout = conv.groups, conv.in_channels, conv.out_channels
        if groups == 1:
            self._slot(name, "in", in_vec)
            out = self._produce(name, cout)
        elif groups == cin == cout:  # depthwise: output channel i is input channel i
            self._slot(name, "dw", in_vec)
            out = in_vec
            if name in self._exclude:
                self.ids.freeze(out, f"layer {name!r} is excluded")
        else:
            reason = f"grouped conv {name!r} (groups={groups}, {cin}->{cout} channels)"
            self.notes.append(f"channels of {reason} are kept")
            self.ids.freeze(in_vec, reason)
            out = self.ids.fresh(cout, reason)
        return _broadcast(out, out_shape)

    def _produce(self, name: str, n: int) -> Tensor:
        out = self.ids.fresh(n, f"layer {name!r} is excluded" if name in self._exclude else None)
        self._slot(name, "out", out)
        return out

    def _slot(self, name: str, role: str, vec: Tensor) -> None:
        key = (name, role)
        if key in self.slots:  # a layer called twice: both calls must keep the same indices
            self.ids.union_tensors(self.slots[key], vec)
        else:
            self.slots[key] = vec.clone()

    def _channelwise(self, x: Tensor, out_shape: torch.Size) -> Tensor:
        if tuple(x.shape) == tuple(out_shape):
            return x.clone()
        return _broadcast(_channel_vector(x), out_shape)

    def _function(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
        target = node.target
        method = node.op == "call_method"
        tensors = list(_tensors((args, kwargs)))
        if not tensors:  # shape arithmetic, size(), getattr on non-tensors: run it as is
            return _call(node, args, kwargs)
        out_shape = self._shape(node)
        x = args[0] if args and isinstance(args[0], Tensor) else None
        name = target if method else getattr(target, "__name__", str(target))
        if (method and target in ("size", "dim", "numel")) or (
            target is getattr and args[1] in ("shape", "ndim", "dtype", "device")
        ):
            return _call(node, args, kwargs)
        if (target in _BINARY) or (method and target in _BINARY_METHODS):
            return self._binary(args, kwargs, out_shape)
        if (not method and target in _CHANNELWISE_FUNCTIONS) or (method and target in _CHANNELWISE_METHODS):
            if x is None or not isinstance(out_shape, torch.Size):
                return self._unknown(node, args, kwargs, f"{name} without a leading tensor")
            return self._channelwise(x, out_shape)
        if x is not None and (
            (not method and target in _MOVE_FUNCTIONS) or (method and target in _MOVE_METHODS)
        ):
            return _call(node, args, kwargs)
        if x is not None and method and target in _RESHAPE_METHODS:
            return self._reshape(node, x, args[1:], kwargs)
        if not method and target in (torch.cat, torch.concat):
            return self._cat(node, args, kwargs)
        if x is not None and (target is torch.chunk or (method and target == "chunk")):
            return self._chunk(node, x, args[1:], kwargs)
        if x is not None and target is operator.getitem:
            return self._getitem(node, x, args[1])
        if not method and target is operator.getitem:  # an element of a tuple of id tensors
            return args[0][args[1]]
        if x is not None and (
            (not method and target in _REDUCE_FUNCTIONS) or (method and target in _REDUCE_METHODS)
        ):
            return self._reduce(node, x, args[1:], kwargs)
        if x is not None and target is F.pad:
            return self._pad(node, x, args[1:], kwargs)
        return self._unknown(
            node, args, kwargs, f"no channel rule for {'method' if method else 'function'} {name}"
        )

    def _binary(self, args: Any, kwargs: Any, out_shape: Any) -> Tensor:
        operands = [a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)]
        shaped = [torch.broadcast_to(a, out_shape) for a in operands]
        for other in shaped[1:]:
            self.ids.union_tensors(shaped[0], other)
        return shaped[0].clone()

    def _reshape(self, node: torch.fx.Node, x: Tensor, shape_args: Sequence[Any], kwargs: Any) -> Tensor:
        shape = (
            shape_args[0] if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list)) else shape_args
        )
        out = x.reshape(*shape)
        literal = (
            node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        )
        # dims whose slices hold different channels: pruning changes their size
        varying = [d for d in range(out.dim()) if not _uniform_along(out, d, self.ids)]
        if len(varying) > 1:
            # the channel dim split into (g, C/g) (channel shuffle): keep the inner dim, remove a channel
            # at the same inner position in every group, so the split stays even
            inner = varying[-1]
            for d in varying[:-1]:
                lead = out.movedim(d, 0)
                for j in range(1, lead.shape[0]):
                    self.ids.union_tensors(lead[0], lead[j])
            varying = [inner]
        for d, arg in enumerate(literal):
            if isinstance(arg, int) and arg != -1 and d in varying and out.shape[d] != 1:
                reason = f"{node.target} with the constant size {arg} on a channel dim (node {node.name!r}; use x.size() or -1)"
                self.notes.append(reason)
                self.ids.freeze(x, reason)
        return out

    def _cat(self, node: torch.fx.Node, args: Any, kwargs: Any) -> Tensor:
        tensors = list(args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        dim = dim % tensors[0].dim()
        if dim != 1:  # concatenation along batch or space: the channels of all inputs are the same channels
            for t in tensors[1:]:
                self.ids.union_tensors(_channel_vector(tensors[0]), _channel_vector(t))
        return torch.cat(tensors, dim)

    def _chunk(self, node: torch.fx.Node, x: Tensor, rest: Sequence[Any], kwargs: Any) -> Any:
        chunks = rest[0] if rest else kwargs["chunks"]
        dim = (rest[1] if len(rest) > 1 else kwargs.get("dim", 0)) % x.dim()
        pieces = torch.chunk(x, chunks, dim)
        if dim == 1 and len(pieces) > 1:
            if x.shape[1] % chunks:
                return self._unknown(
                    node, (x,), {}, f"chunk of {x.shape[1]} channels into {chunks} uneven parts"
                )
            # the split point follows the channel count: position k of every piece goes together
            for piece in pieces[1:]:
                self.ids.union_tensors(_channel_vector(pieces[0]), _channel_vector(piece))
        return tuple(p.clone() for p in pieces)

    def _getitem(self, node: torch.fx.Node, x: Tensor, index: Any) -> Any:
        items = index if isinstance(index, tuple) else (index,)
        touches_channels = len(items) > 1 and not (isinstance(items[1], slice) and items[1] == slice(None))
        if any(i is Ellipsis or i is None for i in items) or touches_channels or isinstance(items[0], Tensor):
            return self._unknown(node, (x,), {}, "indexing that touches the channel dim")
        return x[index].clone()

    def _reduce(self, node: torch.fx.Node, x: Tensor, rest: Sequence[Any], kwargs: Any) -> Tensor:
        dims = rest[0] if rest else kwargs.get("dim")
        keepdim = rest[1] if len(rest) > 1 else kwargs.get("keepdim", False)
        if dims is None:
            return self._unknown(node, (x,), {}, "a reduction over all dims")
        dims = sorted({d % x.dim() for d in (dims if isinstance(dims, (tuple, list)) else (dims,))})
        if 1 in dims or 0 in dims:
            return self._unknown(node, (x,), {}, f"a reduction over dims {dims}")
        out = x
        for d in reversed(dims):
            out = out.narrow(d, 0, 1)
            if not keepdim:
                out = out.squeeze(d)
        return out.clone()

    def _pad(self, node: torch.fx.Node, x: Tensor, rest: Sequence[Any], kwargs: Any) -> Tensor:
        pad = list(rest[0] if rest else kwargs["pad"])
        mode = rest[1] if len(rest) > 1 else kwargs.get("mode", "constant")
        if mode != "constant" or x.dim() < 2:
            return self._unknown(node, (x,), {}, f"F.pad in mode {mode!r}")
        padded = F.pad(x, pad, value=-1)
        vec = _channel_vector(x)
        channel_pad = pad[2 * (x.dim() - 2) : 2 * (x.dim() - 1)] if len(pad) >= 2 * (x.dim() - 1) else [0, 0]
        before, after = ([*channel_pad, 0, 0])[:2]
        reason = f"zero channels added by F.pad (node {node.name!r})"
        new = torch.cat([self.ids.fresh(before, reason), vec, self.ids.fresh(after, reason)])
        return _broadcast(new, padded.shape)

    # --- groups --------------------------------------------------------------------------------------------
    def _groups(self) -> list[ChannelGroup]:
        ids = self.ids
        producers = [(name, vec) for (name, role), vec in self.slots.items() if role == "out"]
        atom_sets = {name: ids.roots(vec) for name, vec in producers}
        # link producers that share an atom
        owner: dict[int, str] = {}
        parent = {name: name for name, _ in producers}

        def find(n: str) -> str:
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        for name, atoms in atom_sets.items():
            for a in atoms:
                if a in owner:
                    ra, rb = find(owner[a]), find(name)
                    if ra != rb:
                        parent[rb] = ra
                else:
                    owner[a] = name
        frozen_roots: dict[int, str] = {}
        for i, reason in ids.frozen.items():
            frozen_roots.setdefault(ids.find(i), reason)
        groups: dict[str, ChannelGroup] = {}
        for name, atoms in atom_sets.items():
            root = find(name)
            group = groups.setdefault(root, ChannelGroup(name=root, atoms=[], producers=[]))
            group.producers.append(name)
            for a in atoms:
                if a not in group.atoms:
                    group.atoms.append(a)
        for group in groups.values():
            group.frozen = {i: frozen_roots[a] for i, a in enumerate(group.atoms) if a in frozen_roots}
            atom_set = set(group.atoms)
            for (name, role), vec in self.slots.items():
                if atom_set.intersection(ids.roots(vec)):
                    group.members.append((name, role))
                    if role == "in":
                        group.consumers.append(name)
        return list(groups.values())

    def group(self, name: str) -> ChannelGroup:
        """The group whose first producer or any producer is ``name``."""
        for g in self.groups:
            if g.name == name or name in g.producers:
                return g
        raise KeyError(f"no channel group produced by {name!r}; groups: {[g.name for g in self.groups]}")

    def member_atoms(self, group: ChannelGroup) -> dict[tuple[str, str], list[int]]:
        """``{(layer, role): indices into group.atoms}`` for each layer and role the group touches."""
        index = {a: i for i, a in enumerate(group.atoms)}
        out: dict[tuple[str, str], list[int]] = {}
        for key in group.members:
            out[key] = sorted({index[r] for r in self.ids.roots(self.slots[key]) if r in index})
        return out

    def atom_members(self, group: ChannelGroup) -> dict[int, list[tuple[str, str]]]:
        """For each atom index of ``group``: the ``(layer, role)`` slots it appears in."""
        out: dict[int, list[tuple[str, str]]] = {i: [] for i in range(group.size)}
        for key, atoms in self.member_atoms(group).items():
            for i in atoms:
                out[i].append(key)
        return out

    # --- scores ---------------------------------------------------------------------------------------------
    def importance(self, group: ChannelGroup, criterion: str = "l1") -> Tensor:
        """Per atom of ``group``: the L1 (``"l1"``) or L2 (``"l2"``) norm of its filters, summed over producers."""
        if criterion not in ("l1", "l2"):
            raise ValueError(f"criterion must be 'l1' or 'l2', got {criterion!r}")
        index = {a: i for i, a in enumerate(group.atoms)}
        score = torch.zeros(len(group.atoms))
        for name in group.producers:
            weight = cast(Tensor, self.modules[name].weight).detach()
            rows = weight.reshape(weight.shape[0], -1).float().cpu()
            norms = rows.abs().sum(1) if criterion == "l1" else rows.pow(2).sum(1).sqrt()
            for pos, atom in enumerate(self.ids.roots(self.slots[(name, "out")])):
                score[index[atom]] += norms[pos]
        return score

    # --- the cut ----------------------------------------------------------------------------------------------
    def plan(self, remove: Mapping[str, Iterable[int]]) -> ChannelCut:
        """The :class:`ChannelCut` that removes, per group name, the given atom indices."""
        dead: set[int] = set()
        by_name = {g.name: g for g in self.groups}
        for name, indices in remove.items():
            if name not in by_name:
                raise KeyError(f"no channel group {name!r}; groups: {list(by_name)}")
            group = by_name[name]
            indices = sorted(set(int(i) for i in indices))
            frozen = [i for i in indices if i in group.frozen]
            if frozen:
                raise SurgeryError(
                    f"group {name!r}: atoms {frozen[:5]} cannot be removed: {group.frozen[frozen[0]]}"
                )
            if len(indices) >= group.size:
                raise SurgeryError(f"group {name!r}: cannot remove all {group.size} channels")
            dead.update(group.atoms[i] for i in indices)
        modules: dict[str, dict[str, list[int]]] = {}
        for (name, role), vec in self.slots.items():
            roots = self.ids.roots(vec)
            if any(r in dead for r in roots):
                keep = [i for i, r in enumerate(roots) if r not in dead]
                if not keep:
                    raise SurgeryError(f"the cut removes every {role} channel of layer {name!r}")
                modules.setdefault(name, {})[role] = keep
        return ChannelCut(modules)

    def cut(self, remove: Mapping[str, Iterable[int]], check: bool = True) -> ChannelCut:
        """Remove the given atoms from the model in place; returns the replayable :class:`ChannelCut`.

        With ``check`` the cut is first applied to a copy and run on the example input: a cut that would not
        give a working model with the same output shape raises :class:`SurgeryError` and leaves the model as
        it was. The ``{parameter: {dim: kept indices}}`` map of the cut is left in ``self.sliced``.
        """
        plan = self.plan(remove)
        if check:
            self.check(plan)
        self.sliced = apply_cut(self.model, plan)
        return plan

    def check(self, cut: ChannelCut) -> None:
        """Raise :class:`SurgeryError` unless ``cut`` applied to a copy of the model runs with the same output shape."""
        trial = copy.deepcopy(self.model)
        apply_cut(trial, cut)
        _check_runs(self.model, trial, self.example)

    def summary(self) -> str:
        """One line per group: name, size, prunable atoms, producers, why frozen."""
        lines = []
        for g in self.groups:
            lines.append(
                f"{g.name}: {g.size} channels, {len(g.prunable)} prunable, producers {g.producers}"
                + (f"; kept: {next(iter(g.frozen.values()))}" if g.frozen else "")
            )
        return "\n".join(lines)


# --- applying a cut ------------------------------------------------------------------------------------------
def _take(t: Tensor | None, keep: Tensor, dim: int) -> Tensor | None:
    return None if t is None else t.detach().index_select(dim, keep.to(t.device)).clone()


def _set_param(module: nn.Module, name: str, value: Tensor | None) -> None:
    old = getattr(module, name)
    if value is None or old is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


def apply_cut(model: nn.Module, cut: ChannelCut | Mapping[str, Any]) -> dict[str, dict[str, Tensor]]:
    """Slice the layers of ``model`` to the kept indices of ``cut`` (in place); replays a recorded cut.

    Returns ``{parameter name: {dim: kept indices}}`` for every replaced parameter, so that optimizer state
    (momentum) can be sliced the same way.
    """
    if not isinstance(cut, ChannelCut):
        cut = ChannelCut.from_dict(cut)
    modules = dict(model.named_modules())
    sliced: dict[str, dict[str, Tensor]] = {}
    for name, roles in cut.modules.items():
        if name not in modules:
            raise SurgeryError(f"the cut names a layer {name!r} that this model does not have")
        module = modules[name]
        keep = {role: torch.tensor(idx, dtype=torch.long) for role, idx in roles.items()}

        def record(param: str, dim: int, idx: Tensor, _name: str = name) -> None:
            sliced.setdefault(f"{_name}.{param}" if _name else param, {})[str(dim)] = idx

        if isinstance(module, _CONV):
            conv = cast(nn.Conv2d, module)
            if "dw" in keep:
                idx = keep["dw"]
                _set_param(conv, "weight", _take(conv.weight, idx, 0))
                _set_param(conv, "bias", _take(conv.bias, idx, 0))
                conv.in_channels = conv.out_channels = conv.groups = len(idx)
                record("weight", 0, idx)
                if conv.bias is not None:
                    record("bias", 0, idx)
            if "out" in keep:
                idx = keep["out"]
                _set_param(conv, "weight", _take(conv.weight, idx, 0))
                _set_param(conv, "bias", _take(conv.bias, idx, 0))
                conv.out_channels = len(idx)
                record("weight", 0, idx)
                if conv.bias is not None:
                    record("bias", 0, idx)
            if "in" in keep:
                idx = keep["in"]
                _set_param(conv, "weight", _take(conv.weight, idx, 1))
                conv.in_channels = len(idx)
                record("weight", 1, idx)
        elif isinstance(module, nn.Linear):
            if "out" in keep:
                idx = keep["out"]
                _set_param(module, "weight", _take(module.weight, idx, 0))
                _set_param(module, "bias", _take(module.bias, idx, 0))
                module.out_features = len(idx)
                record("weight", 0, idx)
                if module.bias is not None:
                    record("bias", 0, idx)
            if "in" in keep:
                idx = keep["in"]
                _set_param(module, "weight", _take(module.weight, idx, 1))
                module.in_features = len(idx)
                record("weight", 1, idx)
        elif isinstance(module, (*_NORM, nn.PReLU)) and "norm" in keep:
            idx = keep["norm"]
            for attr in ("weight", "bias", "running_mean", "running_var"):
                value = getattr(module, attr, None)
                if isinstance(value, Tensor):
                    _set_param(module, attr, _take(value, idx, 0))
                    if attr in ("weight", "bias"):
                        record(attr, 0, idx)
            if hasattr(module, "num_features"):
                module.num_features = len(idx)
            if isinstance(module, nn.PReLU):
                module.num_parameters = len(idx)
        else:
            raise SurgeryError(f"the cut has roles {sorted(keep)} for {type(module).__name__} {name!r}")
    return sliced


def compose_cuts(cuts: Sequence[ChannelCut]) -> ChannelCut:
    """One cut equivalent to applying ``cuts`` in order (each one's indices refer to the model it was made on)."""
    composed: dict[str, dict[str, list[int]]] = {}
    for cut in cuts:
        for name, roles in cut.modules.items():
            mine = composed.setdefault(name, {})
            for role, keep in roles.items():
                mine[role] = [mine[role][i] for i in keep] if role in mine else list(keep)
    return ChannelCut(composed)


def _check_runs(original: nn.Module, pruned: nn.Module, example: Tensor) -> None:
    was = original.training, pruned.training
    original.eval()
    pruned.eval()
    try:
        with torch.no_grad():
            x = example.to(_device_of(original))
            expected = _shape_tree(original(x))
            try:
                got = _shape_tree(pruned(x))
            except Exception as err:
                raise SurgeryError(
                    f"the cut model fails on the example input: {type(err).__name__}: {err}"
                ) from err
        if got != expected:
            raise SurgeryError(f"the cut changes the output shape: {expected} -> {got}")
    finally:
        original.train(was[0])
        pruned.train(was[1])


# --- helpers ---
def _call(node: torch.fx.Node, args: Any, kwargs: Any) -> Any:
    """Run ``node``'s function or method on concrete arguments."""
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return cast(Any, node.target)(*args, **kwargs)


def _tensors(tree: Any) -> Iterable[Tensor]:
    if isinstance(tree, Tensor):
        yield tree
    elif isinstance(tree, (tuple, list)):
        for t in tree:
            yield from _tensors(t)
    elif isinstance(tree, dict):
        for t in tree.values():
            yield from _tensors(t)


def _shape_tree(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.shape
    if isinstance(value, (tuple, list)):
        return type(value)(_shape_tree(v) for v in value)
    if isinstance(value, dict):
        return {k: _shape_tree(v) for k, v in value.items()}
    return value


def _fetch_attr(gm: torch.fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _uniform_along(t: Tensor, dim: int, ids: _Ids) -> bool:
    """Whether every slice of ``t`` along ``dim`` holds the same set of channel classes."""
    if t.shape[dim] <= 1:
        return True
    slices = t.movedim(dim, 0)
    first = {ids.find(i) for i in torch.unique(slices[0]).tolist()}
    return all({ids.find(i) for i in torch.unique(s).tolist()} == first for s in slices[1:])
