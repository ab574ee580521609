"""DRAM read bandwidth probe: every thread XOR-reduces its own slice of a large array. Integer XOR
needs no fast-math to vectorise, so LLVM emits full-width SIMD loads (zmm on AVX-512), with
several accumulators in flight; the plain twin below is the portable reference.

The loop indexes a slice from 0: with `a[i]` for i in range(start, end) numba cannot prove i >= 0,
keeps its negative-index wraparound, and LLVM vectorises that into gathers (3 GB/s, not 17)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

CHUNKS = 256   # work items per sweep: many more than threads, so no thread idles at the end


@njit(cache=True, boundscheck=False)
def _xor_slice(a: np.ndarray, start: int, end: int) -> np.uint64:
    b = a[start:end]
    s = np.uint64(0)
    for i in range(b.shape[0]):
        s ^= b[i]
    return s


@njit(parallel=True, cache=True, boundscheck=False)
def read_xor_u64(a: np.ndarray) -> np.uint64:
    """Reads all of `a` (uint64 [n]) once; returns a checksum so the reads cannot be elided."""
    n = a.shape[0]
    per = (n + CHUNKS - 1) // CHUNKS
    acc = np.zeros(CHUNKS, dtype=np.uint64)
    for c in prange(CHUNKS):
        acc[c] = _xor_slice(a, c * per, min(n, (c + 1) * per))
    s = np.uint64(0)
    for c in range(CHUNKS):
        s ^= acc[c]
    return s


def read_xor_u64_plain(a: np.ndarray) -> np.uint64:
    return np.bitwise_xor.reduce(a) if len(a) else np.uint64(0)
