"""Model catalog, fetching into the local cache, and random-weight GGUF files for tests."""
from .catalog import CATALOG, CatalogEntry
from .fetch import ModelFetchError, NetworkUnavailable, list_models, model_path, models_home, pull, resolve_model
from .synthetic import make_random_gguf

__all__ = [
    "CATALOG", "CatalogEntry", "ModelFetchError", "NetworkUnavailable", "list_models", "make_random_gguf",
    "model_path", "models_home", "pull", "resolve_model",
]
