"""Backends: where weights live and ops run. An architecture calls only the ops named in
`Backend`; a backend knows nothing of architectures. `get_backend(name)` picks one by name."""
from __future__ import annotations

from .base import Backend
from .numpy_ref import NumpyBackend
from ..errors import LocalLLMError

BACKENDS = {"cpu": NumpyBackend, "numpy": NumpyBackend}


def get_backend(name: str, threads: int | None = None) -> Backend:
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise LocalLLMError(f"unknown backend {name!r} (available: {', '.join(sorted(BACKENDS))})") from None
    return cls(threads=threads)


__all__ = ["Backend", "NumpyBackend", "get_backend", "BACKENDS"]
