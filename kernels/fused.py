"""A whole forward step of a llama-shaped model in ONE compiled call with ONE parallel region.

Calling op kernels one by one costs a parallel region (fork, barrier, join) per op: ~7 per layer,
and on a shared machine each of them may wait a whole scheduler slice for a preempted thread.
Here the threads enter a single region (`prange(nthreads)`) and walk the same list of stages
(per layer: norm, QKV, K rope + cache store, attention, O + residual, norm, gate/up + SwiGLU,
down + residual; then the output norm and projection). Every stage is cut into chunks that the
threads *claim* from an atomic counter; a thread that runs out of chunks waits until the stage's
`done` counter reaches the chunk count. So:
  - no thread ever waits for another thread to *arrive*, only for claimed work to finish: if the
    runtime runs both iterations of the prange on one thread one after the other, the first one
    simply does all the work (no deadlock), and a preempted thread's share is taken by the other;
  - the work of every chunk is written by one thread and read after the `done` counter says so
    (sequentially consistent atomics order the plain loads and stores around them).
Every op reproduces its op-by-op twin (`kernels.ops`, `kernels.qmatmul`, `kernels.quant`) in the
same float order, so the fused step gives the readable path's logits up to summation order.

The quantized matmul helpers are compiled per (weight encoding, instruction set) like
`qmatmul._mul_r8_simd`, and the step per combination of the encodings of its five weight slots.
"""
from __future__ import annotations

import functools
import math
import types as pytypes
from typing import Callable

import numba
import numpy as np
from numba import njit, prange

from .isa import AVX2, VNNI, specialize
from .qmatmul import TILE, _unpack_u4, _unpack_u8, q6_groups
from .quant import Q6, QK, R, U4, _quantize_row
from . import simd
from .simd import (atomic_add_i64, atomic_load_i64, atomic_xchg_i64, bcast8_i8x64, cpu_relax, cycles, f16_to_f32,
                   f32_to_f16, fma_f32, load_f32x16, load_pairs_f32x16, mul_f32, splat_f32, store_f32x16,
                   store_pair_sums, to_f32, zero_f32, zero_i32)

SYNC = 16          # int64 slots per stage in the sync array: claim counter at 0, done counter at 8
RESCUE_CYCLES = 200_000  # a wait this long (~60 µs) means a preempted sibling: take over its chunks
GPC = 4            # 8-row groups per chunk of a matmul stage (gate/up: exactly one 32-column block)
GPC_OUT = 16       # groups per chunk of the output projection (large vocabularies)
STAGES_PER_LAYER = 8


# --- claiming, waiting, rescuing ---------------------------------------------------------------
@njit(inline="always")
def _next(sync, flags, st, n, epoch, rescue, tl):
    """The next chunk of stage `st` (n chunks) for this thread, or -1 once all n are done.
    Chunks are claimed from the stage's counter; when none is left the thread waits for the
    `done` counter. If that takes longer than `rescue` cycles (rescue > 0), the sibling holding a
    chunk has probably been preempted, and the waiting thread runs the unfinished chunks itself:
    every chunk is idempotent (it stores the same values from inputs nobody writes any more)."""
    c = atomic_add_i64(sync, st * SYNC, 1)
    if c < n:
        tl[2] += 1
        return c
    t0 = cycles()
    if tl[0] != st + 1:                       # first wait in this stage: start its clock
        tl[0], tl[1] = st + 1, t0
    fo = st * flags.shape[1]
    while atomic_load_i64(sync, st * SYNC + 8) < n:
        if rescue > 0 and cycles() - tl[1] > rescue:
            for i in range(n):
                if atomic_load_i64(flags, fo + i) != epoch:
                    tl[3] += 1
                    tl[4] += cycles() - t0
                    return i
        cpu_relax()
    tl[4] += cycles() - t0
    return -1


@njit(inline="always")
def _mark(sync, flags, st, c, epoch):
    """Chunk c of stage st is done (counted once, whoever ran it)."""
    if atomic_xchg_i64(flags, st * flags.shape[1] + c, epoch) != epoch:
        atomic_add_i64(sync, st * SYNC + 8, 1)


# --- row ops (the same float expressions as kernels.ops) ---------------------------------------
@njit(inline="always")
def _rms_norm_row(x, w, eps, out):
    ss = 0.0
    for j in range(x.shape[0]):
        ss += np.float64(x[j]) * x[j]
    inv = np.float32(1.0 / math.sqrt(ss / x.shape[0] + eps))
    for j in range(x.shape[0]):
        out[j] = x[j] * inv * w[j]


