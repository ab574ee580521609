"""The reference CPU backend: every weight dequantized to float32 (through gguf-py, bit-exact with
ggml's dequantization), plain numpy math in float32, KV cache in float16 like llama.cpp's default.
It is the oracle faster backends are tested against, so it favours clarity over speed."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

from ..gguf_file import Tensor
from . import rope
from .base import Backend
from ..kv_cache import KVCache

# Every type the two reference files use, plus the common float and Q4_0 formats.
SUPPORTED_TYPES = frozenset({QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1,
                             QT.Q8_0, QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K})


@dataclass
class LazyWeight:
    """A weight kept in its GGUF encoding; dequantized to float32 on first full use. Embedding
    lookups dequantize only the rows they need, so a tied 262k-row table costs nothing until the
    output projection first needs it."""

    tensor: Tensor
    _f32: np.ndarray | None = field(default=None, repr=False)

    @property
    def f32(self) -> np.ndarray:
        if self._f32 is None:
            self._f32 = dequantize(self.tensor.data, self.tensor.type).reshape(self.tensor.shape)
        return self._f32

    def rows(self, ids: np.ndarray) -> np.ndarray:
        if self._f32 is not None:
            return self._f32[ids]
        return dequantize(self.tensor.data[ids], self.tensor.type).reshape(len(ids), -1)


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads  # numpy's BLAS picks its own thread count

    def decline_reason(self, tensor: Tensor) -> str | None:
        if tensor.type not in SUPPORTED_TYPES:
            return f"tensor type {tensor.type.name} has no dequantizer in the reference backend"
        return None

    def upload(self, tensor: Tensor) -> LazyWeight | np.ndarray:
        if tensor.data.ndim == 1:  # norms and biases: small, used as float32 vectors
            return dequantize(tensor.data, tensor.type).reshape(tensor.shape)
        return LazyWeight(tensor)

    kv_types = ("f16", "f32", "q8_0")

    def compiled_step(self, model) -> str:
        return f"the {self.name} backend has no compiled step"

    def new_kv_cache(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim_k: int, head_dim_v: int,
                     kv_type: str = "f16") -> KVCache:
        return KVCache(n_layers, n_ctx, n_kv_heads, head_dim_k, head_dim_v, kv_type)

    def get_rows(self, w: LazyWeight, ids: np.ndarray) -> np.ndarray:
        return w.rows(np.asarray(ids, dtype=np.int64))

    def matmul(self, x: np.ndarray, w: LazyWeight) -> np.ndarray:
        return x @ w.f32.T

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def scale(self, x: np.ndarray, s: float) -> np.ndarray:
        return x * np.float32(s)

    def bias(self, x: np.ndarray, b: np.ndarray) -> np.ndarray:
        return x + b

    def softcap(self, x: np.ndarray, cap: float) -> np.ndarray:
        return (np.float32(cap) * np.tanh(x / np.float32(cap))).astype(np.float32)

    def rms_norm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        ms = np.mean(np.square(x, dtype=np.float64), axis=-1, keepdims=True)
        return (x / np.sqrt(ms + eps)).astype(np.float32) * w

    def rope(self, x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, neox: bool,
             freq_scale: float = 1.0, factors: np.ndarray | None = None, mscale: float = 1.0) -> np.ndarray:
        """x: [T, heads, d]; rotates the first n_rot dims of each head. NORM mode pairs (2i, 2i+1),
        NEOX mode pairs (i, i + n_rot/2); theta_i = pos * freq_scale * base^(-2i/n_rot) / factors_i,
        cos and sin times mscale (the dims past n_rot are copied)."""
        cos, sin = rope.cos_sin(pos, n_rot, base, freq_scale, factors, mscale)  # [T, n_rot/2]
        cos, sin = cos[:, None, :], sin[:, None, :]                                                  # [T, 1, n_rot/2]
        out = x.copy()
        if neox:
            a, b = x[..., : n_rot // 2], x[..., n_rot // 2: n_rot]
            out[..., : n_rot // 2] = a * cos - b * sin
            out[..., n_rot // 2: n_rot] = a * sin + b * cos
        else:
            a, b = x[..., 0:n_rot:2], x[..., 1:n_rot:2]
            out[..., 0:n_rot:2] = a * cos - b * sin
            out[..., 1:n_rot:2] = a * sin + b * cos
        return out

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int,
                  pos0: int, scale: float, window: int = 0, softcap: float = 0.0) -> np.ndarray:
        """Stores k, v at positions pos0.. then attends causally over the cache (and within
        `window` positions when window > 0); softcap > 0 caps the scaled scores at
        softcap * tanh(s / softcap). Materialises [H, T, S] scores: fine for an oracle."""
        T, H, dk = q.shape
        kv_heads, dv = v.shape[1], v.shape[2]
        keys, vals = cache.store(layer, pos0, k, v)             # [S, KV, dk], [S, KV, dv] float32
        S = keys.shape[0]
        qg = q.reshape(T, kv_heads, H // kv_heads, dk)            # GQA: query heads grouped per KV head
        scores = np.einsum("tgrd,sgd->grts", qg, keys) * np.float32(scale)  # [KV, H/KV, T, S]
        if softcap > 0:
            scores = np.float32(softcap) * np.tanh(scores / np.float32(softcap))
        qpos = pos0 + np.arange(T)[:, None]
        kpos = np.arange(S)[None, :]
        masked = kpos > qpos
        if window > 0:
            masked |= (qpos - kpos) >= window
        scores = np.where(masked, -np.inf, scores)
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out = np.einsum("grts,sgd->tgrd", p, vals)               # [T, KV, H/KV, dv]
        return out.reshape(T, H * dv).astype(np.float32)

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        return gate / (1.0 + np.exp(-gate)) * up

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        # tanh approximation, as ggml_gelu
        g = 0.5 * gate * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (gate + 0.044715 * gate ** 3)))
        return (g * up).astype(np.float32)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return x
