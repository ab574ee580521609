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
`qmatmul._mm_r8_groups`, and the step per combination of the encodings of its five weight slots.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import numba
import numpy as np
from numba import njit, prange

from .isa import specialize
from .ops import ATT_TILE, attend_rows, d8_groups
from .qmatmul import bind_inline, q6_groups, r8_groups
from .quant import Q6, QK, R, _quantize_row
from .simd import atomic_add_i64, atomic_load_i64, atomic_xchg_i64, cpu_relax, cycles, f32_to_f16

LINE = 8           # int64 per cache line: every counter sits on its own line
RESCUE_CYCLES = 200_000  # a wait this long (~60 µs) means a preempted sibling: take over its chunks
GPC = 4            # 8-row groups per chunk of a matmul stage (gate/up: exactly one 32-column block)
GPC_OUT = 16       # groups per chunk of the output projection (large vocabularies)
STAGES_PER_LAYER = 8


# --- claiming, waiting, rescuing ---------------------------------------------------------------
# Each stage's chunks are split into one contiguous share per thread. A thread claims the chunks
# of its own share in order from its own counter (an uncontended atomic on a line it owns, and
# one forward stream through the weights), then steals from the other shares' counters, and
# counts what it finished on its own `done` line. One shared counter for claims and one for done
# chunks made every chunk move two cache lines between the cores (~0.1 µs each, for chunks of
# 1-3 µs of work) and interleaved the threads' weight streams. `_next` and `_mark` are called,
# not inlined: ten inlined copies of each made the step slow to compile.
@njit(inline="always")
def _claim(sync, base, u, n, P):
    """The next unclaimed chunk of thread u's share of a stage with n chunks, or -1."""
    lo, hi = u * n // P, (u + 1) * n // P
    if lo >= hi or atomic_load_i64(sync, base + 2 * u * LINE) >= hi - lo:
        return -1
    c = lo + atomic_add_i64(sync, base + 2 * u * LINE, 1)
    return c if c < hi else -1


@njit(inline="always")
def _done(sync, base, P):
    s = 0
    for u in range(P):
        s += atomic_load_i64(sync, base + (2 * u + 1) * LINE)
    return s


@njit(cache=True, nogil=True)
def _next(sync, flags, st, n, epoch, rescue, tl, tid, P):
    """The next chunk of stage `st` (n chunks) for thread tid of P, or -1 once all n are done.
    The thread claims from its own share, then from the others'; when none is left it waits
    for the `done` counters. If that takes longer than `rescue` cycles (rescue > 0), the sibling
    holding a chunk has probably been preempted, and the waiting thread runs the unfinished
    chunks itself: every chunk is idempotent (it stores the same values from inputs nobody writes
    any more)."""
    base = st * 2 * P * LINE
    for v in range(P):
        c = _claim(sync, base, (tid + v) % P, n, P)
        if c >= 0:
            tl[2] += 1
            return c
    t0 = cycles()
    if tl[0] != st + 1:                       # first wait in this stage: start its clock
        tl[0], tl[1] = st + 1, t0
    fo = st * flags.shape[1]
    while _done(sync, base, P) < n:
        if rescue > 0 and cycles() - tl[1] > rescue:
            for i in range(n):
                if atomic_load_i64(flags, fo + i) != epoch:
                    tl[3] += 1
                    tl[4] += cycles() - t0
                    return i
        cpu_relax()
    tl[4] += cycles() - t0
    return -1


@njit(cache=True, nogil=True)
def _mark(sync, flags, st, c, epoch, tid, P):
    """Chunk c of stage st is done (counted once, on the line of whoever ran it)."""
    if atomic_xchg_i64(flags, st * flags.shape[1] + c, epoch) != epoch:
        atomic_add_i64(sync, (st * 2 * P + 2 * tid + 1) * LINE, 1)


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


Encoding = tuple[str, int]   # (R8Weight.kind, R8Weight.zero), or (D8, 0) for a float d8 matrix
D8 = "d8"                    # float32 / float16 weights in kernels.ops's d8 layout (no scales)


def _mm_quantized(qs, d, m, xf, xq, xd, xs, g0, g1, y):
    """A slot's matmul on the Q8_0 form of its input (r8 and q6 weights). Global bound: MM."""
    MM(qs, d, m, xq, xd, xs, g0, g1, y)


def _mm_dense(w, d, m, xf, xq, xd, xs, g0, g1, y):
    """A slot's matmul on the float form of its input (d8 weights; d and m are empty)."""
    d8_groups(w, xf, g0, g1, y)


