"""Registry of model constructors, walked by the test suite (after timm's ``timm/models/_registry.py``).

Every registered constructor accepts the keywords ``num_classes`` and ``input_shape`` (channels first,
without the batch dimension, e.g. ``(1, 28, 28)`` or ``(1, 40)``) so that any dataset can drive any model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows of one model: its constructor and the input it is tested with."""

    name: str
    fn: Callable[..., nn.Module]
    default_input_shape: tuple[int, ...]
    default_num_classes: int
    test_kwargs: tuple[tuple[str, Any], ...] = ()


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    default_input_shape: Sequence[int] = (1, 28, 28),
    default_num_classes: int = 10,
    test_kwargs: dict[str, Any] | None = None,
) -> Callable[[F], F]:
    """Register a model constructor under ``name``.

    Args:
        name: the name given to :func:`create` and used in ``conf/model/<name>.yaml``.
        default_input_shape: the input (without batch) that the registry test feeds the model.
        default_num_classes: the number of classes the registry test asks for.
        test_kwargs: extra constructor arguments for the registry test (e.g. a small width), so that
            large models stay fast in the test suite.
    """

    def decorator(fn: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered (by {_REGISTRY[name].fn!r})")
        _REGISTRY[name] = ModelEntry(
            name=name,
            fn=fn,
            default_input_shape=tuple(int(d) for d in default_input_shape),
            default_num_classes=int(default_num_classes),
            test_kwargs=tuple(sorted((test_kwargs or {}).items())),
        )
        return fn

    return decorator


def list_models() -> list[str]:
    """Return the sorted names of all registered models."""
    return sorted(_REGISTRY)


def get_model_entry(name: str) -> ModelEntry:
    """Return the registry entry of ``name``; an unknown name raises ``ValueError`` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` (``num_classes``, ``input_shape``, options)."""
    return get_model_entry(name).fn(**kwargs)
