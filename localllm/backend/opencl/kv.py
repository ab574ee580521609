"""Device-resident KV cache (a `SequenceCache`: tokens, offset, n_ctx, nbytes, trim). The K/V rows
never leave the device, so it takes no snapshots; the attention op writes and reads them
(attention.cl)."""
from __future__ import annotations

import weakref

import numpy as np

from .device import Device, cl
from ...kv_cache import QK, SequenceCache, dequantize_q8_0

KV_TYPES = ("f16", "q8_0")   # attention.cl's KV_F16, KV_Q8_0


class DeviceKVCache(SequenceCache):
    """Per layer: k [n_ctx, n_kv_heads, head_dim_k] and v [n_ctx, n_kv_heads, head_dim_v], float16
    like llama.cpp's default, or (kv_type "q8_0") int8 with float16 scales per 32 values in k_d
    [n_ctx, n_kv_heads, head_dim_k/32] and v_d, as the host KVCache's q8_0. One buffer per layer
    and part keeps each allocation small (devices cap one allocation at a fraction of their
    memory)."""

    def __init__(self, dev: Device, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim_k: int,
                 head_dim_v: int, kv_type: str = "f16") -> None:
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {KV_TYPES} on the opencl backend, not {kv_type!r}")
        if kv_type == "q8_0" and (head_dim_k % QK or head_dim_v % QK):
            raise ValueError(f"q8_0 KV needs head dims divisible by {QK} (got {head_dim_k}, {head_dim_v})")
        self.dev, self.n_ctx, self.kv_type = dev, n_ctx, kv_type
        self.row_k, self.row_v = n_kv_heads * head_dim_k, n_kv_heads * head_dim_v   # values per position

        def part(row: int, size: int, what: str) -> list:
            return [dev.buffer(n_ctx * row * size, f"KV cache {what}layer {i} (n_ctx={n_ctx})") for i in range(n_layers)]

        values = 2 if kv_type == "f16" else 1
        self.k, self.v = part(self.row_k, values, ""), part(self.row_v, values, "")
        if kv_type == "q8_0":        # the scales, row // 32 halfs per position
            self.k_d, self.v_d = part(self.row_k // QK, 2, "scales "), part(self.row_v // QK, 2, "scales ")
        self.shape_k = (n_ctx, n_kv_heads, head_dim_k)
        self.shape_v = (n_ctx, n_kv_heads, head_dim_v)
        self.tokens: list[int] = []  # the tokens whose K/V rows are valid, in order
        weakref.finalize(self, dev.release, self.nbytes)

    @property
    def nbytes(self) -> int:
        values = len(self.k) * self.n_ctx * (self.row_k + self.row_v)
        return 2 * values if self.kv_type == "f16" else values + 2 * (values // QK)

    def layer_numpy(self, layer: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first n (default: offset) rows of a layer's K and V, copied to the host (tests):
        float16 as stored, or Q8_0 dequantized to float32."""
        n = self.offset if n is None else n
        return self._read(self.k, self.k_d if self.kv_type == "q8_0" else None, layer, n, self.shape_k), \
            self._read(self.v, self.v_d if self.kv_type == "q8_0" else None, layer, n, self.shape_v)

    def _read(self, bufs: list, scales: list | None, layer: int, n: int, shape: tuple) -> np.ndarray:
        q = np.empty((n, *shape[1:]), dtype=np.float16 if scales is None else np.int8)
        if n:
            cl().enqueue_copy(self.dev.queue, q, bufs[layer], is_blocking=True)
        if scales is None:
            return q
        d = np.empty((n, *shape[1:-1], shape[-1] // QK), dtype=np.float16)
        if n:
            cl().enqueue_copy(self.dev.queue, d, scales[layer], is_blocking=True)
        return dequantize_q8_0(q, d)
