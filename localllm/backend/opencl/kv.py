"""Device-resident KV cache (a `SequenceCache`: tokens, offset, n_ctx, nbytes, trim). The K/V rows
never leave the device, so it takes no snapshots; the attention op writes and reads them
(attention.cl)."""
from __future__ import annotations

import weakref

import numpy as np

from .device import Device, cl
from ...kv_cache import SequenceCache


class DeviceKVCache(SequenceCache):
    """Per layer: k [n_ctx, n_kv_heads, head_dim_k] and v [n_ctx, n_kv_heads, head_dim_v], float16
    like llama.cpp's default. One buffer per layer keeps each allocation small (devices cap one
    allocation at a fraction of their memory)."""

    def __init__(self, dev: Device, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim_k: int,
                 head_dim_v: int) -> None:
        self.dev, self.n_ctx = dev, n_ctx
        self.row_k, self.row_v = n_kv_heads * head_dim_k, n_kv_heads * head_dim_v   # halfs per position
        self.k = [dev.buffer(n_ctx * self.row_k * 2, f"KV cache layer {i} (n_ctx={n_ctx})") for i in range(n_layers)]
        self.v = [dev.buffer(n_ctx * self.row_v * 2, f"KV cache layer {i} (n_ctx={n_ctx})") for i in range(n_layers)]
        self.shape_k = (n_ctx, n_kv_heads, head_dim_k)
        self.shape_v = (n_ctx, n_kv_heads, head_dim_v)
        self.tokens: list[int] = []  # the tokens whose K/V rows are valid, in order
        weakref.finalize(self, dev.release, self.nbytes)

    @property
    def nbytes(self) -> int:
        return len(self.k) * self.n_ctx * (self.row_k + self.row_v) * 2

    def layer_numpy(self, layer: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The first n (default: offset) rows of a layer's K and V, copied to the host (tests)."""
        n = self.offset if n is None else n
        k = np.empty((n, *self.shape_k[1:]), dtype=np.float16)
        v = np.empty((n, *self.shape_v[1:]), dtype=np.float16)
        if n:
            cl().enqueue_copy(self.dev.queue, k, self.k[layer], is_blocking=True)
            cl().enqueue_copy(self.dev.queue, v, self.v[layer], is_blocking=True)
        return k, v
