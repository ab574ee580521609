"""The fast CPU backend: Numba kernels (localllm.kernels) behind NumpyBackend's interface.

Weights change layout once, in `upload`: Q4_0/Q4_1/Q4_K/Q5_0/Q8_0/Q6_K matrices are repacked into the
row-interleaved r8 layout and multiplied in int8 against Q8_0-quantized activations (as llama.cpp
does), with the instruction set picked at run time (AVX-512 VNNI, AVX2, or portable loops).
Other matrix types (F32 and F16 kept in their precision, the rest dequantized to float32) are
interleaved the same way (kernels.ops's d8 layout) for a vectorised float matmul. Each op is one
compiled call writing into a fresh output array."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numba
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

from ..gguf_file import Tensor
from ..kv_cache import KVCache
from ..kernels import ops
from ..kernels.isa import available_isas, best_isa
from ..kernels.qmatmul import mul_r8
from ..kernels.quant import QK, R8_TYPES, R8Weight, dequantize_r8, quantize_q8_0, quantize_q8_0_serial, repack_r8
from .numpy_ref import NumpyBackend

SERIAL_QUANT_ROWS = 4  # below this many activation rows a parallel region costs more than it saves


@dataclass
class QuantWeight:
    r8: R8Weight
    qtype: QT


@dataclass
class DenseWeight:
    w: np.ndarray      # [ceil(n/8), ceil(k/16)*128] d8 layout of float32, or uint16 float16 bits
    qtype: QT
    rows: int
    cols: int


class NumbaBackend(NumpyBackend):
    name = "numba"
    kv_types = ("f16",)   # its attention kernels read the float16 cache directly

    def __init__(self, threads: int | None = None, isa: str | None = None) -> None:
        super().__init__(threads)
        if threads:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if isa is not None and isa not in available_isas():
            raise ValueError(f"instruction set {isa!r} not available here (have {available_isas()})")
        self.isa = isa or best_isa()
        self.fused = True                           # False: fused_forward declines (the op-by-op path runs)
        self._last_x: np.ndarray | None = None      # the activation quantized last, and its Q8_0 form:
        self._last_q: tuple[np.ndarray, ...] = ()   # q, k, v (and gate, up) share one input
        self._rope_tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}   # (n_rot, base, scale): cos, sin [n, n_rot/2]

    # --- weights ------------------------------------------------------------------------------
    def upload(self, tensor: Tensor):
        if tensor.data.ndim == 1:
            return super().upload(tensor)
        if tensor.type in R8_TYPES:
            return QuantWeight(repack_r8(tensor.data, tensor.type), tensor.type)
        if tensor.type == QT.F32:
            w = tensor.data.view(np.float32).reshape(tensor.shape)
        elif tensor.type == QT.F16:
            w = tensor.data.view(np.uint16).reshape(tensor.shape)
        else:
            w = dequantize(tensor.data, tensor.type).reshape(tensor.shape)
        return DenseWeight(ops.interleave_d8(w), tensor.type, *w.shape)

    def runs_as(self, tensor: Tensor) -> str:
        """How `tensor` is held and multiplied, in words."""
        t = tensor.type
        if tensor.data.ndim == 1:
            return f"{t.name}: float32 vector"
        if t == QT.Q6_K:
            return f"{t.name}: r8 6-bit quants + int8 sub-scales + float32 d, int8 dot with Q8_0 activations ({self.isa})"
        if t in R8_TYPES:
            kind = "u4 nibbles" if t in (QT.Q4_0, QT.Q4_1, QT.Q4_K) else "u8 bytes"
            scales = "float32" if t == QT.Q4_K else "float16"
            return f"{t.name}: r8 {kind} + {scales} d/m, int8 dot with Q8_0 activations ({self.isa})"
        held = {QT.F32: "float32", QT.F16: "float16"}.get(t, "dequantized to float32")
        return f"{t.name}: d8 row-interleaved {held}, float32 matmul"

    def get_rows(self, w, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if isinstance(w, QuantWeight):
            return dequantize_r8(w.r8, ids)
        rows = ops.deinterleave_d8(w.w, ids, w.cols)                 # [T, k]
        return rows.view(np.float16).astype(np.float32) if w.w.dtype == np.uint16 else rows.astype(np.float32)

    # --- the fused step -------------------------------------------------------------------------
    def fused_plan(self, model):
        """The model's FusedLlama (built on first use), or the reason it has none (str)."""
        plan = getattr(model, "_fused_plan", None)
        if plan is None:
            from .fused import FusedLlama
            plan = "disabled by LOCALLLM_FUSED=0" if os.environ.get("LOCALLLM_FUSED", "1") == "0" \
                else FusedLlama.build(model, self)
            model._fused_plan = plan
        return plan

    def fused_forward(self, model, tokens: np.ndarray, cache, all_logits: bool = False) -> np.ndarray | None:
        """The whole forward in one compiled call with one parallel region (kernels.fused), or None
        when the model does not fit it (the architecture then runs its op-by-op forward)."""
        if not self.fused or not isinstance(cache, KVCache) or cache.k.dtype != np.float16:
            return None
        plan = self.fused_plan(model)
        if isinstance(plan, str):
            return None
        return plan(np.asarray(tokens, dtype=np.int64), cache, all_logits)

    # --- ops ----------------------------------------------------------------------------------
    def _quantized(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """Q8_0 form of x [T, k], reused while the same array comes back."""
        if x is not self._last_x:
            T, k = x.shape
            q = np.empty((T, k), dtype=np.int8)                 # [T, k]
            d = np.empty((T, k // QK), dtype=np.float32)        # [T, k/32]
            s = np.empty((T, k // QK), dtype=np.float32)        # [T, k/32]
            (quantize_q8_0_serial if T < SERIAL_QUANT_ROWS else quantize_q8_0)(x, q, d, s)
            self._last_x, self._last_q = x, (q, d, s)
        return self._last_q

    def matmul(self, x: np.ndarray, w) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)                 # [T, k]
        if isinstance(w, QuantWeight):
            y = mul_r8(w.r8, *self._quantized(x), self.isa)            # [T, n padded to 8]
            return y if y.shape[1] == w.r8.rows else y[:, : w.r8.rows]
        y = np.empty((x.shape[0], w.w.shape[0] * ops.D8), dtype=np.float32)   # [T, n padded to 8]
        ops.mul_dense(w.w, x, y)
        return y if y.shape[1] == w.rows else y[:, : w.rows]

    def rms_norm(self, x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        ops.rms_norm(x.reshape(-1, x.shape[-1]), w, eps, out.reshape(-1, x.shape[-1]))
        return out

    def _cos_sin(self, pos: np.ndarray, n_rot: int, base: float, freq_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """The reference's angles (same float32 expression, element by element) at positions pos,
        rows of a table per rope setting that doubles when a position passes its end: a decode
        step gets two slices instead of a dozen small numpy calls (~40 µs a step)."""
        key, end = (n_rot, base, freq_scale), int(pos.max()) + 1
        cos, sin = self._rope_tables.get(key, (np.empty((0, n_rot // 2), np.float32),) * 2)
        if end > len(cos):
            n = max(end, 2 * len(cos), 256)
            inv = np.float32(base) ** (-np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot))
            theta = (np.arange(n, dtype=np.float32)[:, None] * np.float32(freq_scale)) * inv[None, :]  # [n, n_rot/2]
            cos, sin = self._rope_tables[key] = np.cos(theta), np.sin(theta)
        p0 = int(pos[0])
        # consecutive positions (every forward of one sequence): views; a CacheBatch's are not
        if len(pos) == end - p0 and (len(pos) == 1 or bool(np.all(np.diff(pos) == 1))):
            return cos[p0:end], sin[p0:end]
        return cos[pos], sin[pos]

    def rope(self, x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, neox: bool,
             freq_scale: float = 1.0) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)                 # [T, heads, d]
        out = np.empty_like(x)
        ops.rope(x, *self._cos_sin(pos, n_rot, base, freq_scale), neox, out)
        return out

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int,
                  pos0: int, scale: float, window: int = 0) -> np.ndarray:
        T, H, _ = q.shape
        cache.k[layer, pos0:pos0 + T] = k                             # float16, rounded like the reference
        cache.v[layer, pos0:pos0 + T] = v
        out = np.empty((T, H * v.shape[2]), dtype=np.float32)         # [T, H*dv]
        ops.attention(np.ascontiguousarray(q, dtype=np.float32), cache.k[layer].view(np.uint16),
                      cache.v[layer].view(np.uint16), pos0, np.float32(scale), window, out)
        return out

    def swiglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        out = np.empty_like(gate)
        ops.swiglu(gate, up, out)
        return out

    def geglu(self, gate: np.ndarray, up: np.ndarray) -> np.ndarray:
        out = np.empty_like(gate)
        ops.geglu(gate, up, out)
        return out
