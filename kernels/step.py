"""The compiled step: a whole forward step of a llama-shaped model in ONE compiled call with ONE
parallel region (localllm.backend.step lays the weights out for it and calls it).

Calling op kernels one by one costs a parallel region (fork, barrier, join) per op: ~7 per layer,
and on a shared machine each of them may wait a whole scheduler slice for a preempted thread.
Here the threads enter a single region (`prange(nthreads)`) and walk the same list of stages,
named after the lines of models/llama.py's `Llama.forward_ops` they compute (LAYER_STAGES per
layer, then HEAD_STAGES; `_stages` quotes each line beside its stage). Every stage is cut into
chunks that the threads *claim* (`_chunks`); a thread that runs out of chunks waits until the
stage's `done` counters reach the chunk count. So:
  - no thread ever waits for another thread to *arrive*, only for claimed work to finish: if the
    runtime runs both iterations of the prange on one thread one after the other, the first one
    simply does all the work (no deadlock), and a preempted thread's share is taken by the other;
  - the work of every chunk is written by one thread and read after the `done` counter says so
    (sequentially consistent atomics order the plain loads and stores around them).
Every op reproduces its op-by-op twin (`kernels.ops`, `kernels.qmatmul`, `kernels.quant`) in the
same float order, so the compiled step gives the readable forward's logits up to summation order.

The arguments come grouped in named tuples (Weights of Slots, Scratch of Rows, Hparams, Tokens,
Sync): Numba types them field by field, so one build serves every call. The quantized matmul
helpers are compiled per (weight encoding, instruction set) like `qmatmul._mm_r8_groups`, and the
step per combination of the encodings of its five weight slots.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

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
LAYER_STAGES = ("attn_norm", "attn_qkv", "rope_k", "attention", "attn_output", "ffn_norm", "ffn_gate_up", "ffn_down")
HEAD_STAGES = ("output_norm", "output")
STAGES_PER_LAYER = len(LAYER_STAGES)


# --- the arguments ------------------------------------------------------------------------------
class Slot(NamedTuple):
    """One weight slot, its matrices stacked per layer: qs [L, G, bytes] (the quants of G 8-row
    groups; for d8 the float rows), d and m [L, G, nb*8] (m [L, G, 0] when R8Weight.zero > 0: it is
    -zero * d; both empty for d8)."""
    qs: np.ndarray
    d: np.ndarray
    m: np.ndarray


class Weights(NamedTuple):
    """A model's weights, named like its GGUF tensors (per layer stacked on a leading axis)."""
    attn_norm: np.ndarray    # [L, dim]
    attn_qkv: Slot           # attn_q, attn_k and attn_v stacked by rows
    attn_output: Slot
    ffn_norm: np.ndarray     # [L, dim]
    ffn_gate: Slot
    ffn_up: Slot
    ffn_down: Slot
    output_norm: np.ndarray  # [dim]
    output: Slot             # L = 1


class Rows(NamedTuple):
    """Activations that feed a matmul: float32 rows f [U, T, k] and their Q8_0 blocks q [U, T, k]
    (int8), d and s [U, T, k/32]. U: one slice per layer and use, or one shared (see Scratch)."""
    f: np.ndarray
    q: np.ndarray
    d: np.ndarray
    s: np.ndarray


class Scratch(NamedTuple):
    """A T-token step's buffers. Each has a leading axis: one slice per layer and use (so that each
    is written once per step and a rescued chunk re-stores the same values), or a single slice
    reused by every layer (large T, rescue off)."""
    x: np.ndarray        # [NX, T, dim] the residual stream: x[0] the embeddings, after attention /
                         # FFN of layer l at x[(2l+1) % NX] / x[(2l+2) % NX]
    h: Rows              # [NH, T, dim] normed stream: attn_norm of layer l at 2l % NH, ffn_norm at (2l+1) % NH
    qkv: np.ndarray      # [NL, T, H*dk + KV*(dk+dv)] attn_qkv's product (layer l at l % NL)
    att: Rows            # [NL, T, H*dv] attention's output
    proj: np.ndarray     # [NP, T, dim] attn_output's / ffn_down's product at 2l % NP / (2l+1) % NP
    gate: np.ndarray     # [NL, T, ffn]
    up: np.ndarray       # [NL, T, ffn]
    ff: Rows             # [NL, T, ffn] swiglu(gate, up)
    out: Rows            # [1, T - r0, dim] output_norm of rows r0..
    logits: np.ndarray   # [T - r0, vocab padded to 8]


