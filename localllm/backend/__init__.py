"""Backends: where weights live and ops run. An architecture calls only the ops named in
`Backend`; a backend knows nothing of architectures. `get_backend(name)` picks one by name:
"cpu" is the Numba SIMD backend, "numpy" the float32 reference it is tested against, "opencl"
an OpenCL device (pyopencl needed; $LOCALLLM_OPENCL_DEVICE picks the device), and "auto" the
OpenCL backend when a GPU device exists, else "cpu"."""
from __future__ import annotations

import logging

from .base import Backend
from .numpy_ref import NumpyBackend
from ..errors import LocalLLMError, quoted

log = logging.getLogger(__name__)


def _numba():
    from .numba_cpu import NumbaBackend   # imported on demand: numba's start-up is not free
    return NumbaBackend


def _opencl():
    from .opencl import OpenCLBackend     # imported on demand: pyopencl is optional
    return OpenCLBackend


def _auto():
    try:
        from .opencl import has_gpu
        gpu = has_gpu()
    except ImportError:
        gpu = False
    log.info("backend auto: %s", "opencl (a GPU device exists)" if gpu else "cpu (no OpenCL GPU device)")
    return _opencl() if gpu else _numba()


BACKENDS = {"cpu": _numba, "numpy": lambda: NumpyBackend, "opencl": _opencl, "auto": _auto}


def get_backend(name: str, threads: int | None = None, device: str | int | None = None) -> Backend:
    """device: which OpenCL device (index or name substring); only OpenCL backends take one."""
    try:
        cls = BACKENDS[name]()
    except (KeyError, TypeError):
        raise LocalLLMError(f"unknown backend {quoted(name)} (available: {', '.join(sorted(BACKENDS))})") from None
    if device is not None and cls.name == "opencl":
        return cls(threads=threads, device=str(device))
    if device is not None:
        raise LocalLLMError(f"--device selects an OpenCL device; backend {cls.name!r} has none")
    return cls(threads=threads)


__all__ = ["Backend", "NumpyBackend", "get_backend", "BACKENDS"]
