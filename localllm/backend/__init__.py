"""Backends: where weights live and ops run. An architecture calls only the ops named in
`Backend`; a backend knows nothing of architectures. `get_backend(name)` picks one by name:
"cpu" is the Numba SIMD backend, "numpy" the float32 reference it is tested against."""
from __future__ import annotations

from .base import Backend
from .numpy_ref import NumpyBackend
from ..errors import LocalLLMError


def _numba():
    from .numba_cpu import NumbaBackend   # imported on demand: numba's start-up is not free
    return NumbaBackend


BACKENDS = {"cpu": _numba, "numba": _numba, "numpy": lambda: NumpyBackend}


def get_backend(name: str, threads: int | None = None) -> Backend:
    try:
        cls = BACKENDS[name]()
    except KeyError:
        raise LocalLLMError(f"unknown backend {name!r} (available: {', '.join(sorted(BACKENDS))})") from None
    return cls(threads=threads)


__all__ = ["Backend", "NumpyBackend", "get_backend", "BACKENDS"]
