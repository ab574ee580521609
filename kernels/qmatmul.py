"""Quantized matmul: r8 weights (kernels.quant) times Q8_0 activations, y[t, n] = sum_k x[t,k] w[n,k].

One source per algorithm, compiled per (weight encoding, instruction set) by `kernels.isa.specialize`:
  _mm_r8_groups  zmm-shaped, serial over a range of 8-row groups: per 32-column block, four
                 `dot_u8s8` (u8 weights x broadcast int8 activations) give int32 per lane, then
                 lane += d_w*d_x*dot + m_w*s_x in float32. Batches hold 2 groups x 4
                 activation rows in registers; the rows left (all, below 4) go two at a time. The compiled step calls it
                 directly; `_mul_par` runs it over parallel tasks (so does the q6 kernel).
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
from .quant import Q6, Q6_BYTES, QK, R, U4, R8Weight, q6_at, quant_at
from .simd import (bcast8_i8x64, const32_i8x64, sub_i32, unpack_q6, fma_f32, load_i8x64, load_pairs_f32x16, mul_f32, nibbles,
                   scale_at, splat_f32, store_pair_sums, to_f32, zero_f32, zero_i32)

GROUPS_PER_TASK = 4  # 8-row groups per parallel task


@njit(inline="always")
def _unpack_u4(qs, off):
    """128 bytes of nibbles -> the four 8x8 chunks of one group-block, as bytes 0..15."""
    c0, c1 = nibbles(load_i8x64(qs, off))
    c2, c3 = nibbles(load_i8x64(qs, off + 64))
    return c0, c1, c2, c3


@njit(inline="always")
def _unpack_u8(qs, off):
    return load_i8x64(qs, off), load_i8x64(qs, off + 64), load_i8x64(qs, off + 128), load_i8x64(qs, off + 192)


@njit(inline="always")
def _offsets_stored(m, off, dw):
    return load_pairs_f32x16(m, off)


def _offsets_from_d(m, off, dw):
    """m = -zero * d for the symmetric types (m not stored). Global bound per build: MZERO = -zero."""
    return mul_f32(dw, splat_f32(MZERO))


# --- r8 x Q8_0 on a range of 8-row groups: the serial body of the matmul and of the compiled step
def _mm_r8_groups(qs, d, m, xq, xd, xs, g0, g1, y):
    """y[t, g*8 + r] for groups g0 <= g < g1 and all rows t of xq. Globals bound per build:
    unpack, dot_u8s8, BLOCK_BYTES, offsets (m stored or -zero*d)."""
    T, k = xq.shape[0], xq.shape[1]
    nb, ny = k // QK, y.shape[1]
    T4 = T - T % 4
    g2 = g0 + (g1 - g0) // 2 * 2 if T4 else g0
    for g in range(g0, g2, 2):                  # batches: 2 groups x 4 rows held in registers
        for t0 in range(0, T4, 4):
            a00, a01, a02, a03 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
            a10, a11, a12, a13 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
            for b in range(nb):
                p0, p1, p2, p3 = unpack(qs, g * qs.shape[1] + b * BLOCK_BYTES)
                q0, q1, q2, q3 = unpack(qs, (g + 1) * qs.shape[1] + b * BLOCK_BYTES)
                dw0 = load_pairs_f32x16(d, g * d.shape[1] + b * R)
                mw0 = offsets(m, g * m.shape[1] + b * R, dw0)
                dw1 = load_pairs_f32x16(d, (g + 1) * d.shape[1] + b * R)
                mw1 = offsets(m, (g + 1) * m.shape[1] + b * R, dw1)
                a00, a10 = _tile_step(xq, xd, xs, t0, k, b, p0, p1, p2, p3, q0, q1, q2, q3, dw0, mw0, dw1, mw1, a00, a10)
                a01, a11 = _tile_step(xq, xd, xs, t0 + 1, k, b, p0, p1, p2, p3, q0, q1, q2, q3, dw0, mw0, dw1, mw1, a01, a11)
                a02, a12 = _tile_step(xq, xd, xs, t0 + 2, k, b, p0, p1, p2, p3, q0, q1, q2, q3, dw0, mw0, dw1, mw1, a02, a12)
                a03, a13 = _tile_step(xq, xd, xs, t0 + 3, k, b, p0, p1, p2, p3, q0, q1, q2, q3, dw0, mw0, dw1, mw1, a03, a13)
            store_pair_sums(y, t0 * ny + g * R, a00)
            store_pair_sums(y, (t0 + 1) * ny + g * R, a01)
            store_pair_sums(y, (t0 + 2) * ny + g * R, a02)
            store_pair_sums(y, (t0 + 3) * ny + g * R, a03)
            store_pair_sums(y, t0 * ny + (g + 1) * R, a10)
            store_pair_sums(y, (t0 + 1) * ny + (g + 1) * R, a11)
            store_pair_sums(y, (t0 + 2) * ny + (g + 1) * R, a12)
            store_pair_sums(y, (t0 + 3) * ny + (g + 1) * R, a13)
    for g in range(g0, g1):                     # the rows no tile took (all of them below 4 rows), two
        for t in range(T4 if g < g2 else 0, T, 2):  # at a time: each unpacked block feeds both
            two = t + 1 < T
            a, a2 = zero_f32(), zero_f32()
            for b in range(nb):
                _prefetch_ahead(qs, d, m, g, b, BLOCK_BYTES)
                c0, c1, c2, c3 = unpack(qs, g * qs.shape[1] + b * BLOCK_BYTES)
                dw = load_pairs_f32x16(d, g * d.shape[1] + b * R)
                mw = offsets(m, g * m.shape[1] + b * R, dw)
                a = _row_step(xq, xd, xs, t, k, b, c0, c1, c2, c3, dw, mw, a)
                if two:
                    a2 = _row_step(xq, xd, xs, t + 1, k, b, c0, c1, c2, c3, dw, mw, a2)
            store_pair_sums(y, t * ny + g * R, a)
            if two:
                store_pair_sums(y, (t + 1) * ny + g * R, a2)


@njit(inline="always")
def _prefetch_ahead(qs, d, m, g, b, block_bytes):
    """Request block b of a group at least 4 KB ahead of group g into L2: its quant lines, and
    its scale (and minimum) line where one starts. The row passes read a group's quants and
    scales as two streams of a few KB; the hardware prefetcher alone left DRAM idle at their
    starts (SmolLM2 Q4_0's layer matrices, one row, DRAM-resident: 15-22 -> 19-25 GB/s; its draft
    step between F16 target steps: 0.358 -> 0.342 target steps, median of five alternating runs),
    and one group ahead was too close for 576 columns (2.3 KB a group: its gate/up stage
    1251-1326 -> 1074-1178 µs with two groups ahead; ad-hoc scripts)."""
    gn = g + 1 + 4096 // qs.shape[1]
    if gn < qs.shape[0]:
        o = gn * qs.shape[1] + b * block_bytes
        for j in range(0, block_bytes, 64):
            simd.prefetch_l2(qs, o + j)
        if b % (64 // (R * d.itemsize)) == 0:
            simd.prefetch_l2(d, gn * d.shape[1] + b * R)
            if m.size:
                simd.prefetch_l2(m, gn * m.shape[1] + b * R)


def _row_step(xq, xd, xs, t, k, b, c0, c1, c2, c3, dw, mw, a):
    """One block of one activation row against one group. Global bound per build: dot_u8s8."""
    xo = t * k + b * QK
    dot = dot_u8s8(zero_i32(), c0, bcast8_i8x64(xq, xo))
    dot = dot_u8s8(dot, c1, bcast8_i8x64(xq, xo + 8))
    dot = dot_u8s8(dot, c2, bcast8_i8x64(xq, xo + 16))
    dot = dot_u8s8(dot, c3, bcast8_i8x64(xq, xo + 24))
    return _acc_block(dot, dw, mw, splat_f32(xd[t, b]), splat_f32(xs[t, b]), a)


def _tile_step(xq, xd, xs, t, k, b, p0, p1, p2, p3, q0, q1, q2, q3, dw0, mw0, dw1, mw1, a0, a1):
    """One block of one activation row against two groups (each broadcast feeds both)."""
    xo = t * k + b * QK
    x0, x1, x2, x3 = bcast8_i8x64(xq, xo), bcast8_i8x64(xq, xo + 8), bcast8_i8x64(xq, xo + 16), bcast8_i8x64(xq, xo + 24)
    e0 = dot_u8s8(dot_u8s8(dot_u8s8(dot_u8s8(zero_i32(), p0, x0), p1, x1), p2, x2), p3, x3)
    e1 = dot_u8s8(dot_u8s8(dot_u8s8(dot_u8s8(zero_i32(), q0, x0), q1, x1), q2, x2), q3, x3)
    sx, dx = splat_f32(xs[t, b]), splat_f32(xd[t, b])
    return _acc_block(e0, dw0, mw0, dx, sx, a0), _acc_block(e1, dw1, mw1, dx, sx, a1)


@njit(inline="always")
def _acc_block(dot, dw, mw, dx, sx, a):
    """a + one block's d_w*d_x*dot + m_w*s_x per lane, in the one float order the tiles and the
    row passes share (so a batch's rows equal single rows bit for bit)."""
    return fma_f32(to_f32(dot), mul_f32(dw, dx), fma_f32(mw, sx, a))


def _mul_r8_plain(qs, d, m, xq, xd, xs, y):
    """Same contract as _mul_par over _mm_r8_groups, scalar loops. Globals bound per build: IS_U4, ZERO."""
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
                    mb = np.float32(-ZERO) * scale_at(d, s) if ZERO else scale_at(m, s)
                    acc += scale_at(d, s) * xd[t, b] * np.float32(dot) + mb * xs[t, b] * 2
                y[t, g * R + r] = acc


# --- Q6 (Q6_K): value = (d*sc_h) * (u - 32), one scale per 16-column half of a block ---------------
def _q6_step(xq, xd, t, k, b, c0, c1, c2, c3, d0, d1, a):
    """One 32-column block of activation row t against one q6 group: per half h, the lane's
    dot(u, x) - dot(32, x) (exact int32) times d*sc_h * d_x. Global bound per build: dot_u8s8."""
    xo = t * k + b * QK
    x0, x1, x2, x3 = bcast8_i8x64(xq, xo), bcast8_i8x64(xq, xo + 8), bcast8_i8x64(xq, xo + 16), bcast8_i8x64(xq, xo + 24)
    k32 = const32_i8x64()
    e0 = sub_i32(dot_u8s8(dot_u8s8(zero_i32(), c0, x0), c1, x1), dot_u8s8(dot_u8s8(zero_i32(), k32, x0), k32, x1))
    e1 = sub_i32(dot_u8s8(dot_u8s8(zero_i32(), c2, x2), c3, x3), dot_u8s8(dot_u8s8(zero_i32(), k32, x2), k32, x3))
    dx = splat_f32(xd[t, b])
    a = fma_f32(to_f32(e0), mul_f32(d0, dx), a)
    return fma_f32(to_f32(e1), mul_f32(d1, dx), a)


@njit(inline="always")
def _q6_scales(sub, sup, gd, gm, b):
    """The two halves' d*sc of block b, per lane: int8 sub-scale times the super-block's d."""
    ds = load_pairs_f32x16(sup, gm + (b >> 3) * 8)
    return mul_f32(load_pairs_f32x16(sub, gd + b * 16), ds), mul_f32(load_pairs_f32x16(sub, gd + b * 16 + 8), ds)


def _mm_q6_groups(qs, d, m, xq, xd, xs, g0, g1, y):
    """y[t, g*8 + r] for q6 groups g0 <= g < g1 and all rows t (serial; the compiled step's MM slot
    contract: d the int8 sub-scales, m the super-block scales, xs unused). Four activation rows
    share each unpacked block. Global: q6_step."""
    T, k = xq.shape[0], xq.shape[1]
    nb, ny = k // QK, y.shape[1]
    T4 = T - T % 4
    for g in range(g0, g1):
        go, gd, gm = g * qs.shape[1], g * d.shape[1], g * m.shape[1]
        for t0 in range(0, T4, 4):
            a0, a1, a2, a3 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
            for b in range(nb):
                c0, c1, c2, c3 = unpack_q6(qs, go + b * Q6_BYTES)
                d0, d1 = _q6_scales(d, m, gd, gm, b)
                a0 = q6_step(xq, xd, t0, k, b, c0, c1, c2, c3, d0, d1, a0)
                a1 = q6_step(xq, xd, t0 + 1, k, b, c0, c1, c2, c3, d0, d1, a1)
                a2 = q6_step(xq, xd, t0 + 2, k, b, c0, c1, c2, c3, d0, d1, a2)
                a3 = q6_step(xq, xd, t0 + 3, k, b, c0, c1, c2, c3, d0, d1, a3)
            store_pair_sums(y, t0 * ny + g * R, a0)
            store_pair_sums(y, (t0 + 1) * ny + g * R, a1)
            store_pair_sums(y, (t0 + 2) * ny + g * R, a2)
            store_pair_sums(y, (t0 + 3) * ny + g * R, a3)
        for t in range(T4, T):
            a = zero_f32()
            for b in range(nb):
                c0, c1, c2, c3 = unpack_q6(qs, go + b * Q6_BYTES)
                d0, d1 = _q6_scales(d, m, gd, gm, b)
                a = q6_step(xq, xd, t, k, b, c0, c1, c2, c3, d0, d1, a)
            store_pair_sums(y, t * ny + g * R, a)


def _mul_par(qs, d, m, xq, xd, xs, y):
    """The parallel matmul, r8 or q6: tasks of GROUPS_PER_TASK groups. Global bound per build: mm."""
    G = qs.shape[0]
    for task in prange((G + GROUPS_PER_TASK - 1) // GROUPS_PER_TASK):
        mm(qs, d, m, xq, xd, xs, task * GROUPS_PER_TASK, min(G, (task + 1) * GROUPS_PER_TASK), y)


def _mul_q6_plain(qs, d, m, xq, xd, xs, y):
    """Portable twin of the q6 kernels: scalar integer loops."""
    G, T, k = qs.shape[0], xq.shape[0], xq.shape[1]
    nb = k // QK
    for g in prange(G):
        for t in range(T):
            for r in range(R):
                acc = np.float32(0.0)
                for b in range(nb):
                    for h in range(2):
                        dot = 0
                        for j in range(h * 16, h * 16 + 16):
                            dot += (np.int32(q6_at(qs, g, b, r, j)) - 32) * np.int32(xq[t, b * QK + j])
                        ds = np.float32(d[g, b * 16 + h * 8 + r]) * m[g, (b >> 3) * 8 + r]
                        acc += ds * xd[t, b] * np.float32(dot)
                y[t, g * R + r] = acc


def bind_inline(fn: Callable, suffix: str, **bindings) -> Callable:
    """An njit(inline="always") copy of helper `fn` with some globals rebound (cf. isa.specialize)."""
    import types as pytypes
    from numba import njit as _njit
    f = pytypes.FunctionType(fn.__code__, {**fn.__globals__, **bindings}, f"{fn.__name__}_{suffix}")
    f.__qualname__, f.__module__ = f.__name__, fn.__module__
    return _njit(inline="always", cache=True, fastmath=True)(f)


_Q6_DOTS = {VNNI: simd.dot_u8s8_vnni, AVX2: simd.dot_u8s8_avx2}   # u < 64: the AVX2 dot cannot saturate


@functools.cache
def q6_groups(isa: str) -> Callable:
    """The serial q6 matmul over a group range on `isa` (VNNI or AVX2)."""
    step = bind_inline(_q6_step, isa, dot_u8s8=_Q6_DOTS[isa])
    return specialize(_mm_q6_groups, isa, parallel=False, q6_step=step)


@functools.cache
def q6_kernel(isa: str) -> Callable:
    if isa == PORTABLE:
        return specialize(_mul_q6_plain, "portable")
    return specialize(_mul_par, f"q6_{isa}", mm=q6_groups(isa))


_DOTS = {VNNI: (simd.dot_u8s8_vnni, simd.dot_u8s8_vnni), AVX2: (simd.dot_u8s8_avx2, simd.dot_u8s8_avx2_wide)}


def _suffix(kind: str, isa: str, wide: bool, zero: int) -> str:
    return f"{kind}_{isa}{'_wide' if wide else ''}{f'_z{zero}' if zero else ''}"


@functools.cache
def r8_groups(kind: str, isa: str, wide: bool, zero: int = 0) -> Callable:
    """The serial r8 matmul over a group range for encoding `kind` (U4/U8) on `isa` (VNNI or AVX2).
    `wide`: some u bytes are >= 128, so AVX2 must use the non-saturating dot product.
    `zero` > 0: m is not stored but -zero * d (R8Weight.zero)."""
    dot = _DOTS[isa][int(wide)]
    offsets = bind_inline(_offsets_from_d, f"z{zero}", MZERO=np.float32(-zero)) if zero else _offsets_stored
    return specialize(_mm_r8_groups, _suffix(kind, isa, wide, zero), parallel=False, dot_u8s8=dot,
                      _tile_step=bind_inline(_tile_step, f"{isa}{'_wide' if wide else ''}", dot_u8s8=dot),
                      _row_step=bind_inline(_row_step, f"{isa}{'_wide' if wide else ''}", dot_u8s8=dot),
                      unpack=_unpack_u4 if kind == U4 else _unpack_u8, offsets=offsets,
                      BLOCK_BYTES=QK * R // 2 if kind == U4 else QK * R)


@functools.cache
def r8_kernel(kind: str, isa: str, wide: bool = False, zero: int = 0) -> Callable:
    """The compiled parallel kernel for weights of encoding `kind` (U4/U8) on instruction set `isa`."""
    if isa == PORTABLE:
        return specialize(_mul_r8_plain, _suffix(kind, "portable", False, zero), IS_U4=kind == U4, ZERO=zero)
    return specialize(_mul_par, "r8_" + _suffix(kind, isa, wide, zero), mm=r8_groups(kind, isa, wide, zero))


def mul_r8(w: R8Weight, xq: np.ndarray, xd: np.ndarray, xs: np.ndarray, isa: str,
           out: np.ndarray | None = None) -> np.ndarray:
    """float32 [T, w.qs.shape[0]*8] = Q8_0 activations (xq, xd, xs from quantize_q8_0) x w^T.
    Rows past w.rows are padding (zero)."""
    if out is None:
        out = np.empty((xq.shape[0], w.qs.shape[0] * R), dtype=np.float32)   # [T, n padded]
    if w.kind == Q6:
        q6_kernel(isa)(w.qs, w.d, w.m, xq, xd, xs, out)
        return out
    r8_kernel(w.kind, isa, w.wide, w.zero)(w.qs, w.d, w.m, xq, xd, xs, out)
    return out