class Hparams(NamedTuple):
    n_heads: int
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    neox: bool           # rope pairs (i, i + n_rot/2), else (2i, 2i+1)
    eps: float           # rms_norm epsilon
    scale: np.float32    # attention score scale
    window: int          # sliding attention window (0: none)


class Tokens(NamedTuple):
    pos0: int            # cache position of the first of the T tokens (embedded in Scratch.x[0])
    r0: int              # first row that gets logits
    cos: np.ndarray      # [T, n_rot/2] rope angles of the T positions
    sin: np.ndarray


class Sync(NamedTuple):
    counters: np.ndarray  # int64 [sync_slots]: per stage and thread a claim line and a done line
    flags: np.ndarray     # int64 [n_stages, max_chunks]: the epoch of the step that finished each chunk
    epoch: int            # this step's number
    rescue: int           # cycles of waiting before a thread runs unfinished chunks itself (0: never)
    threads: int
    stats: np.ndarray     # int64 [>= 1, 4] per thread, accumulated: chunks claimed, chunks rescued,
                          # cycles spent waiting, cycles in the region


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


STAGE = 6    # the slot of a thread's tl array that holds the stage it is in


@njit(nogil=True)
def _chunks(sync, tl, tid, n):
    """The chunks of the thread's current stage (n in all) that it runs, each marked done when the
    next is asked for; once all n are done, the thread moves on to the next stage. The one loop
    every stage of the step runs."""
    st = tl[STAGE]
    while True:
        c = _next(sync.counters, sync.flags, st, n, sync.epoch, sync.rescue, tl, tid, sync.threads)
        if c < 0:
            break
        yield c
        _mark(sync.counters, sync.flags, st, c, sync.epoch, tid, sync.threads)
    tl[STAGE] = st + 1


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
def _norm_q8(x, w, eps, out, u, t):
    """out[u, t] = rms_norm(x) * w, with its Q8_0 blocks for the matmul that reads it."""
    _rms_norm_row(x, w, eps, out.f[u, t])
    _quantize_row(out.f[u, t], out.q[u, t], out.d[u, t], out.s[u, t])


@njit(inline="always")
def _q8_block(a, u, t, b):
    """The Q8_0 form of block b of a.f[u, t]."""
    _quantize_row(a.f[u, t, b * QK:(b + 1) * QK], a.q[u, t, b * QK:(b + 1) * QK], a.d[u, t, b:b + 1],
                  a.s[u, t, b:b + 1])


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


@njit(inline="always")
def _add_columns(x, a, b, p, j0, j1):
    """x[b, :, j0:j1] = x[a, :, j0:j1] + p[:, j0:j1] (a residual add over the columns of a chunk)."""
    for t in range(x.shape[1]):
        for j in range(j0, j1):
            x[b, t, j] = x[a, t, j] + p[t, j]


Encoding = tuple[str, int]   # (R8Weight.kind, R8Weight.zero), or (D8, 0) for a float d8 matrix
D8 = "d8"                    # float32 / float16 weights in kernels.ops's d8 layout (no scales)


def _mm_quantized(w, l, x, u, g0, g1, y):
    """y[:, g0*8:g1*8] = x[u] w[l]^T on the Q8_0 form of x[u] (r8 and q6 weights). Global bound: MM."""
    MM(w.qs[l], w.d[l], w.m[l], x.q[u], x.d[u], x.s[u], g0, g1, y)


def _mm_dense(w, l, x, u, g0, g1, y):
    """y[:, g0*8:g1*8] = x[u] w[l]^T on the float form of x[u] (d8 weights)."""
    d8_groups(w.qs[l], x.f[u], g0, g1, y)


@functools.cache
def mm_groups(enc: Encoding, isa: str) -> Callable:
    """The serial matmul over a group range for a step slot of encoding `enc` on `isa`: (Slot,
    layer, Rows, use, g0, g1, y), reading the form of the input (float or Q8_0) it needs.
    AVX2 always takes the non-saturating dot product: a slot may hold Q8_0 (u up to 255)."""
    kind, zero = enc
    if kind == D8:
        return njit(inline="always", cache=True, fastmath=True)(_mm_dense)
    mm = q6_groups(isa) if kind == Q6 else r8_groups(kind, isa, True, zero)
    return bind_inline(_mm_quantized, f"{kind}{zero or ''}_{isa}", MM=mm)


