"""Quantized matmul: r8 weights (kernels.quant) times Q8_0 activations, y[t, n] = sum_k x[t,k] w[n,k].

One source per algorithm, compiled per (weight encoding, instruction set) by `kernels.isa.specialize`:
  _mul_r8_simd   zmm-shaped: per 32-column block, four `dot_u8s8` (u8 weights x broadcast int8
                 activations) give int32 per lane, then lane += d_w*d_x*dot + m_w*s_x in float32.
                 Each weight block is decoded once and reused for TILE activation rows (prefill);
                 a single row (decode) is the same loop with one row.
  _mul_r8_plain  the portable twin: plain integer loops over the same layout (and the oracle the
                 SIMD builds are tested against).
Block math is ggml's (q4_1 x q8_1): sum_b d_w[b] d_x[b] sum_j u_j q_j + m_w[b] d_x[b] sum_j q_j.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from numba import njit, prange

from . import simd
from .isa import AVX2, PORTABLE, VNNI, specialize
from .quant import QK, R, U4, R8Weight, quant_at
from .simd import (bcast8_i8x64, fma_f32, load_f32x16, load_i8x64, load_pairs_f32x16, mul_f32, nibbles,
                   scale_at, splat_f32, store_f32x16, store_pair_sums, to_f32, zero_f32, zero_i32)

TILE = 4             # activation rows sharing one decode of a weight block (prefill)
GROUPS_PER_TASK = 4  # 8-row groups per parallel task: amortises the per-task scratch allocation


@njit(inline="always")
def _unpack_u4(qs, off):
    """128 bytes of nibbles -> the four 8x8 chunks of one group-block, as bytes 0..15."""
    c0, c1 = nibbles(load_i8x64(qs, off))
    c2, c3 = nibbles(load_i8x64(qs, off + 64))
    return c0, c1, c2, c3


@njit(inline="always")
def _unpack_u8(qs, off):
    return load_i8x64(qs, off), load_i8x64(qs, off + 64), load_i8x64(qs, off + 128), load_i8x64(qs, off + 192)


def _mul_r8_simd(qs, d, m, xq, xd, xs, y):
    """qs uint8 [G, nb*BLOCK_BYTES], d/m [G, nb*8], xq int8 [T, k], xd/xs float32 [T, nb],
    y float32 [T, G*8] (written). Globals bound per build: unpack, dot_u8s8, BLOCK_BYTES."""
    G, T, k = qs.shape[0], xq.shape[0], xq.shape[1]
    nb, ny = k // QK, y.shape[1]
    for task in prange((G + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK):
        acc = np.empty(TILE * 16, dtype=np.float32)                     # [TILE, 16 lanes]
        for g in range(task * GROUPS_PER_TASK, min(G, (task + 1) * GROUPS_PER_TASK)):
            for t0 in range(0, T, TILE):
                nt = min(TILE, T - t0)
                for i in range(nt):
                    store_f32x16(acc, i * 16, zero_f32())
                for b in range(nb):
                    c0, c1, c2, c3 = unpack(qs, g * qs.shape[1] + b * BLOCK_BYTES)
                    dw = load_pairs_f32x16(d, g * d.shape[1] + b * R)   # lanes 2r, 2r+1: row r
                    mw = load_pairs_f32x16(m, g * m.shape[1] + b * R)
                    for i in range(nt):
                        t = t0 + i
                        xo = t * k + b * QK
                        dot = dot_u8s8(zero_i32(), c0, bcast8_i8x64(xq, xo))
                        dot = dot_u8s8(dot, c1, bcast8_i8x64(xq, xo + 8))
                        dot = dot_u8s8(dot, c2, bcast8_i8x64(xq, xo + 16))
                        dot = dot_u8s8(dot, c3, bcast8_i8x64(xq, xo + 24))
                        a = fma_f32(mw, splat_f32(xs[t, b]), load_f32x16(acc, i * 16))
                        a = fma_f32(to_f32(dot), mul_f32(dw, splat_f32(xd[t, b])), a)
                        store_f32x16(acc, i * 16, a)
                for i in range(nt):
                    store_pair_sums(y, (t0 + i) * ny + g * R, load_f32x16(acc, i * 16))


def _mul_r8_plain(qs, d, m, xq, xd, xs, y):
    """Same contract as _mul_r8_simd, scalar loops. Global bound per build: IS_U4."""
    G, T, k = qs.shape[0], xq.shape[0], xq.shape[1]
    nb = k // QK
    for g in prange(G):
        for t in range(T):
            for r in range(R):
                acc = np.float32(0.0)
                for b in range(nb):
                    dot = 0
                    for j in range(QK):
                        dot += np.int32(quant_at(qs, g, b, r, j, IS_U4)) * np.int32(xq[t, b * QK + j])
                    s = g * d.shape[1] + b * R + r
                    acc += scale_at(d, s) * xd[t, b] * np.float32(dot) + scale_at(m, s) * xs[t, b] * 2
                y[t, g * R + r] = acc


_DOTS = {VNNI: (simd.dot_u8s8_vnni, simd.dot_u8s8_vnni), AVX2: (simd.dot_u8s8_avx2, simd.dot_u8s8_avx2_wide)}


@functools.cache
def r8_kernel(kind: str, isa: str, wide: bool = False) -> Callable:
    """The compiled kernel for weights of encoding `kind` (U4/U8) on instruction set `isa`.
    `wide`: some u bytes are >= 128, so the AVX2 build must use the non-saturating dot product."""
    if isa == PORTABLE:
        return specialize(_mul_r8_plain, f"{kind}_portable", IS_U4=kind == U4)
    dot = _DOTS[isa][int(wide)]
    return specialize(_mul_r8_simd, f"{kind}_{isa}{'_wide' if wide else ''}", dot_u8s8=dot,
                      unpack=_unpack_u4 if kind == U4 else _unpack_u8,
                      BLOCK_BYTES=QK * R // 2 if kind == U4 else QK * R)


def mul_r8(w: R8Weight, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, isa: str,
           out: np.ndarray | None = None) -> np.ndarray:
    """float32 [T, w.qs.shape[0]*8] = Q8_0 activations (xq, xd, xs from quantize_q8_0) x w^T.
    Rows past w.rows are padding (zero)."""
    if out is None:
        out = np.empty((xq.shape[0], w.qs.shape[0] * R), dtype=np.float32)   # [T, n padded]
    r8_kernel(w.kind, isa, w.wide)(w.qs, w.d, w.m, xq, xd, xs, out)
    return out

