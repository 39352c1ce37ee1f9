"""Exit classifiers attached to any backbone by module path, and its split into stages for early exit.

Multi-scale dense networks (Huang et al. 2018, "Multi-Scale Dense Networks for Resource Efficient Image
Classification", arXiv 1703.09844) put classifiers at intermediate depths and train them jointly with
``L = Σ_k w_k · CE(f_k(x), y)``. :class:`MultiExitNetwork` does that for any backbone: an :class:`ExitHead`
(global pooling + linear by default) reads the output of each named submodule through a forward hook, so
the backbone's ``forward`` is not edited; its own output is the last exit.

**Stages.** Early-exit inference runs the network stage by stage and drops the samples that exit before the
next stage. A model offers this with ``num_exits`` and ``forward_stage(index, state) -> (state, logits)``
(:class:`effdl_lightning.models.MSDNet` does). :class:`MultiExitNetwork` derives it from one traced forward
pass: the modules along each exit's path must run as a chain, each child taking the previous child's output
as its only input (as in ``nn.Sequential``; ResNet/VGG-style ``forward`` methods do, residual blocks
themselves do not). Then the chain is split after each exit's module. What cannot be split is refused
with the reason when a staged call is made; training and anytime evaluation work on any backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from effdl_lightning.core.distill.capture import FeatureCapture, resolve_module

__all__ = ["ExitHead", "MultiExitNetwork", "is_staged", "num_exits_of"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def is_staged(model: nn.Module) -> bool:
    """Whether ``model`` offers staged inference (``num_exits`` and ``forward_stage``)."""
    return callable(getattr(model, "forward_stage", None)) and isinstance(
        getattr(model, "num_exits", None), int
    )


def num_exits_of(model: nn.Module) -> int | None:
    """``model.num_exits`` when it is a positive int, else ``None``."""
    value = getattr(model, "num_exits", None)
    return value if isinstance(value, int) and value >= 1 else None


class ExitHead(nn.Module):
    """An exit classifier on a feature map ``(N, C, *spatial)`` or a feature vector ``(N, C)``.

    Default (``channels=0``): global average pooling over the spatial dimensions, then ``Linear(C, classes)``.
    With ``channels > 0``, a strided 3×3 ``Conv → BN → ReLU`` with that many channels comes first, as MSDNet's
    classifiers start with strided convolutions (arXiv 1703.09844, §5) — early features are weak inputs for a
    linear classifier.

    Args:
        feature_shape: shape of one sample's feature (no batch), e.g. ``(16, 28, 28)``.
        num_classes: number of logits.
        channels: width of the optional convolution (0: none).
    """

    def __init__(self, feature_shape: Sequence[int], num_classes: int, channels: int = 0) -> None:
        super().__init__()
        shape = tuple(int(d) for d in feature_shape)
        spatial = len(shape) - 1
        if not shape or min(shape) < 1 or spatial > 3:
            raise ValueError(
                f"ExitHead needs a feature shape (C,), (C, L), (C, H, W) or (C, D, H, W) without batch; got {shape}"
            )
        if int(channels) < 0:
            raise ValueError(f"ExitHead `channels` must be >= 0 (0 = no convolution), got {channels}")
        self.body: nn.Module = nn.Identity()
        in_features = shape[0]
        if channels > 0 and spatial > 0:
            self.body = nn.Sequential(
                _CONV[spatial](shape[0], int(channels), 3, stride=2, padding=1, bias=False),
                _NORM[spatial](int(channels)),
                nn.ReLU(),
            )
            in_features = int(channels)
        self.fc = nn.Linear(in_features, int(num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(x)
        if x.ndim > 2:
            x = x.flatten(2).mean(dim=2)
        return self.fc(x)


class _NotStageable(Exception):
    """Raised inside the chain analysis with the reason a backbone cannot be split."""


def _ancestors(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(len(parts))]  # "" (the root), "a", "a.b" for "a.b.c"


class MultiExitNetwork(nn.Module):
    """A backbone with exit classifiers at named module paths; ``forward`` returns one logits per exit.

    ``forward(x) = [h_1(a_1(x)), ..., h_{K-1}(a_{K-1}(x)), backbone(x)]`` where ``a_k`` is the output of the
    module at ``exits[k]`` (read by a forward hook) and ``h_k`` its :class:`ExitHead`, built from the feature
    shape seen in one probing forward pass at ``input_shape``. Training is the backbone's own ``forward``;
    staged inference (:meth:`forward_stage`) splits the backbone's chain of modules after each exit (see the
    module docstring).

    Args:
        backbone: any classifier returning logits ``(N, num_classes)``.
        exits: module paths of ``backbone.named_modules()`` in execution order (shallow to deep), e.g.
            ``["layer1", "layer2"]``; none nested in another.
        num_classes: number of classes.
        input_shape: input without batch, e.g. ``(1, 28, 28)``.
        head_channels: width of each head's strided convolution (0: pooling + linear only).

    Raises:
        ValueError: a path that is not a module (naming it and listing the available ones), a repeated or
            nested path, a module that runs more or less than once per forward pass, or exits not listed
            in execution order.
    """

    def __init__(
        self,
        backbone: nn.Module,
        exits: Sequence[str],
        num_classes: int,
        input_shape: Sequence[int],
        head_channels: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(exits, str) or not isinstance(exits, Sequence) or not exits:
            raise ValueError(f"`exits` must be a non-empty list of module paths, got {exits!r}")
        paths = tuple(exits)
        for path in paths:
            if path == "":
                raise ValueError("exit path '' is the whole backbone; its output is already the last exit")
            resolve_module(backbone, path, owner="backbone")
        if len(set(paths)) != len(paths):
            raise ValueError(f"`exits` lists a path twice: {list(paths)}")
        nested = [(a, b) for a in paths for b in paths if b.startswith(a + ".")]
        if nested:
            raise ValueError(f"exit paths must not be nested; {nested[0][1]!r} is inside {nested[0][0]!r}")
        self.backbone = backbone
        self.exits = paths
        self.num_classes = int(num_classes)
        self.num_exits = len(paths) + 1
        self.input_shape = tuple(int(d) for d in input_shape)
        shapes, self._stages, self._staging_error = self._probe()
        self.heads = nn.ModuleList(ExitHead(shapes[p], self.num_classes, head_channels) for p in paths)

    # --- the probing pass ----------------------------------------------------------------------------------------
    def _probe(self) -> tuple[dict[str, tuple[int, ...]], list[list[str]] | None, str | None]:
        """One forward pass at batch 1 (eval, no grad): feature shapes, exit order, and the chain of modules."""
        backbone = self.backbone
        fired: list[tuple[str, tuple[int, ...]]] = []
        containers = sorted({a for p in self.exits for a in _ancestors(p)})
        calls: dict[str, list[tuple[str, tuple[Any, ...], dict[str, Any], Any]]] = {c: [] for c in containers}
        handles = []

        def exit_hook(path: str) -> Any:
            def hook(module: nn.Module, args: Any, output: Any) -> None:
                if not isinstance(output, Tensor):
                    raise TypeError(
                        f"the backbone's module {path!r} ({type(module).__name__}) returned "
                        f"{type(output).__name__}; an exit needs a module that outputs a tensor"
                    )
                fired.append((path, tuple(output.shape[1:])))

            return hook

        def call_hook(parent: str, name: str) -> Any:
            def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
                calls[parent].append((name, tuple(args), dict(kwargs), output))

            return hook

        for parent in containers:
            for child_name, child in backbone.get_submodule(parent).named_children():
                name = f"{parent}.{child_name}" if parent else child_name
                handles.append(child.register_forward_hook(call_hook(parent, name), with_kwargs=True))
        for path in self.exits:
            handles.append(backbone.get_submodule(path).register_forward_hook(exit_hook(path)))
        param = next(backbone.parameters(), None)
        x = torch.zeros(1, *self.input_shape, device=param.device if param is not None else None)
        flags = {m: m.training for m in backbone.modules()}
        backbone.eval()
        try:
            with torch.no_grad():
                out = backbone(x)
        finally:
            for handle in handles:
                handle.remove()
            for module, flag in flags.items():
                module.training = flag
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[1] != self.num_classes:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the backbone returned {got}; expected logits (batch, {self.num_classes}). A model that already "
                f"returns one logits per exit needs `exits=None`"
            )
        order = [p for p, _ in fired]
        for path in self.exits:
            if order.count(path) != 1:
                raise ValueError(
                    f"exit module {path!r} ran {order.count(path)} times in one forward pass; an exit needs a "
                    f"module that runs exactly once"
                )
        if order != list(self.exits):
            raise ValueError(f"`exits` must be listed in execution order {order}, got {list(self.exits)}")
        shapes = dict(fired)
        try:
            units = self._chain("", x, out, calls, set(containers))
            stages = self._split(units)
        except _NotStageable as err:
            return shapes, None, str(err)
        return shapes, stages, None

    def _chain(
        self, parent: str, inp: Tensor, out: Any, calls: dict[str, Any], containers: set[str]
    ) -> list[str]:
        """The modules of ``parent`` in execution order, recursing into exits' ancestors; check the chain."""
        owner = repr(parent) if parent else type(self.backbone).__name__
        seq = calls[parent]
        if not seq:
            raise _NotStageable(f"no submodule of {owner} ran")
        names = [name for name, *_ in seq]
        for name in names:
            if names.count(name) > 1:
                raise _NotStageable(f"{name!r} runs {names.count(name)} times in one forward pass of {owner}")
        units: list[str] = []
        prev, prev_name = inp, f"the input of {owner}"
        for name, args, kwargs, output in seq:
            if kwargs or len(args) != 1 or args[0] is not prev:
                raise _NotStageable(
                    f"{name!r} does not take {prev_name} as its only input (the forward "
                    f"of {owner} computes something between its submodules, or branches)"
                )
            units += self._chain(name, args[0], output, calls, containers) if name in containers else [name]
            prev, prev_name = output, f"the output of {name!r}"
        if prev is not out:
            raise _NotStageable(f"the output of {owner} is not {prev_name}; its forward computes after it")
        return units

    def _split(self, units: list[str]) -> list[list[str]]:
        stages: list[list[str]] = []
        start = 0
        for path in self.exits:
            if path not in units:
                raise _NotStageable(f"exit {path!r} is not on the chain of modules {units}")
            end = units.index(path) + 1
            stages.append(units[start:end])
            start = end
        stages.append(units[start:])
        return stages

    # --- running it ----------------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> list[Tensor]:
        # a capture per call (not one stored): hooks land on the modules present now, in this replica
        with FeatureCapture(self.backbone, self.exits, owner="backbone") as features:
            out = self.backbone(x)
        missing = [p for p in self.exits if p not in features]
        if missing:
            raise RuntimeError(f"the backbone's exit modules {missing} did not run in this forward pass")
        return [head(features[p]) for p, head in zip(self.exits, self.heads, strict=True)] + [out]

    def stages(self) -> list[list[str]]:
        """Module paths of each stage (stage ``k`` ends at ``exits[k]``; the last ends at the backbone's output).

        Raises:
            ValueError: the backbone cannot be run stage by stage; the message says why.
        """
        if self._stages is None:
            raise ValueError(
                f"cannot run {type(self.backbone).__name__} stage by stage with exits at {list(self.exits)}: "
                f"{self._staging_error}. Early-exit inference needs the modules on each exit's path to run as "
                f"a chain (each takes the previous one's output, as in nn.Sequential), or a model with "
                f"`num_exits` and `forward_stage` (e.g. effdl_lightning.models.MSDNet); training and anytime "
                f"evaluation work on any backbone"
            )
        return [list(stage) for stage in self._stages]

    def forward_stage(self, index: int, state: Tensor) -> tuple[Tensor | None, Tensor]:
        """Run stage ``index`` on ``state`` (the input for stage 0): ``(features for the next stage, logits)``.

        The last stage returns ``(None, backbone logits)``. Running every stage on every sample computes
        exactly what :meth:`forward` computes.
        """
        stages = self.stages()
        if not 0 <= index < len(stages):
            raise ValueError(f"stage index must be in [0, {len(stages) - 1}], got {index}")
        for path in stages[index]:
            state = self.backbone.get_submodule(path)(state)
        if index < len(self.heads):
            return state, self.heads[index](state)
        return None, state
