"""Per-sequence KV cache: it owns its token history and offset, and can be trimmed back to any
position (a later turn then re-evaluates only what differs)."""
from __future__ import annotations

import numpy as np


class KVCache:
    """k: [n_layers, n_ctx, n_kv_heads, head_dim_k], v: [..., head_dim_v], float16 like llama.cpp.
    np.zeros maps untouched pages lazily, so a long context costs memory only as it fills."""

    def __init__(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim_k: int, head_dim_v: int,
                 dtype: type = np.float16) -> None:
        self.n_ctx = n_ctx
        self.k = np.zeros((n_layers, n_ctx, n_kv_heads, head_dim_k), dtype=dtype)
        self.v = np.zeros((n_layers, n_ctx, n_kv_heads, head_dim_v), dtype=dtype)
        self.tokens: list[int] = []  # the tokens whose K/V rows are valid, in order

    @property
    def offset(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write rows pos0..pos0+T and return all valid rows 0..pos0+T as float32."""
        end = pos0 + k.shape[0]
        self.k[layer, pos0:end] = k
        self.v[layer, pos0:end] = v
        return self.k[layer, :end].astype(np.float32), self.v[layer, :end].astype(np.float32)

    def trim(self, n: int) -> None:
        """Keep only the first n positions (rollback); later rows are overwritten on reuse."""
        del self.tokens[n:]

    def common_prefix(self, ids: list[int]) -> int:
        n = 0
        for a, b in zip(self.tokens, ids):
            if a != b:
                break
            n += 1
        return n