@njit(inline="always")
def _rope_row(x, cos, sin, neox, out):
    """One head: x, out [d]; cos/sin [n_rot/2] (kernels.ops.rope for one (t, h))."""
    half = cos.shape[0]
    for j in range(2 * half, x.shape[0]):
        out[j] = x[j]
    for i in range(half):
        a_i, b_i = (i, i + half) if neox else (2 * i, 2 * i + 1)
        a, b = x[a_i], x[b_i]
        out[a_i] = a * cos[i] - b * sin[i]
        out[b_i] = a * sin[i] + b * cos[i]


# --- r8 x Q8_0 on a range of 8-row groups (qmatmul._mul_r8_simd's body, serial) ------------------
def _mm_groups(qs, d, m, xq, xd, xs, g0, g1, y, acc):
    """y[t, g*8 + r] for groups g0 <= g < g1 and all rows t of xq. Globals bound per build:
    unpack, dot_u8s8, BLOCK_BYTES. acc: float32 scratch [TILE * 16]."""
    T, k = xq.shape[0], xq.shape[1]
    nb, ny = k // QK, y.shape[1]
    if T == 1:                                   # decode: the accumulator stays in a register
        for g in range(g0, g1):
            a = zero_f32()
            for b in range(nb):
                c0, c1, c2, c3 = unpack(qs, g * qs.shape[1] + b * BLOCK_BYTES)
                dw = load_pairs_f32x16(d, g * d.shape[1] + b * R)
                mw = load_pairs_f32x16(m, g * m.shape[1] + b * R)
                xo = b * QK
                dot = dot_u8s8(zero_i32(), c0, bcast8_i8x64(xq, xo))
                dot = dot_u8s8(dot, c1, bcast8_i8x64(xq, xo + 8))
                dot = dot_u8s8(dot, c2, bcast8_i8x64(xq, xo + 16))
                dot = dot_u8s8(dot, c3, bcast8_i8x64(xq, xo + 24))
                a = fma_f32(mw, splat_f32(xs[0, b]), a)
                a = fma_f32(to_f32(dot), mul_f32(dw, splat_f32(xd[0, b])), a)
            store_pair_sums(y, g * R, a)
        return
    T4 = T - T % 4
    g2 = g0 + (g1 - g0) // 2 * 2
    for g in range(g0, g2, 2):                  # prefill: 2 groups x 4 rows held in registers
        for t0 in range(0, T4, 4):
            a00, a01, a02, a03 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
            a10, a11, a12, a13 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
            for b in range(nb):
                p0, p1, p2, p3 = unpack(qs, g * qs.shape[1] + b * BLOCK_BYTES)
                q0, q1, q2, q3 = unpack(qs, (g + 1) * qs.shape[1] + b * BLOCK_BYTES)
                dw0 = load_pairs_f32x16(d, g * d.shape[1] + b * R)
                mw0 = load_pairs_f32x16(m, g * m.shape[1] + b * R)
                dw1 = load_pairs_f32x16(d, (g + 1) * d.shape[1] + b * R)
                mw1 = load_pairs_f32x16(m, (g + 1) * m.shape[1] + b * R)
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
    for g in range(g0, g1):                     # what is left: odd group, last T % 4 rows
        for t0 in range(T4 if g < g2 else 0, T, TILE):
            nt = min(TILE, T - t0)
            for i in range(nt):
                store_f32x16(acc, i * 16, zero_f32())
            for b in range(nb):
                c0, c1, c2, c3 = unpack(qs, g * qs.shape[1] + b * BLOCK_BYTES)
                dw = load_pairs_f32x16(d, g * d.shape[1] + b * R)
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


