"""Per-sequence KV cache: it owns its token history and offset, and can be trimmed back to any
position (a later turn then re-evaluates only what differs)."""
from __future__ import annotations

from collections import OrderedDict

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

    @property
    def nbytes_per_token(self) -> int:
        return self.nbytes // self.n_ctx

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
        return _common(self.tokens, ids)

    def snapshot(self, n: int | None = None) -> "KVState":
        """A copy of the first n positions (default: all valid ones)."""
        n = self.offset if n is None else n
        return KVState(tuple(self.tokens[:n]), self.k[:, :n].copy(), self.v[:, :n].copy())

    def restore(self, state: "KVState") -> None:
        n = len(state.tokens)
        if n > self.n_ctx or state.k.shape[0] != self.k.shape[0] or state.k.shape[2:] != self.k.shape[2:] \
                or state.v.shape[2:] != self.v.shape[2:]:
            raise ValueError("KV state does not fit this cache")
        self.k[:, :n] = state.k
        self.v[:, :n] = state.v
        self.tokens = list(state.tokens)


class KVState:
    """A detached copy of a cache prefix: tokens plus their K/V rows [n_layers, n, n_kv, hd]."""

    def __init__(self, tokens: tuple[int, ...], k: np.ndarray, v: np.ndarray) -> None:
        self.tokens, self.k, self.v = tokens, k, v

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class PrefixCache:
    """Several saved prefixes (across conversations), bounded by bytes with LRU eviction; a new
    prompt restores the entry sharing the longest prefix with it."""

    def __init__(self, max_bytes: int, min_tokens: int = 16) -> None:
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self.entries: OrderedDict[int, KVState] = OrderedDict()   # hash(tokens) -> state, LRU order

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values())

    def save(self, cache: KVCache) -> None:
        """Keep a copy of what the cache holds before it is overwritten."""
        if cache.offset < self.min_tokens or cache.nbytes_per_token * cache.offset > self.max_bytes:
            return
        key = hash(tuple(cache.tokens))
        if key in self.entries:
            self.entries.move_to_end(key)
            return
        self.entries[key] = cache.snapshot()
        while self.nbytes > self.max_bytes:
            self.entries.popitem(last=False)

    def best(self, ids: list[int]) -> tuple[KVState | None, int]:
        """The entry sharing the longest prefix with ids, and that length."""
        best, best_n = None, 0
        for key, state in self.entries.items():
            n = _common(state.tokens, ids)
            if n > best_n:
                best, best_n = key, n
        if best is None:
            return None, 0
        self.entries.move_to_end(best)
        return self.entries[best], best_n


def _common(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
