"""The compiled step of the Numba backend: a whole llama step in one compiled call (kernels.step).

`LlamaStep.build(model, backend)` checks that the model fits the compiled step (llama
architecture, every matrix in an r8 encoding or the float d8 layout, shapes the stages can cut)
and lays its weights out once:
per slot (QKV stacked by rows, O, gate, up, down) one [n_layers, groups, bytes] array, whose
per-layer slices then replace the readable forward's arrays (views: the memory is not doubled).
Calling the step runs it; scratch buffers are allocated once per token count.
A slot's matrices share one encoding: r8 ones multiply the Q8_0 form of the slot's input, d8 ones
(F16, F32, and the types the backend dequantizes) its float32 form, so an F16 model runs whole."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..kernels import step as ks
from ..kernels.isa import AVX2, VNNI
from ..kernels.quant import QK, R
from ..kv_cache import KVCache
from .numba_weights import DenseWeight, QuantWeight

RESCUE_MAX_T = 8    # steps of up to this many tokens keep per-layer scratch and may rescue chunks


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


@dataclass
class Slot:
    """A slot's stacked weights and their encoding."""
    kind: str
    zero: int        # R8Weight.zero: > 0 when m is -zero * d and not stored
    qs: np.ndarray   # [L, G, bytes]
    d: np.ndarray    # [L, G, nb*8]
    m: np.ndarray    # [L, G, nb*8], or [L, G, 0] when zero > 0

    @property
    def encoding(self) -> tuple[str, int]:
        return self.kind, self.zero

    @property
    def arrays(self) -> ks.Slot:
        return ks.Slot(self.qs, self.d, self.m)


class _DenseSource:
    """A d8 float matrix (numba_weights.DenseWeight) seen as a slot part like an R8Weight: kind D8,
    its weights in qs, no scales (d and m empty)."""
    kind, zero = ks.D8, 0

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
    if isinstance(w, DenseWeight):
        return _DenseSource(w)
    return w.r8 if isinstance(w, QuantWeight) else None


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


