"""Float kernels of a forward step: dense matmul (weights kept as float32 or float16), RMSNorm,
RoPE, the gated activations, and attention over the float16 KV cache with online softmax.
Outputs are written into arrays the caller passes, so a backend can reuse buffers.

float16 arrays travel as uint16 bit patterns (Numba has no CPU float16); `scale_at` and
`f16_to_f32` convert them, and LLVM vectorises those conversions into vcvtph2ps."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .simd import f16_to_f32, fma_f32, hsum_f32, load_f32x16, load_w16, scale_at, zero_f32

_GELU_C = math.sqrt(2.0 / math.pi)


DENSE_ROWS = 16     # weight rows per parallel task of mul_dense (four quads)


@njit(inline="always")
def _dense_quad(w, x, y, i, t, k, k16):
    """y[t, i..i+4] = x[t] . w[i..i+4]: one activation row against four weight rows."""
    a0, a1, a2, a3 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    wo, xo = i * k, t * k
    for j in range(0, k16, 16):
        xv = load_f32x16(x, xo + j)
        a0 = fma_f32(load_w16(w, wo + j), xv, a0)
        a1 = fma_f32(load_w16(w, wo + k + j), xv, a1)
        a2 = fma_f32(load_w16(w, wo + 2 * k + j), xv, a2)
        a3 = fma_f32(load_w16(w, wo + 3 * k + j), xv, a3)
    s0, s1, s2, s3 = hsum_f32(a0), hsum_f32(a1), hsum_f32(a2), hsum_f32(a3)
    for j in range(k16, k):
        xj = scale_at(x, xo + j)
        s0 += scale_at(w, wo + j) * xj
        s1 += scale_at(w, wo + k + j) * xj
        s2 += scale_at(w, wo + 2 * k + j) * xj
        s3 += scale_at(w, wo + 3 * k + j) * xj
    y[t, i], y[t, i + 1], y[t, i + 2], y[t, i + 3] = s0, s1, s2, s3


@njit(inline="always")
def _dense_tile(w, x, y, i, t, k, k16):
    """y[t..t+4, i..i+4]: four activation rows against four weight rows (16 accumulators)."""
    a00, a01, a02, a03 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    a10, a11, a12, a13 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    a20, a21, a22, a23 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    a30, a31, a32, a33 = zero_f32(), zero_f32(), zero_f32(), zero_f32()
    wo, xo = i * k, t * k
    for j in range(0, k16, 16):
        w0, w1 = load_w16(w, wo + j), load_w16(w, wo + k + j)
        w2, w3 = load_w16(w, wo + 2 * k + j), load_w16(w, wo + 3 * k + j)
        x0 = load_f32x16(x, xo + j)
        a00, a01, a02, a03 = fma_f32(w0, x0, a00), fma_f32(w1, x0, a01), fma_f32(w2, x0, a02), fma_f32(w3, x0, a03)
        x1 = load_f32x16(x, xo + k + j)
        a10, a11, a12, a13 = fma_f32(w0, x1, a10), fma_f32(w1, x1, a11), fma_f32(w2, x1, a12), fma_f32(w3, x1, a13)
        x2 = load_f32x16(x, xo + 2 * k + j)
        a20, a21, a22, a23 = fma_f32(w0, x2, a20), fma_f32(w1, x2, a21), fma_f32(w2, x2, a22), fma_f32(w3, x2, a23)
        x3 = load_f32x16(x, xo + 3 * k + j)
        a30, a31, a32, a33 = fma_f32(w0, x3, a30), fma_f32(w1, x3, a31), fma_f32(w2, x3, a32), fma_f32(w3, x3, a33)
    y[t, i], y[t, i + 1], y[t, i + 2], y[t, i + 3] = hsum_f32(a00), hsum_f32(a01), hsum_f32(a02), hsum_f32(a03)
    y[t + 1, i], y[t + 1, i + 1], y[t + 1, i + 2], y[t + 1, i + 3] = hsum_f32(a10), hsum_f32(a11), hsum_f32(a12), hsum_f32(a13)
    y[t + 2, i], y[t + 2, i + 1], y[t + 2, i + 2], y[t + 2, i + 3] = hsum_f32(a20), hsum_f32(a21), hsum_f32(a22), hsum_f32(a23)
    y[t + 3, i], y[t + 3, i + 1], y[t + 3, i + 2], y[t + 3, i + 3] = hsum_f32(a30), hsum_f32(a31), hsum_f32(a32), hsum_f32(a33)
    for j in range(k16, k):
        for q in range(4):
            xj = scale_at(x, xo + q * k + j)
            for r in range(4):
                y[t + q, i + r] += scale_at(w, wo + r * k + j) * xj


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def mul_dense(w, x, y):
    """y float32 [T, n] = x float32 [T, k] @ w^T, w [n, k] float32 or uint16 (float16 bits); w and
    x C-contiguous. Tasks of DENSE_ROWS rows; within one, 4 activation rows at a time against each
    quad of weight rows (the task's rows stay in L2, the 4 activation rows in L1), 16 float lanes
    per load (vcvtph2ps for float16), no gathers."""
    n, k = w.shape
    T = x.shape[0]
    k16, T4 = k - k % 16, T - T % 4
    for task in prange((n + DENSE_ROWS - 1) // DENSE_ROWS):
        i0 = task * DENSE_ROWS
        i1 = min(n, i0 + DENSE_ROWS)
        iq = i0 + (i1 - i0) // 4 * 4
        for t in range(0, T4, 4):
            for i in range(i0, iq, 4):
                _dense_tile(w, x, y, i, t, k, k16)
        for t in range(T4, T):
            for i in range(i0, iq, 4):
                _dense_quad(w, x, y, i, t, k, k16)
        for i in range(iq, i1):                  # the last rows of a matrix whose n % 4 != 0
            wo = i * k
            for t in range(T):
                a = zero_f32()
                for j in range(0, k16, 16):
                    a = fma_f32(load_w16(w, wo + j), load_f32x16(x, t * k + j), a)
                s = hsum_f32(a)
                for j in range(k16, k):
                    s += scale_at(w, wo + j) * scale_at(x, t * k + j)
                y[t, i] = s


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


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def attention(q, k, v, pos0, scale, window, out):
    """Causal (and sliding-window when window > 0) attention of q [T, H, dk] float32 over the
    cache rows 0..pos0+T of k [S, KV, dk] and v [S, KV, dv] (uint16 float16 bits), GQA by
    H // KV query heads per KV head. One pass per (token, head) with online softmax: the
    [T, S] score matrix never exists. out: float32 [T, H * dv]."""
    T, H, dk = q.shape
    KV, dv = k.shape[1], v.shape[2]
    for th in prange(T * H):
        t, h = th // H, th % H
        g, qpos = h // (H // KV), pos0 + th // H
        lo = max(0, qpos - window + 1) if window > 0 else 0
        acc = out[t, h * dv:(h + 1) * dv]                                # [dv], accumulated in place
        acc[:] = 0.0
        m, l = np.float32(-np.inf), np.float32(0.0)
        for s in range(lo, qpos + 1):
            score = np.float32(0.0)
            for j in range(dk):
                score += q[t, h, j] * f16_to_f32(k[s, g, j])
            score *= scale
            if score > m:                                                # new max: rescale the past
                c = np.exp(m - score)
                l *= c
                for j in range(dv):
                    acc[j] *= c
                m = score
            p = np.exp(score - m)
            l += p
            for j in range(dv):
                acc[j] += p * f16_to_f32(v[s, g, j])
        for j in range(dv):
            acc[j] /= l
