"""Read intermediate outputs of any model by module path, through forward hooks (torchdistill's habit).

No model's ``forward`` is edited: :class:`FeatureCapture` registers a forward hook on each named submodule
for the duration of a ``with`` block and records what it returns. Paths are those of
``model.named_modules()`` (``"layer2.1.conv2"``, ``"hidden.0"``); ``""`` is the model itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

__all__ = ["FeatureCapture", "capture_features", "resolve_module"]

_LISTED = 40  # at most this many available paths in an error message


def resolve_module(model: nn.Module, path: str, owner: str = "model") -> nn.Module:
    """Return the submodule of ``model`` at ``path``; a wrong path fails naming it and the close ones.

    Args:
        model: the network.
        path: a name of ``model.named_modules()``; ``""`` is ``model`` itself.
        owner: how the error message calls ``model`` (``"student"``, ``"teacher"``).

    Raises:
        ValueError: ``path`` is not a module of ``model``; the message lists close matches and the available
            paths.
    """
    if not isinstance(path, str):
        raise TypeError(f"a module path must be a string, got {type(path).__name__} {path!r}")
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
    listed = ", ".join(names[:_LISTED]) + (
        f", ... ({len(names) - _LISTED} more)" if len(names) > _LISTED else ""
    )
    hint = f"; close matches: {close}" if close else ""
    raise ValueError(
        f"no module {path!r} in the {owner} ({type(model).__name__}){hint}; available paths: {listed}"
    )


def _first_tensor(output: Any) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, Tensor):
                return item
    return None


class FeatureCapture:
    """Capture the outputs of submodules of ``model`` named by path, inside a ``with`` block.

    The paths are checked at construction (a wrong one raises ``ValueError`` naming it and listing close
    matches). The hooks are registered when the block starts and removed when it ends, on the modules found
    at those paths *then*, so a module swapped in the meantime (e.g. by quantization-aware training) is the
    one hooked::

        capture = FeatureCapture(student, ["layer1", "layer2"], owner="student")
        with capture as features:
            logits = student(x)
        features["layer1"]  # the output of student.layer1 in that forward pass

    A module that returns a tuple or list contributes its first tensor. A module called several times in one
    pass keeps its last output.

    Args:
        model: the network whose submodules are read.
        paths: module paths (duplicates are read once).
        owner: how error messages call ``model``.
    """

    def __init__(self, model: nn.Module, paths: Iterable[str], owner: str = "model") -> None:
        self.model = model
        self.paths: tuple[str, ...] = tuple(dict.fromkeys(paths))
        self.owner = owner
        for path in self.paths:
            resolve_module(model, path, owner)
        self.features: dict[str, Tensor] = {}
        self._handles: list[RemovableHandle] = []

    def _hook(self, path: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                raise TypeError(
                    f"the {self.owner}'s module {path!r} ({type(module).__name__}) returned "
                    f"{type(output).__name__}, not a tensor; choose a module that outputs a tensor"
                )
            self.features[path] = tensor

        return hook

    def __enter__(self) -> dict[str, Tensor]:
        self.features = {}
        for path in self.paths:
            module = resolve_module(self.model, path, self.owner)
            self._handles.append(module.register_forward_hook(self._hook(path)))
        return self.features

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def missing(self) -> list[str]:
        """The paths whose module did not run in the last ``with`` block (e.g. a branch not taken)."""
        return [p for p in self.paths if p not in self.features]


@contextmanager
def capture_features(
    model: nn.Module, paths: Sequence[str], owner: str = "model"
) -> Iterator[dict[str, Tensor]]:
    """Functional form of :class:`FeatureCapture`: ``with capture_features(model, paths) as feats: ...``."""
    with FeatureCapture(model, paths, owner) as features:
        yield features
