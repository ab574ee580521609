"""Per-sequence KV cache: it owns its token history and offset, and can be trimmed back to any
position (a later turn then re-evaluates only what differs). `SequenceCache` is the contract every
backend's cache keeps (the host `KVCache` here, the OpenCL backend's device cache)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


KV_TYPES = ("f16", "f32", "q8_0")
QK = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0]  # values per Q8_0 block (32)


class SequenceCache(ABC):
    """What the generator needs of a cache: the tokens whose K/V rows are valid (`tokens`, in
    order; the generator appends to it once a forward has stored their rows), `offset`, `n_ctx`,
    `nbytes`, `trim`. Caches whose rows can be copied out and back (`can_snapshot`) serve the
    prefix cache and sessions."""

    n_ctx: int
    tokens: list[int]
    can_snapshot = False

    @property
    def offset(self) -> int:
        return len(self.tokens)

    @property
    @abstractmethod
    def nbytes(self) -> int: ...

    def trim(self, n: int) -> None:
        """Keep only the first n positions (rollback); later rows are overwritten on reuse."""
        del self.tokens[n:]

    def common_prefix(self, ids: list[int]) -> int:
        return _common(self.tokens, ids)

    def snapshot(self, n: int | None = None) -> "KVState":
        raise NotImplementedError(f"{type(self).__name__} keeps its rows where they cannot be copied out")

    def restore(self, state: "KVState") -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps its rows where they cannot be copied in")


class KVCache(SequenceCache):
    """k: [n_layers, n_ctx, n_kv_heads, head_dim_k], v: [..., head_dim_v]. kv_type "f16" (llama.cpp's
    default), "f32", or "q8_0": int8 values with one float16 scale per 32 (k_d, v_d:
    [n_layers, n_ctx, n_kv_heads, head_dim/32]), about half of f16's memory. np.zeros maps untouched
    pages lazily, so a long context costs memory only as it fills."""

    def __init__(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim_k: int, head_dim_v: int,
                 kv_type: str = "f16") -> None:
        if kv_type not in KV_TYPES:
            raise ValueError(f"kv_type must be one of {KV_TYPES}, not {kv_type!r}")
        if kv_type == "q8_0" and (head_dim_k % QK or head_dim_v % QK):
            raise ValueError(f"q8_0 KV needs head dims divisible by {QK} (got {head_dim_k}, {head_dim_v})")
        self.n_ctx, self.kv_type = n_ctx, kv_type
        dtype = {"f16": np.float16, "f32": np.float32, "q8_0": np.int8}[kv_type]
        self.k = np.zeros((n_layers, n_ctx, n_kv_heads, head_dim_k), dtype=dtype)
        self.v = np.zeros((n_layers, n_ctx, n_kv_heads, head_dim_v), dtype=dtype)
        self.arrays = {"k": self.k, "v": self.v}      # every per-position array, position on axis 1
        if kv_type == "q8_0":
            self.arrays["k_d"] = np.zeros((n_layers, n_ctx, n_kv_heads, head_dim_k // QK), dtype=np.float16)
            self.arrays["v_d"] = np.zeros((n_layers, n_ctx, n_kv_heads, head_dim_v // QK), dtype=np.float16)
        self.tokens: list[int] = []  # the tokens whose K/V rows are valid, in order

    can_snapshot = True

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    @property
    def nbytes_per_token(self) -> int:
        return self.nbytes // self.n_ctx

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Write rows pos0..pos0+T and return all valid rows 0..pos0+T as float32."""
        end = pos0 + k.shape[0]
        if self.kv_type != "q8_0":
            self.k[layer, pos0:end] = k
            self.v[layer, pos0:end] = v
            return self.k[layer, :end].astype(np.float32), self.v[layer, :end].astype(np.float32)
        out = []
        for name, x in (("k", k), ("v", v)):
            q, d = quantize_q8_0(x)
            self.arrays[name][layer, pos0:end], self.arrays[name + "_d"][layer, pos0:end] = q, d
            out.append(dequantize_q8_0(self.arrays[name][layer, :end], self.arrays[name + "_d"][layer, :end]))
        return out[0], out[1]

    def snapshot(self, n: int | None = None) -> "KVState":
        """A copy of the first n positions (default: all valid ones)."""
        n = self.offset if n is None else n
        return KVState(tuple(self.tokens[:n]), {name: a[:, :n].copy() for name, a in self.arrays.items()})

    def restore(self, state: "KVState") -> None:
        n = len(state.tokens)
        fits = n <= self.n_ctx and state.arrays.keys() == self.arrays.keys() and all(
            a.dtype == self.arrays[k].dtype and a.shape[0] == self.arrays[k].shape[0]
            and a.shape[2:] == self.arrays[k].shape[2:] and a.shape[1] == n for k, a in state.arrays.items())
        if not fits:
            raise ValueError("KV state does not fit this cache (other shape or KV type)")
        for name, a in state.arrays.items():
            self.arrays[name][:, :n] = a
        self.tokens = list(state.tokens)


def quantize_q8_0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., d] float -> int8 [..., d] and float16 scales [..., d/32], ggml's quantize_row_q8_0."""
    blocks = x.astype(np.float32).reshape(*x.shape[:-1], -1, QK)               # [..., d/32, 32]
    d = np.abs(blocks).max(axis=-1) / 127.0                                    # [..., d/32]
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.round(blocks * inv[..., None]).astype(np.int8)
    return q.reshape(x.shape), d.astype(np.float16)


def dequantize_q8_0(q: np.ndarray, d: np.ndarray) -> np.ndarray:
    blocks = q.reshape(*q.shape[:-1], -1, QK).astype(np.float32) * d.astype(np.float32)[..., None]
    return blocks.reshape(q.shape)


class KVState:
    """A detached copy of a cache prefix: tokens plus each cache array's rows [n_layers, n, ...]."""

    def __init__(self, tokens: tuple[int, ...], arrays: dict[str, np.ndarray]) -> None:
        self.tokens, self.arrays = tokens, arrays

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


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


class CacheBatch:
    """The rows of one forward split among sequences: segment i is lengths[i] consecutive tokens
    appended to caches[i] (continuous batching: one sweep over the weights serves every sequence,
    attention runs per segment over its own cache). forward then returns the last row of each
    segment (or every row with all_logits); with `hidden`, the final normalised hidden states
    instead of logits (embeddings). Host-memory caches only (KVCache)."""

    def __init__(self, caches: list[KVCache], lengths: list[int], hidden: bool = False) -> None:
        self.caches, self.lengths, self.hidden = caches, lengths, hidden
        self.ends = np.cumsum(lengths)

    @property
    def n_ctx(self) -> int:
        """The context the RoPE choice sees (LongRoPE's long factors past n_ctx_orig): the slots'."""
        return max(c.n_ctx for c in self.caches)

    def positions(self) -> np.ndarray:
        return np.concatenate([c.offset + np.arange(n) for c, n in zip(self.caches, self.lengths)])

    def spans(self) -> list[tuple[int, int, KVCache]]:
        return [(int(e) - n, int(e), c) for c, n, e in zip(self.caches, self.lengths, self.ends)]

    def last_rows(self) -> np.ndarray:
        return self.ends - 1