class LlamaStep:
    """A llama model's compiled step; build() returns it, or the reason (str) it does not apply.
    Called as the model's forward: (tokens, cache, all_logits) -> logits, or None for a cache it
    cannot write (the readable forward then runs)."""

    @classmethod
    def build(cls, model, backend) -> "LlamaStep | str":
        c = model.cfg
        if c.arch != "llama":
            return f"architecture {c.arch} has no compiled step"
        if backend.isa not in (VNNI, AVX2):
            return f"instruction set {backend.isa} has no compiled step"
        if c.head_dim_v % QK or c.ffn_dim % QK or c.dim % QK or c.head_dim_k % 16 or c.n_heads % c.n_kv_heads:
            return "shapes the step's stages cannot cut"
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
        out = _source(model.output_weight())
        self.out_slot, self.vocab = Slot(out.kind, out.zero, out.qs[None], out.d[None], out.m[None]), out.rows
        self.weights = ks.Weights(
            attn_norm=_f32(np.stack([L.attn_norm for L in model.layers])), attn_qkv=slots["qkv"].arrays,
            attn_output=slots["o"].arrays, ffn_norm=_f32(np.stack([L.ffn_norm for L in model.layers])),
            ffn_gate=slots["gate"].arrays, ffn_up=slots["up"].arrays, ffn_down=slots["down"].arrays,
            output_norm=_f32(model.w("output_norm")), output=self.out_slot.arrays)
        self.hparams = ks.Hparams(c.n_heads, c.n_kv_heads, c.head_dim_k, c.head_dim_v, bool(model.rope_neox),
                                  float(c.norm_eps), np.float32(1.0 / math.sqrt(c.head_dim_k)), 0)
        self.step = ks.llama_step(backend.isa, slots["qkv"].encoding, slots["o"].encoding, slots["gate"].encoding,
                                  slots["down"].encoding, self.out_slot.encoding)
        self.sync = np.zeros(0, dtype=np.int64)   # sized for the thread count at the first call
        self._scratch: dict[tuple[int, int], tuple[ks.Scratch, np.ndarray, int]] = {}
        self.epoch = 0
        self.stats = np.zeros((8, 4), np.int64)   # per thread: chunks claimed, rescued, wait cycles, region cycles

    def describe(self) -> str:
        s = self.slots
        return (f"llama, {self.backend.isa}; weights: qkv {s['qkv'].kind}, o {s['o'].kind}, ffn {s['gate'].kind}/"
                f"{s['down'].kind}, output {self.out_slot.kind}")

    def _buffers(self, T: int, To: int) -> tuple[ks.Scratch, np.ndarray, int]:
        """Scratch, flags and rescue threshold for a T-token step: one slice per layer and use
        while T <= RESCUE_MAX_T (so that a rescued chunk rewrites what it wrote; see
        kernels.step), else one shared slice."""
        key = (T, To)
        b = self._scratch.get(key)
        if b is None:
            c = self.cfg
            L, dim, ffn = c.n_layers, c.dim, c.ffn_dim
            qkvw = c.n_heads * c.head_dim_k + c.n_kv_heads * (c.head_dim_k + c.head_dim_v)
            attw = c.n_heads * c.head_dim_v
            per = T <= RESCUE_MAX_T
            NX, NH, NL, NP = (2 * L + 1, 2 * L + 1, L, 2 * L) if per else (1, 1, 1, 1)
            vocab_rows = self.out_slot.qs.shape[1] * R
            f32 = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731

            def rows(U, T, k):
                return ks.Rows(f32(U, T, k), np.zeros((U, T, k), np.int8), f32(U, T, k // QK), f32(U, T, k // QK))
            scratch = ks.Scratch(x=f32(NX, T, dim), h=rows(NH, T, dim), qkv=f32(NL, T, qkvw), att=rows(NL, T, attw),
                                 proj=f32(NP, T, dim), gate=f32(NL, T, ffn), up=f32(NL, T, ffn), ff=rows(NL, T, ffn),
                                 out=rows(1, To, dim), logits=f32(To, vocab_rows))
            width = ks.max_chunks(T, c.n_heads, c.n_kv_heads, dim, qkvw, ffn, vocab_rows)
            flags = np.zeros((ks.n_stages(L), width), np.int64)
            if len(self._scratch) > 4:
                self._scratch.clear()
            b = self._scratch[key] = (scratch, flags, ks.RESCUE_CYCLES if per else 0)
        return b

    def __call__(self, tokens: np.ndarray, cache, all_logits: bool = False) -> np.ndarray | None:
        if not isinstance(cache, KVCache) or cache.k.dtype != np.float16:
            return None
        c, ops = self.cfg, self.backend
        tokens = np.asarray(tokens, dtype=np.int64)
        T, pos0 = len(tokens), cache.offset
        if pos0 + T > cache.n_ctx:
            raise IndexError(f"KV cache full: {pos0} + {T} > {cache.n_ctx}")
        r0 = 0 if all_logits else T - 1
        scratch, flags, rescue = self._buffers(T, T - r0)
        scratch.x[0] = ops.get_rows(self.model.w("token_embd"), tokens)                           # [T, dim]
        cos, sin = ops._cos_sin(pos0 + np.arange(T), c.n_rot, c.rope_base, c.rope_freq_scale)     # [T, n_rot/2]
        self.epoch += 1
        nthreads = ks.n_threads()
        if len(self.sync) != ks.sync_slots(c.n_layers, nthreads):
            self.sync = _line_aligned(ks.sync_slots(c.n_layers, nthreads))
        self.sync[:] = 0
        tok = ks.Tokens(pos0, r0, np.ascontiguousarray(cos), np.ascontiguousarray(sin))
        sync = ks.Sync(self.sync, flags, self.epoch, rescue, nthreads, self.stats)
        self.step(*self.weights, self.hparams, tok, cache.k.view(np.uint16), cache.v.view(np.uint16), *scratch, sync)
        return scratch.logits[:, :self.vocab].copy()
