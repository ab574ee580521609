"""The fused forward of the Numba backend: a whole llama step in one compiled call (kernels.fused).

`FusedLlama.build(model, backend)` checks that the model fits the fused step (llama architecture,
every matrix in an r8 encoding or the float d8 layout, shapes the stages can cut) and lays its
weights out once:
per slot (QKV stacked by rows, O, gate, up, down) one [n_layers, groups, bytes] array, whose
per-layer slices then replace the readable path's arrays (views: the memory is not doubled).
Calling the plan runs the step; scratch buffers are allocated once per token count.
A slot's matrices share one encoding: r8 ones multiply the Q8_0 form of the slot's input, d8 ones
(F16, F32, and the types the backend dequantizes) its float32 form, so an F16 model runs whole."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernels import fused as kf
from ..kernels.isa import AVX2, VNNI
from ..kernels.quant import QK, R
from ..kv_cache import KVCache

SLOTS = ("qkv", "o", "gate", "up", "down")
RESCUE_MAX_T = 8    # steps of up to this many tokens keep per-layer scratch and may rescue chunks


@dataclass
class Slot:
    kind: str
    zero: int        # R8Weight.zero: > 0 when m is -zero * d and not stored
    qs: np.ndarray   # [L, G, bytes]
    d: np.ndarray    # [L, G, nb*8]
    m: np.ndarray    # [L, G, nb*8], or [L, G, 0] when zero > 0

    @property
    def encoding(self) -> tuple[str, int]:
        return self.kind, self.zero


class _DenseSource:
    """A d8 float matrix (numba_cpu.DenseWeight) seen as a slot part like an R8Weight: kind D8,
    its weights in qs, no scales (d and m empty)."""
    kind, zero = kf.D8, 0

    def __init__(self, dense) -> None:
        self.dense, self.rows, self.cols = dense, dense.rows, dense.cols
        self.d = self.m = np.zeros((dense.w.shape[0], 0), np.float32)

    @property
    def qs(self) -> np.ndarray:
        return self.dense.w

    @qs.setter
    def qs(self, value: np.ndarray) -> None:
        self.dense.w = value


def _source(w):
    """A weight as a slot part (R8Weight or _DenseSource), or None if the step cannot read it."""
    from .numba_cpu import DenseWeight
    if isinstance(w, DenseWeight):
        return _DenseSource(w)
    return getattr(w, "r8", None)


def _stack(parts_per_layer: list[list]) -> Slot | str:
    """Per layer, a list of slot parts (_source) stacked by rows -> one Slot; rebinds the sources
    as views."""
    flat = [w for parts in parts_per_layer for w in parts]
    if len({w.qs.dtype for w in flat}) != 1:
        return "mixed weight precisions in one slot"
    kinds = {(w.kind, w.zero) for w in flat}
    if len(kinds) != 1:
        return "mixed weight encodings in one slot"
    if any(w.rows % R for w in flat):
        return "a matrix row count that is not a multiple of 8"
    if len({w.cols for w in flat}) != 1:
        return "mismatched widths"

    def common(arrays):   # float16 scales mixed with float32 ones (Q4_K) go float32
        return arrays[0].dtype if len({a.dtype for a in arrays}) == 1 else np.float32
    d_dtype, m_dtype = common([w.d for w in flat]), common([w.m for w in flat])

    def scales(a, dtype):
        return a if a.dtype == dtype else a.view(np.float16).astype(np.float32)  # only f16 -> f32 happens

    qs = np.stack([np.concatenate([w.qs for w in parts]) for parts in parts_per_layer])
    d = np.stack([np.concatenate([scales(w.d, d_dtype) for w in parts]) for parts in parts_per_layer])
    m = np.stack([np.concatenate([scales(w.m, m_dtype) for w in parts]) for parts in parts_per_layer])
    for l, parts in enumerate(parts_per_layer):                  # the readable path now reads the stack
        g = 0
        for w in parts:
            n = w.qs.shape[0]
            w.qs = qs[l, g:g + n]
            if w.d.dtype == d_dtype and w.m.dtype == m_dtype:
                w.d, w.m = d[l, g:g + n], m[l, g:g + n]
            g += n
    return Slot(*kinds.pop(), qs, d, m)


def _line_aligned(n: int) -> np.ndarray:
    """n zeroed int64 starting on a 64-byte cache line (each thread's counters own their lines)."""
    raw = np.zeros(n + 8, dtype=np.int64)
    skip = (-raw.ctypes.data % 64) // 8
    return raw[skip:skip + n]


class FusedLlama:
    """A llama model's fused step; build() returns it, or the reason (str) it does not apply."""

    @classmethod
    def build(cls, model, backend) -> "FusedLlama | str":
        c = model.cfg
        if c.arch != "llama" or not hasattr(model, "rope_neox"):
            return f"architecture {c.arch} has no fused step"
        if backend.isa not in (VNNI, AVX2):
            return f"instruction set {backend.isa} has no fused step"
        if c.head_dim_v % QK or c.ffn_dim % QK or c.dim % QK or c.head_dim_k % 16 or c.n_heads % c.n_kv_heads:
            return "shapes the fused stages cannot cut"
        layers = model.layers
        names = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
        if not all(_source(getattr(L, n, None)) is not None for L in layers for n in names):
            return "a layer matrix outside the r8 and d8 encodings"
        if _source(model.output_weight()) is None:
            return "an output matrix outside the r8 and d8 encodings"
        slots = {}
        for slot, parts in (("qkv", ("attn_q", "attn_k", "attn_v")), ("o", ("attn_output",)),
                            ("gate", ("ffn_gate",)), ("up", ("ffn_up",)), ("down", ("ffn_down",))):
            s = _stack([[_source(getattr(L, n)) for n in parts] for L in layers])
            if isinstance(s, str):
                return f"{slot}: {s}"
            slots[slot] = s
        if slots["gate"].encoding != slots["up"].encoding or slots["gate"].d.dtype != slots["up"].d.dtype:
            return "gate and up differ in encoding"
        return cls(model, backend, slots)

    def __init__(self, model, backend, slots: dict[str, Slot]) -> None:
        c = model.cfg
        self.model, self.backend, self.cfg, self.slots = model, backend, c, slots
        self.attn_norm = np.ascontiguousarray(np.stack([L.attn_norm for L in model.layers]), dtype=np.float32)
        self.ffn_norm = np.ascontiguousarray(np.stack([L.ffn_norm for L in model.layers]), dtype=np.float32)
        self.out_norm = np.ascontiguousarray(model.w("output_norm"), dtype=np.float32)
        self.out_src = _source(model.output_weight())
        self.out = ((self.out_src.kind, self.out_src.zero), self.out_src.qs, self.out_src.d, self.out_src.m)
        self.step = kf.llama_step(backend.isa, slots["qkv"].encoding, slots["o"].encoding, slots["gate"].encoding,
                                  slots["down"].encoding, self.out[0])
        self.sync = np.zeros(0, dtype=np.int64)   # sized for the thread count at the first call
        self._bufs: dict[tuple[int, int], tuple] = {}
        self.epoch = 0
        self.stats = np.zeros((8, 4), np.int64)   # per thread: chunks claimed, rescued, wait cycles, region cycles

    def describe(self) -> str:
        s = self.slots
        return (f"fused llama step ({self.backend.isa}): qkv {s['qkv'].kind}, o {s['o'].kind}, ffn {s['gate'].kind}/"
                f"{s['down'].kind}, output {self.out[0][0]}")

    def _buffers(self, T: int, To: int) -> tuple:
        """Scratch for a T-token step: one slice per layer and use while T <= RESCUE_MAX_T (so
        that a rescued chunk rewrites what it wrote; see kernels.fused), else one shared slice."""
        key = (T, To)
        b = self._bufs.get(key)
        if b is None:
            c = self.cfg
            L, dim, ffn = c.n_layers, c.dim, c.ffn_dim
            qkvw = c.n_heads * c.head_dim_k + c.n_kv_heads * (c.head_dim_k + c.head_dim_v)
            attw = c.n_heads * c.head_dim_v
            per = T <= RESCUE_MAX_T
            NX, NH, NL, NP = (2 * L + 1, 2 * L + 1, L, 2 * L) if per else (1, 1, 1, 1)
            f32 = np.float32

            def q8(lead, k):
                return (np.zeros(lead + (k,), np.int8), np.zeros(lead + (k // QK,), f32),
                        np.zeros(lead + (k // QK,), f32))
            vocab_rows = self.out[1].shape[0] * R
            x = np.zeros((NX, T, dim), f32)
            b = ((x, np.zeros((NH, T, dim), f32)) + q8((NH, T), dim) + (np.zeros((NL, T, qkvw), f32),
                 np.zeros((NL, T, attw), f32)) + q8((NL, T), attw) + (np.zeros((NP, T, dim), f32),)
                 + tuple(np.zeros((NL, T, ffn), f32) for _ in range(3)) + q8((NL, T), ffn) + q8((To,), dim)
                 + (np.zeros((To, vocab_rows), f32),))
            width = kf.max_chunks(T, c.n_heads, c.n_kv_heads, dim, qkvw, ffn, vocab_rows)
            flags = np.zeros((kf.n_stages(L), width), np.int64)
            rescue = kf.RESCUE_CYCLES if per else 0
            if len(self._bufs) > 4:
                self._bufs.clear()
            b = self._bufs[key] = (b, flags, rescue)
        return b

    def __call__(self, tokens: np.ndarray, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        c, ops, s = self.cfg, self.backend, self.slots
        T, pos0 = len(tokens), cache.offset
        if pos0 + T > cache.n_ctx:
            raise IndexError(f"KV cache full: {pos0} + {T} > {cache.n_ctx}")
        pos = pos0 + np.arange(T)
        r0 = 0 if all_logits else T - 1
        bufs, flags, rescue = self._buffers(T, T - r0)
        x = bufs[0]
        x[0] = ops.get_rows(self.model.w("token_embd"), tokens)                                      # [T, dim]
        cos, sin = ops._cos_sin(pos, c.n_rot, c.rope_base, c.rope_freq_scale)                           # [T, n_rot/2]
        self.epoch += 1
        _, oqs, od, om = self.out
        nthreads = kf.n_threads()
        if len(self.sync) != kf.sync_slots(c.n_layers, nthreads):
            self.sync = _line_aligned(kf.sync_slots(c.n_layers, nthreads))
        self.step(x, r0, pos0, np.ascontiguousarray(cos), np.ascontiguousarray(sin), self.model.rope_neox,
                  c.norm_eps, np.float32(1.0 / math.sqrt(c.head_dim_k)), 0, self.stats,
                  self.attn_norm, self.ffn_norm, self.out_norm,
                  s["qkv"].qs, s["qkv"].d, s["qkv"].m, s["o"].qs, s["o"].d, s["o"].m, s["gate"].qs, s["gate"].d,
                  s["gate"].m, s["up"].qs, s["up"].d, s["up"].m, s["down"].qs, s["down"].d, s["down"].m,
                  oqs, od, om, cache.k.view(np.uint16), cache.v.view(np.uint16),
                  c.n_heads, c.n_kv_heads, c.head_dim_k, c.head_dim_v, *bufs[1:], self.sync, flags, self.epoch,
                  rescue, nthreads)
        return bufs[-1][:, :self.out_src.rows].copy()