# --- the step -----------------------------------------------------------------------------------
def _llama_step(attn_norm, attn_qkv, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down, output_norm, output,
                hp, tok, kc, vc, x, h, qkv, att, proj, gate, up, ff, out, logits, sync):
    """One forward step of T tokens: the fields of Weights, then hp Hparams, tok Tokens, the
    float16 cache kc, vc [L, S, KV, dk / dv] (their K and V go in at tok.pos0), the fields of
    Scratch (the logits of rows tok.r0.. land in logits), sync Sync (its counters zeroed).
    Weights and Scratch come unpacked, and the stages run in a function of their own, because
    Numba's parallel region takes named tuples one level deep only, and loses stores made in its
    own body through a named tuple's field (Numba 0.68). tid is cast: typed once as int64 and once
    as uint64 by the parfor passes, it made them compile STAGES twice. Global bound per build: STAGES."""
    for tid in prange(sync.threads):
        STAGES(attn_norm, attn_qkv, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down, output_norm, output,
               hp, tok, kc, vc, x, h, qkv, att, proj, gate, up, ff, out, logits, sync, np.int64(tid))


def _stages(attn_norm, attn_qkv, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down, output_norm, output,
            hp, tok, kc, vc, x, h, qkv, att, proj, gate, up, ff, out, logits, sync, tid):
    """Thread tid's walk through the step's stages (_llama_step's arguments). Each stage is one
    `for c in _chunks(...)` loop, beside the line of Llama.forward_ops it computes. Globals bound per
    build: MM_QKV, MM_O, MM_FF (gate and up), MM_DOWN, MM_OUT."""
    NX, T, dim = x.shape
    NH, NL, NP = h.f.shape[0], qkv.shape[0], proj.shape[0]
    L, ffn = attn_norm.shape[0], gate.shape[2]
    H, KV, dk, dv, eps = hp.n_heads, hp.n_kv_heads, hp.head_dim_k, hp.head_dim_v, hp.eps
    koff, voff = H * dk, H * dk + KV * dk
    G_qkv, G_o, G_dn, G_out = attn_qkv.qs.shape[1], attn_output.qs.shape[1], ffn_down.qs.shape[1], output.qs.shape[1]
    n_qkv, n_o, n_dn = (G_qkv + GPC - 1) // GPC, (G_o + GPC - 1) // GPC, (G_dn + GPC - 1) // GPC
    n_out = (G_out + GPC_OUT - 1) // GPC_OUT
    S, r0 = kc.shape[1], tok.r0
    qrot = np.empty(dk, dtype=np.float32)
    oacc = np.empty(dv, dtype=np.float32)
    scores = np.empty(ATT_TILE, dtype=np.float32)
    tl = np.zeros(7, dtype=np.int64)     # stage of the wait clock, its start; chunks, rescues, wait cycles;
    tl[5] = cycles()                     # region start; the current stage (STAGE)
    for l in range(L):
        x_in, x_att, x_ffn = (2 * l) % NX, (2 * l + 1) % NX, (2 * l + 2) % NX
        h_att, h_ffn, u, p_att, p_ffn = (2 * l) % NH, (2 * l + 1) % NH, l % NL, (2 * l) % NP, (2 * l + 1) % NP
        for c in _chunks(sync, tl, tid, T):             # attn_norm: h = rms_norm(x, L.attn_norm, eps)
            _norm_q8(x[x_in, c], attn_norm[l], eps, h, h_att, c)
        for c in _chunks(sync, tl, tid, n_qkv):         # attn_qkv: q, k, v = matmul(h, L.attn_q / attn_k / attn_v)
            MM_QKV(attn_qkv, l, h, h_att, c * GPC, min(G_qkv, c * GPC + GPC), qkv[u])
        for c in _chunks(sync, tl, tid, T * KV):        # rope_k: k = rope(k, pos, ...), stored in the cache
            t, g = c // KV, c % KV                      # by attention (with v)
            p = tok.pos0 + t
            _rope_row(qkv[u, t, koff + g * dk:koff + (g + 1) * dk], tok.cos[t], tok.sin[t], hp.neox, qrot)
            for j in range(dk):
                kc[l, p, g, j] = f32_to_f16(qrot[j])
            for j in range(dv):
                vc[l, p, g, j] = f32_to_f16(qkv[u, t, voff + g * dv + j])
        for c in _chunks(sync, tl, tid, T * H):         # attention: q = rope(q, pos, ...);
            t, hd = c // H, c % H                       # o = attention(q, k, v, cache, il, pos0, scale)
            g, qpos = hd // (H // KV), tok.pos0 + t
            _rope_row(qkv[u, t, hd * dk:(hd + 1) * dk], tok.cos[t], tok.sin[t], hp.neox, qrot)
            lo = max(0, qpos - hp.window + 1) if hp.window > 0 else 0
            attend_rows(qrot, kc, vc, (l * S * KV + g) * dk, KV * dk, (l * S * KV + g) * dv, KV * dv, lo, qpos + 1,
                        hp.scale, scores, oacc)
            # accumulated privately, stored whole: a rescued chunk may run on both threads at once
            att.f[u, t, hd * dv:(hd + 1) * dv] = oacc
            for b in range(hd * dv // QK, (hd + 1) * dv // QK):
                _q8_block(att, u, t, b)
        for c in _chunks(sync, tl, tid, n_o):           # attn_output: x = add(x, matmul(o, L.attn_output))
            g0, g1 = c * GPC, min(G_o, c * GPC + GPC)
            MM_O(attn_output, l, att, u, g0, g1, proj[p_att])
            _add_columns(x, x_in, x_att, proj[p_att], g0 * R, min(g1 * R, dim))
        for c in _chunks(sync, tl, tid, T):             # ffn_norm: h = rms_norm(x, L.ffn_norm, eps)
            _norm_q8(x[x_att, c], ffn_norm[l], eps, h, h_ffn, c)
        for c in _chunks(sync, tl, tid, ffn // QK):     # ffn_gate_up: f = swiglu(matmul(h, L.ffn_gate),
            g0, g1 = c * 4, c * 4 + 4                   #                         matmul(h, L.ffn_up))
            MM_FF(ffn_gate, l, h, h_ffn, g0, g1, gate[u])   # one 32-column block (4 groups) a chunk
            MM_FF(ffn_up, l, h, h_ffn, g0, g1, up[u])
            for t in range(T):
                for j in range(c * QK, c * QK + QK):
                    gv = gate[u, t, j]
                    ff.f[u, t, j] = gv / (np.float32(1.0) + np.exp(-gv)) * up[u, t, j]
                _q8_block(ff, u, t, c)
        for c in _chunks(sync, tl, tid, n_dn):          # ffn_down: x = add(x, matmul(f, L.ffn_down))
            g0, g1 = c * GPC, min(G_dn, c * GPC + GPC)
            MM_DOWN(ffn_down, l, ff, u, g0, g1, proj[p_ffn])
            _add_columns(x, x_att, x_ffn, proj[p_ffn], g0 * R, min(g1 * R, dim))
    x_out = (2 * L) % NX
    for c in _chunks(sync, tl, tid, T - r0):            # output_norm: x = rms_norm(x[-1:] or x, output_norm, eps)
        _norm_q8(x[x_out, r0 + c], output_norm, eps, out, 0, c)
    for c in _chunks(sync, tl, tid, n_out):             # output: matmul(x, output_weight())
        MM_OUT(output, 0, out, 0, c * GPC_OUT, min(G_out, c * GPC_OUT + GPC_OUT), logits)
    if tid < sync.stats.shape[0]:                       # chunks claimed, chunks rescued, wait and busy cycles
        sync.stats[tid, 0] += tl[2]
        sync.stats[tid, 1] += tl[3]
        sync.stats[tid, 2] += tl[4]
        sync.stats[tid, 3] += cycles() - tl[5]


def n_stages(n_layers: int) -> int:
    return n_layers * STAGES_PER_LAYER + len(HEAD_STAGES)


def max_chunks(T: int, H: int, KV: int, dim: int, qkv_rows: int, ffn: int, vocab_rows: int) -> int:
    """The most chunks any stage of a step has (the width of the flags array)."""
    cd = lambda a, b: -(-a // b)  # noqa: E731
    return max(T * H, T * KV, T, cd(qkv_rows, GPC * R), cd(dim, GPC * R), ffn // QK, cd(vocab_rows, GPC_OUT * R), 1)


def sync_slots(n_layers: int, nthreads: int) -> int:
    """int64 slots of the sync array: per stage and thread, a claim line and a done line."""
    return n_stages(n_layers) * 2 * nthreads * LINE


@functools.cache
def llama_step(isa: str, qkv: Encoding, o: Encoding, ff: Encoding, down: Encoding, out: Encoding) -> Callable:
    """The compiled step for the weight encodings of the QKV, O, gate+up, down and output slots."""
    name = f"{isa}_" + "".join(f"{k}{z or ''}" for k, z in (qkv, o, ff, down, out))
    stages = specialize(_stages, name, parallel=False, MM_QKV=mm_groups(qkv, isa), MM_O=mm_groups(o, isa),
                        MM_FF=mm_groups(ff, isa), MM_DOWN=mm_groups(down, isa), MM_OUT=mm_groups(out, isa))
    return specialize(_llama_step, name, STAGES=stages)


def n_threads() -> int:
    return numba.get_num_threads()
