"""Reference and efficient architectures, registered by name (``create``, ``list_models``)."""

from effdl_lightning.models.registry import ModelEntry, create, get_model_entry, list_models, register_model

__all__ = ["ModelEntry", "create", "get_model_entry", "list_models", "register_model"]
