"""Float kernels of a forward step: dense matmul (weights kept as float32 or float16), RMSNorm,
RoPE, the gated activations, and attention over the float16 KV cache with online softmax.
Outputs are written into arrays the caller passes, so a backend can reuse buffers.

float16 arrays travel as uint16 bit patterns (Numba has no CPU float16); `scale_at` and
`f16_to_f32` convert them, and LLVM vectorises those conversions into vcvtph2ps."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .simd import f16_to_f32, scale_at

_GELU_C = math.sqrt(2.0 / math.pi)


@njit(cache=True, nogil=True, parallel=True, fastmath=True)
def mul_dense(w, x, y):
    """y float32 [T, n] = x float32 [T, k] @ w^T, w [n, k] float32 or uint16 (float16 bits)."""
    n, k = w.shape
    for i in prange(n):
        for t in range(x.shape[0]):
            acc = np.float32(0.0)
            for j in range(k):
                acc += scale_at(w, i * k + j) * x[t, j]
            y[t, i] = acc


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