@functools.cache
def mm_groups(enc: Encoding, isa: str) -> Callable:
    """The serial matmul over a group range for a fused-step slot of encoding `enc` on `isa`,
    taking the slot's input both as float32 and as Q8_0 blocks and reading the form it needs.
    AVX2 always takes the non-saturating dot product: a slot may hold Q8_0 (u up to 255)."""
    kind, zero = enc
    if kind == D8:
        return njit(inline="always", cache=True, fastmath=True)(_mm_dense)
    mm = q6_groups(isa) if kind == Q6 else r8_groups(kind, isa, True, zero)
    return bind_inline(_mm_quantized, f"{kind}{zero or ''}_{isa}", MM=mm)


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
    S = kc.shape[1]                      # cache rows
    NH, NL, NP = hb.shape[0], qkv.shape[0], proj.shape[0]
    L, ffn = attn_norm.shape[0], gbuf.shape[2]
    koff, voff = H * dk, H * dk + KV * dk
    G_qkv, G_o, G_dn, G_out = qkv_qs.shape[1], o_qs.shape[1], down_qs.shape[1], out_qs.shape[0]
    n_qkv, n_o, n_ff, n_dn = (G_qkv + GPC - 1) // GPC, (G_o + GPC - 1) // GPC, ffn // QK, (G_dn + GPC - 1) // GPC
    n_out = (G_out + GPC_OUT - 1) // GPC_OUT
    To = T - r0
    sync[:] = 0
    for tid in prange(nthreads):
        qrot = np.empty(dk, dtype=np.float32)
        oacc = np.empty(dv, dtype=np.float32)
        scores = np.empty(ATT_TILE, dtype=np.float32)
        tl = np.zeros(6, dtype=np.int64)     # stage of the wait clock, its start; chunks, rescues, wait cycles
        tl[5] = cycles()
        st = 0
        for l in range(L):
            xi, xa, xf = (2 * l) % NX, (2 * l + 1) % NX, (2 * l + 2) % NX
            ha, hf, li, pa, pf = (2 * l) % NH, (2 * l + 1) % NH, l % NL, (2 * l) % NP, (2 * l + 1) % NP
            # 1. attention norm + Q8_0 of each row
            while True:
                c = _next(sync, flags, st, T, epoch, rescue, tl, tid, nthreads)
                if c < 0:
                    break
                _rms_norm_row(x[xi, c], attn_norm[l], eps, hb[ha, c])
                _quantize_row(hb[ha, c], hq[ha, c], hd[ha, c], hs[ha, c])
                _mark(sync, flags, st, c, epoch, tid, nthreads)
            st += 1
            # 2. Q, K, V (one stacked matrix)
            while True:
                c = _next(sync, flags, st, n_qkv, epoch, rescue, tl, tid, nthreads)
                if c < 0:
                    break
                MM_QKV(qkv_qs[l], qkv_d[l], qkv_m[l], hb[ha], hq[ha], hd[ha], hs[ha], c * GPC, min(G_qkv, c * GPC + GPC),
                       qkv[li])
                _mark(sync, flags, st, c, epoch, tid, nthreads)
            st += 1
            # 3. rope K, store K and V in the float16 cache
            while True:
                c = _next(sync, flags, st, T * KV, epoch, rescue, tl, tid, nthreads)
                if c < 0:
                    break
                t, g = c // KV, c % KV
                p = pos0 + t
                _rope_row(qkv[li, t, koff + g * dk:koff + (g + 1) * dk], cos[t], sin[t], neox, qrot)
                for j in range(dk):
                    kc[l, p, g, j] = f32_to_f16(qrot[j])
                for j in range(dv):
                    vc[l, p, g, j] = f32_to_f16(qkv[li, t, voff + g * dv + j])
                _mark(sync, flags, st, c, epoch, tid, nthreads)
            st += 1
            # 4. attention per (token, head) with online softmax; Q8_0 of its output blocks
            while True:
                c = _next(sync, flags, st, T * H, epoch, rescue, tl, tid, nthreads)
                if c < 0:
                    break
                t, h = c // H, c % H
                g, qpos = h // (H // KV), pos0 + t
                _rope_row(qkv[li, t, h * dk:(h + 1) * dk], cos[t], sin[t], neox, qrot)
                lo = max(0, qpos - window + 1) if window > 0 else 0
                attend_rows(qrot, kc, vc, (l * S * KV + g) * dk, KV * dk, (l * S * KV + g) * dv, KV * dv, lo, qpos + 1,
                            scale, scores, oacc)
                # accumulated privately, stored whole: a rescued chunk may run on both threads at once
                att[li, t, h * dv:(h + 1) * dv] = oacc
                for b in range(h * dv // QK, (h + 1) * dv // QK):
                    _quantize_row(att[li, t, b * QK:(b + 1) * QK], aq[li, t, b * QK:(b + 1) * QK],
                                  ad[li, t, b:b + 1], as_[li, t, b:b + 1])
                _mark(sync, flags, st, c, epoch, tid, nthreads)
            st += 1
            # 5. output projection + residual
            while True:
                c = _next(sync, flags, st, n_o, epoch, rescue, tl, tid, nthreads)
                if c < 0:
                    break
                g0, g1 = c * GPC, min(G_o, c * GPC + GPC)
                MM_O(o_qs[l], o_d[l], o_m[l], att[li], aq[li], ad[li], as_[li], g0, g1, proj[pa])
                for t in range(T):
                    for j in range(g0 * R, min(g1 * R, dim)):
                        x[xa, t, j] = x[xi, t, j] + proj[pa, t, j]
                _mark(sync, flags, st, c, epoch, tid, nthreads)
            st += 1
            # 6. FFN norm + Q8_0
            while True:
                c = _next(sync, flags, st, T, epoch, rescue, tl, tid, nthreads)
                if c < 0:
                    break
                _rms_norm_row(x[xa, c], ffn_norm[l], eps, hb[hf, c])
                _quantize_row(hb[hf, c], hq[hf, c], hd[hf, c], hs[hf, c])
                _mark(sync, flags, st, c, epoch, tid, nthreads)
            st += 1
            # 7. gate and up, SwiGLU, Q8_0: one 32-column block (4 groups) per chunk
            while True:
                c = _next(sync, flags, st, n_ff, epoch, rescue, tl, tid, nthreads)
                if c < 0:
                    break
                g0, g1 = c * 4, c * 4 + 4
                MM_FF(gate_qs[l], gate_d[l], gate_m[l], hb[hf], hq[hf], hd[hf], hs[hf], g0, g1, gbuf[li])
                MM_FF(up_qs[l], up_d[l], up_m[l], hb[hf], hq[hf], hd[hf], hs[hf], g0, g1, ubuf[li])
                for t in range(T):
                    for j in range(c * QK, c * QK + QK):
                        gv = gbuf[li, t, j]
                        ff[li, t, j] = gv / (np.float32(1.0) + np.exp(-gv)) * ubuf[li, t, j]
                    _quantize_row(ff[li, t, c * QK:c * QK + QK], fq[li, t, c * QK:c * QK + QK],
                                  fd[li, t, c:c + 1], fs[li, t, c:c + 1])
                _mark(sync, flags, st, c, epoch, tid, nthreads)
            st += 1
            # 8. down projection + residual
            while True:
                c = _next(sync, flags, st, n_dn, epoch, rescue, tl, tid, nthreads)
                if c < 0:
                    break
                g0, g1 = c * GPC, min(G_dn, c * GPC + GPC)
                MM_DOWN(down_qs[l], down_d[l], down_m[l], ff[li], fq[li], fd[li], fs[li], g0, g1, proj[pf])
                for t in range(T):
                    for j in range(g0 * R, min(g1 * R, dim)):
                        x[xf, t, j] = x[xa, t, j] + proj[pf, t, j]
                _mark(sync, flags, st, c, epoch, tid, nthreads)
            st += 1
        # output norm (+ Q8_0) of the rows that need logits
        xo, ho = (2 * L) % NX, (2 * L) % NH
        while True:
            c = _next(sync, flags, st, To, epoch, rescue, tl, tid, nthreads)
            if c < 0:
                break
            _rms_norm_row(x[xo, r0 + c], out_norm, eps, hb[ho, r0 + c])
            _quantize_row(hb[ho, r0 + c], oq[c], od[c], os_[c])
            _mark(sync, flags, st, c, epoch, tid, nthreads)
        st += 1
        # output projection
        while True:
            c = _next(sync, flags, st, n_out, epoch, rescue, tl, tid, nthreads)
            if c < 0:
                break
            MM_OUT(out_qs, out_d, out_m, hb[ho, r0:], oq, od, os_, c * GPC_OUT, min(G_out, c * GPC_OUT + GPC_OUT), logits)
            _mark(sync, flags, st, c, epoch, tid, nthreads)
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


def sync_slots(n_layers: int, nthreads: int) -> int:
    """int64 slots of the sync array: per stage and thread, a claim line and a done line."""
    return n_stages(n_layers) * 2 * nthreads * LINE


@functools.cache
def llama_step(isa: str, qkv: Encoding, o: Encoding, ff: Encoding, down: Encoding, out: Encoding) -> Callable:
    """The fused step for the weight encodings of the QKV, O, gate+up, down and output slots."""
    name = "".join(f"{k}{z or ''}" for k, z in (qkv, o, ff, down, out))
    return specialize(_llama_step, f"{isa}_{name}",
                      MM_QKV=mm_groups(qkv, isa), MM_O=mm_groups(o, isa), MM_FF=mm_groups(ff, isa),
                      MM_DOWN=mm_groups(down, isa), MM_OUT=mm_groups(out, isa))


def n_threads() -> int:
    return numba.get_num_threads()
