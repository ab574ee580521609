"""Float kernels of a forward step: dense matmul (float32 or float16 weights, d8 layout), RMSNorm,
RoPE, the gated activations, and attention over the float16 KV cache with online softmax.
Outputs are written into arrays the caller passes, so a backend can reuse buffers.

float16 arrays travel as uint16 bit patterns (Numba has no CPU float16); `scale_at` and
`load_w16` convert them, and LLVM vectorises those conversions into vcvtph2ps."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .simd import (add_f32, exp_f32x16, fma_f32, hsum_f32, load_f32x16, load_w16, mul_f32, prefetch_l2, scale_at, splat_f32,
                   store_f32x16, zero_f32)

_GELU_C = math.sqrt(2.0 / math.pi)


# --- dense float matmul over the d8 layout -----------------------------------------------------
# Float weights (F32, F16) are held row-interleaved like the quantized r8 ones: rows 8 at a time
# (a group, zero-padded), and per 16-column chunk the group's 8 rows x 16 values side by side.
# One group is then one contiguous stream: the plain [n, k] layout read 4 rows at a stride and
# reached half the DRAM bandwidth (SmolLM2 F16: 13.5 GB/s, this layout 28).
D8 = 8       # rows per group
DC = 16      # columns per chunk (one zmm of float32 lanes)
D8_TASK = 2  # groups per parallel task


def interleave_d8(w: np.ndarray) -> np.ndarray:
    """[n, k] float32 or uint16 (float16 bits) -> [ceil(n/8), ceil(k/16) * 128], same dtype."""
    n, k = w.shape
    G, C = -(-n // D8), -(-k // DC)
    p = np.zeros((G * D8, C * DC), w.dtype)
    p[:n, :k] = w
    return np.ascontiguousarray(p.reshape(G, D8, C, DC).transpose(0, 2, 1, 3)).reshape(G, C * D8 * DC)


def deinterleave_d8(p: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Rows `rows` of the matrix interleave_d8 packed, [len(rows), k], same dtype."""
    blocks = p[rows // D8].reshape(len(rows), -1, D8, DC)                    # [T, C, 8, 16]
    return blocks[np.arange(len(rows)), :, rows % D8].reshape(len(rows), -1)[:, :k]


@njit(inline="always")
def _prefetch_chunk(w, pn, c):
    """The four cache lines of chunk c of the group at offset pn (none when pn < 0)."""
    if pn >= 0:
        o = pn + c * D8 * DC
        prefetch_l2(w, o)
        prefetch_l2(w, o + 32)
        prefetch_l2(w, o + 64)
        prefetch_l2(w, o + 96)


@njit(inline="always")
def _d8_rows(w, x, y, g, t, R, kc, k, pn):
    """y[t..t+R, g*8 .. g*8+8] for R = 1 or 2 activation rows against the group's 8 weight rows
    in one pass (8 or 16 accumulators; each converted weight vector feeds both rows). Chunk c of
    the group at pn is prefetched alongside chunk c (see d8_groups)."""
    a0, a1, a2, a3 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    a4, a5, a6, a7 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    b0, b1, b2, b3 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    b4, b5, b6, b7 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    wo = g * w.shape[1]
    for c in range(kc):
        xa, o = load_f32x16(x, t * k + c * DC), wo + c * D8 * DC
        _prefetch_chunk(w, pn, c)
        w0, w1, w2, w3 = load_w16(w, o), load_w16(w, o + 16), load_w16(w, o + 32), load_w16(w, o + 48)
        a0, a1, a2, a3 = fma_f32(w0, xa, a0), fma_f32(w1, xa, a1), fma_f32(w2, xa, a2), fma_f32(w3, xa, a3)
        if R > 1:
            xb = load_f32x16(x, (t + 1) * k + c * DC)
            b0, b1, b2, b3 = fma_f32(w0, xb, b0), fma_f32(w1, xb, b1), fma_f32(w2, xb, b2), fma_f32(w3, xb, b3)
        w4, w5, w6, w7 = load_w16(w, o + 64), load_w16(w, o + 80), load_w16(w, o + 96), load_w16(w, o + 112)
        a4, a5, a6, a7 = fma_f32(w4, xa, a4), fma_f32(w5, xa, a5), fma_f32(w6, xa, a6), fma_f32(w7, xa, a7)
        if R > 1:
            b4, b5, b6, b7 = fma_f32(w4, xb, b4), fma_f32(w5, xb, b5), fma_f32(w6, xb, b6), fma_f32(w7, xb, b7)
    r = g * D8
    y[t, r], y[t, r + 1], y[t, r + 2], y[t, r + 3] = hsum_f32(a0), hsum_f32(a1), hsum_f32(a2), hsum_f32(a3)
    y[t, r + 4], y[t, r + 5], y[t, r + 6], y[t, r + 7] = hsum_f32(a4), hsum_f32(a5), hsum_f32(a6), hsum_f32(a7)
    if R > 1:
        y[t + 1, r], y[t + 1, r + 1], y[t + 1, r + 2], y[t + 1, r + 3] = hsum_f32(b0), hsum_f32(b1), hsum_f32(b2), hsum_f32(b3)
        y[t + 1, r + 4], y[t + 1, r + 5], y[t + 1, r + 6], y[t + 1, r + 7] = hsum_f32(b4), hsum_f32(b5), hsum_f32(b6), hsum_f32(b7)


@njit(inline="always")
def _d8_tile(w, x, y, g, h, t, R, kc, k, pn):
    """y[t..t+R, rows 4h..4h+4 of group g]: R <= 4 activation rows x 4 weight rows (up to 16
    accumulators); prefetches as _d8_rows."""
    a00, a01, a02, a03 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    a10, a11, a12, a13 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    a20, a21, a22, a23 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    a30, a31, a32, a33 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    wo, xo = g * w.shape[1] + h * 4 * DC, t * k
    for c in range(kc):
        o, xc = wo + c * D8 * DC, xo + c * DC
        _prefetch_chunk(w, pn, c)
        w0, w1, w2, w3 = load_w16(w, o), load_w16(w, o + 16), load_w16(w, o + 32), load_w16(w, o + 48)
        x0 = load_f32x16(x, xc)
        a00, a01, a02, a03 = fma_f32(w0, x0, a00), fma_f32(w1, x0, a01), fma_f32(w2, x0, a02), fma_f32(w3, x0, a03)
        if R > 1:
            x1 = load_f32x16(x, xc + k)
            a10, a11, a12, a13 = fma_f32(w0, x1, a10), fma_f32(w1, x1, a11), fma_f32(w2, x1, a12), fma_f32(w3, x1, a13)
        if R > 2:
            x2 = load_f32x16(x, xc + 2 * k)
            a20, a21, a22, a23 = fma_f32(w0, x2, a20), fma_f32(w1, x2, a21), fma_f32(w2, x2, a22), fma_f32(w3, x2, a23)
        if R > 3:
            x3 = load_f32x16(x, xc + 3 * k)
            a30, a31, a32, a33 = fma_f32(w0, x3, a30), fma_f32(w1, x3, a31), fma_f32(w2, x3, a32), fma_f32(w3, x3, a33)
    r = g * D8 + h * 4
    y[t, r], y[t, r + 1], y[t, r + 2], y[t, r + 3] = hsum_f32(a00), hsum_f32(a01), hsum_f32(a02), hsum_f32(a03)
    if R > 1:
        y[t + 1, r], y[t + 1, r + 1], y[t + 1, r + 2], y[t + 1, r + 3] = hsum_f32(a10), hsum_f32(a11), hsum_f32(a12), hsum_f32(a13)
    if R > 2:
        y[t + 2, r], y[t + 2, r + 1], y[t + 2, r + 2], y[t + 2, r + 3] = hsum_f32(a20), hsum_f32(a21), hsum_f32(a22), hsum_f32(a23)
    if R > 3:
        y[t + 3, r], y[t + 3, r + 1], y[t + 3, r + 2], y[t + 3, r + 3] = hsum_f32(a30), hsum_f32(a31), hsum_f32(a32), hsum_f32(a33)


@njit(cache=True, nogil=True, fastmath=True)
def d8_groups(w, x, g0, g1, y):
    """y[:, g*8 .. g*8+8] for the groups g0 <= g < g1 (serial): per group, 4 activation rows x 4
    weight rows per pass; the last T % 4 rows: 3 the same way, 1 or 2 against all 8 weight rows in
    one pass. Every (row, weight row) sum is accumulated in the same order whatever T is, so a
    batch's rows equal single-row products bit for bit. x float32 [T, k] C-contiguous. A called
    function, not inlined: the compiled step calls it from six places, and inlining it there
    quadrupled its compile time.

    With T > 2 a group takes several passes, and the later ones read the cache: DRAM would sit
    idle through them (the hardware prefetcher follows the stream only while it is read), and
    the passes' arithmetic would add to the stream's time instead of hiding under it. So every
    pass also requests the next group's lines into L2, a chunk per chunk (SmolLM2 F16's weights,
    T = 4: 1.36x the time of T = 1 before, 1.03x after; T = 5: 1.82x, 1.17x: bench_kernels.py --dense-rows).
    A single pass does too: with two rows (16 accumulators) it kept DRAM waiting as well (the
    compiled F16 step at T = 2: 1.13-1.30x T = 1 before, 1.02-1.09x after, at T = 1 no change, in
    alternating processes, ad hoc; now bench_speculative.py --steps)."""
    T, k = x.shape[0], x.shape[1]
    kc = k // DC
    T4, rest = T - T % 4, T % 4
    for g in range(g0, g1):
        pn = (g + 1) * w.shape[1] if g + 1 < w.shape[0] else -1
        for t in range(0, T4, 4):
            _d8_tile(w, x, y, g, 0, t, 4, kc, k, pn)
            _d8_tile(w, x, y, g, 1, t, 4, kc, k, pn)
        if rest == 3:
            _d8_tile(w, x, y, g, 0, T4, 3, kc, k, pn)
            _d8_tile(w, x, y, g, 1, T4, 3, kc, k, pn)
        elif rest:
            _d8_rows(w, x, y, g, T4, rest, kc, k, pn)
        if kc * DC < k:                              # the last, partial chunk (weights zero-padded)
            o = g * w.shape[1] + kc * D8 * DC
            for t in range(T):
                for r in range(D8):
                    s = np.float32(0.0)
                    for j in range(k - kc * DC):
                        s += scale_at(w, o + r * DC + j) * x[t, kc * DC + j]
                    y[t, g * D8 + r] += s


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def mul_dense(w, x, y):
    """y float32 [T, G*8] = x float32 [T, k] @ W^T, W in the d8 layout (interleave_d8): w [G, C*128]
    float32 or uint16 (float16 bits, converted by vcvtph2ps); x C-contiguous. Tasks of D8_TASK
    groups (d8_groups). Padding rows come out zero."""
    G = w.shape[0]
    for task in prange((G + D8_TASK - 1) // D8_TASK):
        d8_groups(w, x, task * D8_TASK, min(G, task * D8_TASK + D8_TASK), y)


@njit(cache=True, nogil=True, fastmath=True)
def rms_norm(x, w, eps, out):
    """out [N, d] = x [N, d] / rms(x) * w [d]; the mean of squares in float64, as ggml does."""
    for i in range(x.shape[0]):
        ss = 0.0
        for j in range(x.shape[1]):
            ss += np.float64(x[i, j]) * x[i, j]
        inv = np.float32(1.0 / math.sqrt(ss / x.shape[1] + eps))
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * inv * w[j]


@njit(cache=True, nogil=True, fastmath=True)
def rope(x, cos, sin, neox, out):
    """x, out [T, heads, d]; cos/sin [T, n_rot/2]. Rotates pairs (2i, 2i+1) (NORM) or
    (i, i + n_rot/2) (NEOX) of the first n_rot dims of every head; the rest is copied."""
    half = cos.shape[1]
    for t in range(x.shape[0]):
        for h in range(x.shape[1]):
            for j in range(2 * half, x.shape[2]):
                out[t, h, j] = x[t, h, j]
            for i in range(half):
                a_i, b_i = (i, i + half) if neox else (2 * i, 2 * i + 1)
                a, b = x[t, h, a_i], x[t, h, b_i]
                out[t, h, a_i] = a * cos[t, i] - b * sin[t, i]
                out[t, h, b_i] = a * sin[t, i] + b * cos[t, i]


@njit(cache=True, nogil=True, fastmath=True)
def swiglu(gate, up, out):
    """out = silu(gate) * up, all [N, d]."""
    for i in range(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[i, j]
            out[i, j] = g / (np.float32(1.0) + np.exp(-g)) * up[i, j]


@njit(cache=True, nogil=True, fastmath=True)
def geglu(gate, up, out):
    """out = gelu(gate) * up with ggml's tanh approximation, written as g * sigmoid(2z)
    (= 0.5 g (1 + tanh z)) so it needs one exp."""
    for i in range(gate.shape[0]):
        for j in range(gate.shape[1]):
            g = gate[i, j]
            z = np.float32(_GELU_C) * (g + np.float32(0.044715) * g * g * g)
            out[i, j] = g / (np.float32(1.0) + np.exp(np.float32(-2.0) * z)) * up[i, j]


ATT_TILE = 32   # cache rows per online-softmax step of attend_rows


@njit(inline="always")
def attend_rows(q, k, v, kb, ks, vb, vs, lo, hi, scale, sc, acc):
    """acc [dv] = sum_s softmax_s(scale * q.K_s) V_s over the cache rows lo <= s < hi, where K_s is
    k.flat[kb + s*ks :][:dk] and V_s is v.flat[vb + s*vs :][:dv] (float16 bits, C-contiguous).
    Online softmax over tiles of ATT_TILE rows: a tile's scores go to sc [ATT_TILE], and its
    maximum rescales the running sum once, so no row of more than ATT_TILE scores exists.
    16 lanes at a time (q [dk] float32 and acc [dv], dk and dv multiples of 16; attend_rows_plain
    is the twin for any size): a tile's exponentials in two vector exps, the weighted sum of V
    rows into four independent accumulators (one chain of FMAs waited 4 cycles per row), and
    the next tile's K rows and this tile's V rows requested while the scores are computed.
    SmolLM2's heads, cache-resident (bench_kernels.py --attention): 13 ns per (head, row) per
    thread at 1024 rows, 27 at 128, against 19-20 and 32-34 for the scalar loops before (one
    process, ad hoc); deep in a compiled step the KV stream from DRAM dominates (~13% less there)."""
    dk, dv = q.shape[0], acc.shape[0]
    den = np.float32(0.0)
    mx = np.float32(0.0)
    for j in range(0, dv, 16):
        store_f32x16(acc, j, zero_f32())
    for s0 in range(lo, hi, ATT_TILE):
        n = min(ATT_TILE, hi - s0)
        for i in range(n):                                   # scores of the tile
            a, o = zero_f32(), kb + (s0 + i) * ks
            for j in range(0, dk, 32):                       # the next tile's K row, this tile's V row
                if s0 + i + ATT_TILE < hi:
                    prefetch_l2(k, o + ATT_TILE * ks + j)
            for j in range(0, dv, 32):
                prefetch_l2(v, vb + (s0 + i) * vs + j)
            for j in range(0, dk, 16):
                a = fma_f32(load_f32x16(q, j), load_w16(k, o + j), a)
            sc[i] = hsum_f32(a) * scale
        tmax = sc[0]
        for i in range(1, n):
            tmax = max(tmax, sc[i])
        for i in range(n, ATT_TILE):                         # rows past hi: weight exp(-1e30) = 0
            sc[i] = np.float32(-1e30)
        if s0 == lo or tmax > mx:                            # a new maximum: rescale the past once
            c = np.float32(0.0) if s0 == lo else np.exp(mx - tmax)
            den *= c
            for j in range(0, dv, 16):
                store_f32x16(acc, j, mul_f32(load_f32x16(acc, j), splat_f32(c)))
            mx = tmax
        dsum = zero_f32()
        for i in range(0, ATT_TILE, 16):
            e = exp_f32x16(add_f32(load_f32x16(sc, i), splat_f32(-mx)))
            store_f32x16(sc, i, e)
            dsum = add_f32(dsum, e)
        den += hsum_f32(dsum)
        n4 = n - n % 4
        for j in range(0, dv, 16):                           # acc += p_s V_s
            a0, a1, a2, a3 = load_f32x16(acc, j), zero_f32(), zero_f32(), zero_f32()
            o = vb + s0 * vs + j
            for i in range(0, n4, 4):
                a0 = fma_f32(splat_f32(sc[i]), load_w16(v, o + i * vs), a0)
                a1 = fma_f32(splat_f32(sc[i + 1]), load_w16(v, o + (i + 1) * vs), a1)
                a2 = fma_f32(splat_f32(sc[i + 2]), load_w16(v, o + (i + 2) * vs), a2)
                a3 = fma_f32(splat_f32(sc[i + 3]), load_w16(v, o + (i + 3) * vs), a3)
            for i in range(n4, n):
                a0 = fma_f32(splat_f32(sc[i]), load_w16(v, o + i * vs), a0)
            store_f32x16(acc, j, add_f32(add_f32(a0, a1), add_f32(a2, a3)))
    for j in range(dv):
        acc[j] /= den


@njit(inline="always")
def attend_rows_plain(q, k, v, kb, ks, vb, vs, lo, hi, scale, acc):
    """attend_rows with scalar loops and online softmax row by row, for any dk and dv."""
    dk, dv = q.shape[0], acc.shape[0]
    acc[:] = 0.0
    m, den = np.float32(-np.inf), np.float32(0.0)
    for s in range(lo, hi):
        score = np.float32(0.0)
        for j in range(dk):
            score += q[j] * scale_at(k, kb + s * ks + j)
        score *= scale
        if score > m:                                                # new max: rescale the past
            c = np.exp(m - score)
            den *= c
            for j in range(dv):
                acc[j] *= c
            m = score
        p = np.exp(score - m)
        den += p
        for j in range(dv):
            acc[j] += p * scale_at(v, vb + s * vs + j)
    for j in range(dv):
        acc[j] /= den


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def attention(q, k, v, pos0, scale, window, out):
    """Causal (and sliding-window when window > 0) attention of q [T, H, dk] float32 over the
    cache rows 0..pos0+T of k [S, KV, dk] and v [S, KV, dv] (uint16 float16 bits, C-contiguous),
    GQA by H // KV query heads per KV head. One pass per (token, head) with online softmax
    (attend_rows): the [T, S] score matrix never exists. out: float32 [T, H * dv]."""
    T, H, dk = q.shape
    KV, dv = k.shape[1], v.shape[2]
    vector = dk % 16 == 0 and dv % 16 == 0
    scores = np.empty((T * H, ATT_TILE), dtype=np.float32)               # one tile's scores per (t, h)
    for th in prange(T * H):
        t, h = th // H, th % H
        g, qpos = h // (H // KV), pos0 + th // H
        lo = max(0, qpos - window + 1) if window > 0 else 0
        acc = out[t, h * dv:(h + 1) * dv]                                # [dv], accumulated in place
        if vector:
            attend_rows(q[t, h], k, v, g * dk, KV * dk, g * dv, KV * dv, lo, qpos + 1, scale, scores[th], acc)
        else:
            attend_rows_plain(q[t, h], k, v, g * dk, KV * dk, g * dv, KV * dv, lo, qpos + 1, scale, acc)