def _tile_step(xq, xd, xs, t, k, b, p0, p1, p2, p3, q0, q1, q2, q3, dw0, mw0, dw1, mw1, a0, a1):
    """One block of one activation row against two groups (each broadcast feeds both)."""
    xo = t * k + b * QK
    x0, x1, x2, x3 = bcast8_i8x64(xq, xo), bcast8_i8x64(xq, xo + 8), bcast8_i8x64(xq, xo + 16), bcast8_i8x64(xq, xo + 24)
    e0 = dot_u8s8(dot_u8s8(dot_u8s8(dot_u8s8(zero_i32(), p0, x0), p1, x1), p2, x2), p3, x3)
    e1 = dot_u8s8(dot_u8s8(dot_u8s8(dot_u8s8(zero_i32(), q0, x0), q1, x1), q2, x2), q3, x3)
    sx, dx = splat_f32(xs[t, b]), splat_f32(xd[t, b])
    a0 = fma_f32(to_f32(e0), mul_f32(dw0, dx), fma_f32(mw0, sx, a0))
    a1 = fma_f32(to_f32(e1), mul_f32(dw1, dx), fma_f32(mw1, sx, a1))
    return a0, a1


_DOT = {VNNI: simd.dot_u8s8_vnni, AVX2: simd.dot_u8s8_avx2_wide}


@functools.cache
def _tile_steps(isa: str) -> Callable:
    fn = pytypes.FunctionType(_tile_step.__code__, {**_tile_step.__globals__, "dot_u8s8": _DOT[isa]},
                              f"_tile_step_{isa}")
    fn.__qualname__, fn.__module__ = fn.__name__, _tile_step.__module__
    return njit(inline="always", cache=True, fastmath=True)(fn)


