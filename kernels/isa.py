"""Which instruction-set paths this CPU can run, and how one kernel source becomes several
compiled kernels (one per path) without copying it."""
from __future__ import annotations

import os
import types as pytypes
from typing import Any, Callable

import numba

from ..errors import LocalLLMError
from .simd import host_features

PORTABLE, AVX2, VNNI = "portable", "avx2", "vnni"
ENV_ISA = "LOCALLLM_ISA"   # force a slower path (benchmark the AVX2 kernels on an AVX-512 machine)


def available_isas() -> list[str]:
    """Paths this host can execute, slowest first (the last one is the default)."""
    f = host_features()
    isas = [PORTABLE]
    if "avx2" in f and "fma" in f and "f16c" in f:
        isas.append(AVX2)
    if {"avx512f", "avx512bw", "avx512vnni"} <= f:
        isas.append(VNNI)
    return isas


def best_isa() -> str:
    """The fastest path, or the one $LOCALLLM_ISA names (it must be available here)."""
    forced, isas = os.environ.get(ENV_ISA), available_isas()
    if forced:
        if forced not in isas:
            raise LocalLLMError(f"{ENV_ISA}={forced[:32]!r}: this CPU can run {', '.join(isas)}")
        return forced
    return isas[-1]


def specialize(template: Callable, suffix: str, *, parallel: bool = True, **bindings: Any) -> Callable:
    """njit(cache=True) a copy of `template` whose globals `bindings` replace (e.g. which dot
    product intrinsic or which unpack helper it calls). The copy gets its own qualname so that
    Numba's on-disk cache keeps one entry per variant instead of overwriting a shared one."""
    fn = pytypes.FunctionType(template.__code__, {**template.__globals__, **bindings},
                              f"{template.__name__}_{suffix}", template.__defaults__, template.__closure__)
    fn.__qualname__ = fn.__name__
    fn.__module__ = template.__module__
    return numba.njit(cache=True, parallel=parallel, fastmath=True, nogil=True)(fn)
