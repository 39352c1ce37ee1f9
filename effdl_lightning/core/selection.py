"""Choose the layers a technique acts on: by type and by glob patterns on module names (DESIGN contract 1)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from torch import nn

#: the layer types that carry the weights compression techniques act on by default
DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


def _as_patterns(patterns: str | Iterable[str] | None) -> tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


def select_modules(
    model: nn.Module,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    layer_types: Sequence[type[nn.Module]] = DEFAULT_LAYER_TYPES,
    strict: bool = True,
) -> dict[str, nn.Module]:
    """Return ``{name: module}`` of the layers of ``model`` of ``layer_types`` that the patterns select.

    A module is selected when its type is one of ``layer_types``, its qualified name matches one of the
    ``include`` glob patterns (all, when ``include`` is empty) and none of the ``exclude`` patterns. Patterns
    use :mod:`fnmatch` syntax on names as in ``model.named_modules()`` (e.g. ``"features.*"``, ``"fc3"``).

    Args:
        model: any module.
        include: patterns of names to keep; ``None`` keeps every layer of the given types.
        exclude: patterns of names to drop (e.g. the classifier).
        layer_types: the module types eligible at all.
        strict: raise ``ValueError`` when a pattern matches no layer of the eligible types, or when nothing is
            selected — a misspelt pattern must not silently select nothing.

    Raises:
        ValueError: a pattern that matches nothing, or an empty selection (with ``strict=True``).
    """
    inc, exc = _as_patterns(include), _as_patterns(exclude)
    types = tuple(layer_types)
    eligible: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if name and isinstance(module, types):
            eligible[name] = module
    if strict:
        for kind, patterns in (("include", inc), ("exclude", exc)):
            for pattern in patterns:
                if not any(fnmatch.fnmatchcase(name, pattern) for name in eligible):
                    known = ", ".join(eligible) or "(none)"
                    raise ValueError(
                        f"{kind} pattern {pattern!r} matches no layer of types "
                        f"{[t.__name__ for t in layer_types]}; eligible layers: {known}"
                    )
    selected: dict[str, nn.Module] = {
        name: m
        for name, m in eligible.items()
        if (not inc or any(fnmatch.fnmatchcase(name, p) for p in inc))
        and not any(fnmatch.fnmatchcase(name, p) for p in exc)
    }
    if strict and not selected:
        raise ValueError(
            f"no layer selected (include={list(inc)}, exclude={list(exc)}); eligible layers: "
            f"{', '.join(eligible) or '(none)'}"
        )
    return selected