@functools.cache
def mm_groups(kind: str, isa: str) -> Callable:
    """The serial r8 matmul over a group range for weights of encoding `kind` on `isa`.
    AVX2 always takes the non-saturating dot product: a slot may hold Q8_0 (u up to 255).
    Q6 (Q6_K) slots take qmatmul's q6 kernel (same contract; m and acc unused)."""
    if kind == Q6:
        return q6_groups(isa)
    tile = _tile_steps(isa)
    return specialize(_mm_groups, f"{kind}_{isa}", parallel=False, dot_u8s8=_DOT[isa], _tile_step=tile,
                      unpack=_unpack_u4 if kind == U4 else _unpack_u8,
                      BLOCK_BYTES=QK * R // 2 if kind == U4 else QK * R)


# --- the step -----------------------------------------------------------------------------------
def _llama_step(x, r0, pos0, cos, sin, neox, eps, scale, window, stats,
                attn_norm, ffn_norm, out_norm,
                qkv_qs, qkv_d, qkv_m, o_qs, o_d, o_m, gate_qs, gate_d, gate_m,
                up_qs, up_d, up_m, down_qs, down_d, down_m, out_qs, out_d, out_m,
                kc, vc, H, KV, dk, dv,
                hb, hq, hd, hs, qkv, att, aq, ad, as_, proj, gbuf, ubuf, ff, fq, fd, fs, oq, od, os_, logits,
                sync, flags, epoch, rescue, nthreads):
    """stats int64 [threads, 4] accumulates per thread: chunks claimed, chunks rescued, cycles spent
    waiting, cycles in the region. x float32 [NX, T, dim]: x[0] holds the embeddings of the T new tokens; the residual stream
    after attention / FFN of layer l goes to x[(2l+1) % NX] / x[(2l+2) % NX]. Every scratch buffer
    has a leading axis too: one slice per layer and use (so that each is written once per step
    and a rescued chunk re-stores the same values), or a single slice reused by every layer (large
    T, rescue = 0). Rows r0.. of the final normed stream go to hb[(2L) % NH, r0:] and, when out_qs
    has groups, through the output projection into logits [T - r0, vocab padded].
    Globals bound per build: MM_QKV, MM_O, MM_FF (gate and up), MM_DOWN, MM_OUT."""
    NX, T, dim = x.shape
    NH, NL, NP = hb.shape[0], qkv.shape[0], proj.shape[0]
    L, ffn = attn_norm.shape[0], gbuf.shape[2]
    koff, voff = H * dk, H * dk + KV * dk
    G_qkv, G_o, G_ff, G_dn, G_out = qkv_qs.shape[1], o_qs.shape[1], gate_qs.shape[1], down_qs.shape[1], out_qs.shape[0]
    n_qkv, n_o, n_ff, n_dn = (G_qkv + GPC - 1) // GPC, (G_o + GPC - 1) // GPC, ffn // QK, (G_dn + GPC - 1) // GPC
    n_out = (G_out + GPC_OUT - 1) // GPC_OUT
    To = T - r0
    sync[:] = 0
    for tid in prange(nthreads):
        acc = np.empty(TILE * 16, dtype=np.float32)
        qrot = np.empty(dk, dtype=np.float32)
        oacc = np.empty(dv, dtype=np.float32)
        tl = np.zeros(6, dtype=np.int64)     # stage of the wait clock, its start; chunks, rescues, wait cycles
        tl[5] = cycles()
        st = 0
        for l in range(L):
            xi, xa, xf = (2 * l) % NX, (2 * l + 1) % NX, (2 * l + 2) % NX
            ha, hf, li, pa, pf = (2 * l) % NH, (2 * l + 1) % NH, l % NL, (2 * l) % NP, (2 * l + 1) % NP
            # 1. attention norm + Q8_0 of each row
            while True:
                c = _next(sync, flags, st, T, epoch, rescue, tl)
                if c < 0:
                    break
                _rms_norm_row(x[xi, c], attn_norm[l], eps, hb[ha, c])
                _quantize_row(hb[ha, c], hq[ha, c], hd[ha, c], hs[ha, c])
                _mark(sync, flags, st, c, epoch)
            st += 1
            # 2. Q, K, V (one stacked matrix)
            while True:
                c = _next(sync, flags, st, n_qkv, epoch, rescue, tl)
                if c < 0:
                    break
                MM_QKV(qkv_qs[l], qkv_d[l], qkv_m[l], hq[ha], hd[ha], hs[ha], c * GPC, min(G_qkv, c * GPC + GPC),
                       qkv[li], acc)
                _mark(sync, flags, st, c, epoch)
            st += 1
            # 3. rope K, store K and V in the float16 cache
            while True:
                c = _next(sync, flags, st, T * KV, epoch, rescue, tl)
                if c < 0:
                    break
                t, g = c // KV, c % KV
                p = pos0 + t
                _rope_row(qkv[li, t, koff + g * dk:koff + (g + 1) * dk], cos[t], sin[t], neox, qrot)
                for j in range(dk):
                    kc[l, p, g, j] = f32_to_f16(qrot[j])
                for j in range(dv):
                    vc[l, p, g, j] = f32_to_f16(qkv[li, t, voff + g * dv + j])
                _mark(sync, flags, st, c, epoch)
            st += 1
            # 4. attention per (token, head) with online softmax; Q8_0 of its output blocks
            while True:
                c = _next(sync, flags, st, T * H, epoch, rescue, tl)
                if c < 0:
                    break
                t, h = c // H, c % H
                g, qpos = h // (H // KV), pos0 + t
                _rope_row(qkv[li, t, h * dk:(h + 1) * dk], cos[t], sin[t], neox, qrot)
                lo = max(0, qpos - window + 1) if window > 0 else 0
                oacc[:] = 0.0
                mx, den = np.float32(-np.inf), np.float32(0.0)
                for s in range(lo, qpos + 1):
                    score = np.float32(0.0)
                    for j in range(dk):
                        score += qrot[j] * f16_to_f32(kc[l, s, g, j])
                    score *= scale
                    if score > mx:
                        cf = np.exp(mx - score)
                        den *= cf
                        for j in range(dv):
                            oacc[j] *= cf
                        mx = score
                    pr = np.exp(score - mx)
                    den += pr
                    for j in range(dv):
                        oacc[j] += pr * f16_to_f32(vc[l, s, g, j])
                for j in range(dv):
                    att[li, t, h * dv + j] = oacc[j] / den
                for b in range(h * dv // QK, (h + 1) * dv // QK):
                    _quantize_row(att[li, t, b * QK:(b + 1) * QK], aq[li, t, b * QK:(b + 1) * QK],
                                  ad[li, t, b:b + 1], as_[li, t, b:b + 1])
                _mark(sync, flags, st, c, epoch)
            st += 1
            # 5. output projection + residual
            while True:
                c = _next(sync, flags, st, n_o, epoch, rescue, tl)
                if c < 0:
                    break
                g0, g1 = c * GPC, min(G_o, c * GPC + GPC)
                MM_O(o_qs[l], o_d[l], o_m[l], aq[li], ad[li], as_[li], g0, g1, proj[pa], acc)
                for t in range(T):
                    for j in range(g0 * R, min(g1 * R, dim)):
                        x[xa, t, j] = x[xi, t, j] + proj[pa, t, j]
                _mark(sync, flags, st, c, epoch)
            st += 1
            # 6. FFN norm + Q8_0
            while True:
                c = _next(sync, flags, st, T, epoch, rescue, tl)
                if c < 0:
                    break
                _rms_norm_row(x[xa, c], ffn_norm[l], eps, hb[hf, c])
                _quantize_row(hb[hf, c], hq[hf, c], hd[hf, c], hs[hf, c])
                _mark(sync, flags, st, c, epoch)
            st += 1
            # 7. gate and up, SwiGLU, Q8_0: one 32-column block (4 groups) per chunk
            while True:
                c = _next(sync, flags, st, n_ff, epoch, rescue, tl)
                if c < 0:
                    break
                g0, g1 = c * 4, c * 4 + 4
                MM_FF(gate_qs[l], gate_d[l], gate_m[l], hq[hf], hd[hf], hs[hf], g0, g1, gbuf[li], acc)
                MM_FF(up_qs[l], up_d[l], up_m[l], hq[hf], hd[hf], hs[hf], g0, g1, ubuf[li], acc)
                for t in range(T):
                    for j in range(c * QK, c * QK + QK):
                        gv = gbuf[li, t, j]
                        ff[li, t, j] = gv / (np.float32(1.0) + np.exp(-gv)) * ubuf[li, t, j]
                    _quantize_row(ff[li, t, c * QK:c * QK + QK], fq[li, t, c * QK:c * QK + QK],
                                  fd[li, t, c:c + 1], fs[li, t, c:c + 1])
                _mark(sync, flags, st, c, epoch)
            st += 1
            # 8. down projection + residual
            while True:
                c = _next(sync, flags, st, n_dn, epoch, rescue, tl)
                if c < 0:
                    break
                g0, g1 = c * GPC, min(G_dn, c * GPC + GPC)
                MM_DOWN(down_qs[l], down_d[l], down_m[l], fq[li], fd[li], fs[li], g0, g1, proj[pf], acc)
                for t in range(T):
                    for j in range(g0 * R, min(g1 * R, dim)):
                        x[xf, t, j] = x[xa, t, j] + proj[pf, t, j]
                _mark(sync, flags, st, c, epoch)
            st += 1
        # output norm (+ Q8_0) of the rows that need logits
        xo, ho = (2 * L) % NX, (2 * L) % NH
        while True:
            c = _next(sync, flags, st, To, epoch, rescue, tl)
            if c < 0:
                break
            _rms_norm_row(x[xo, r0 + c], out_norm, eps, hb[ho, r0 + c])
            _quantize_row(hb[ho, r0 + c], oq[c], od[c], os_[c])
            _mark(sync, flags, st, c, epoch)
        st += 1
        # output projection
        while True:
            c = _next(sync, flags, st, n_out, epoch, rescue, tl)
            if c < 0:
                break
            MM_OUT(out_qs, out_d, out_m, oq, od, os_, c * GPC_OUT, min(G_out, c * GPC_OUT + GPC_OUT), logits, acc)
            _mark(sync, flags, st, c, epoch)
        if tid < stats.shape[0]:                 # per thread: chunks claimed, chunks rescued, wait and busy cycles
            stats[tid, 0] += tl[2]
            stats[tid, 1] += tl[3]
            stats[tid, 2] += tl[4]
            stats[tid, 3] += cycles() - tl[5]


def n_stages(n_layers: int) -> int:
    return n_layers * STAGES_PER_LAYER + 2


def max_chunks(T: int, H: int, KV: int, dim: int, qkv_rows: int, ffn: int, vocab_rows: int) -> int:
    """The most chunks any stage of a step has (the width of the flags array)."""
    cd = lambda a, b: -(-a // b)  # noqa: E731
    return max(T * H, T * KV, T, cd(qkv_rows, GPC * R), cd(dim, GPC * R), ffn // QK, cd(vocab_rows, GPC_OUT * R), 1)


def sync_slots(n_layers: int) -> int:
    return n_stages(n_layers) * SYNC


@functools.cache
def llama_step(isa: str, qkv: str, o: str, ff: str, down: str, out: str) -> Callable:
    """The fused step for weight encodings (U4/U8) of the QKV, O, gate+up, down and output slots."""
    return specialize(_llama_step, f"{isa}_{qkv}{o}{ff}{down}{out}",
                      MM_QKV=mm_groups(qkv, isa), MM_O=mm_groups(o, isa), MM_FF=mm_groups(ff, isa),
                      MM_DOWN=mm_groups(down, isa), MM_OUT=mm_groups(out, isa))


def n_threads() -> int:
    return numba.get_num_threads()
