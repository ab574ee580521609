"""The fast CPU backend: Numba kernels (localllm.kernels) behind NumpyBackend's interface.

Weights change layout once, in `upload`: Q4_0/Q4_1/Q4_K/Q5_0/Q8_0/Q6_K matrices are repacked into the
row-interleaved r8 layout and multiplied in int8 against Q8_0-quantized activations (as llama.cpp
does), with the instruction set picked at run time (AVX-512 VNNI, AVX2, or portable loops).
Other matrix types (F32 and F16 kept in their precision, the rest dequantized to float32) are
interleaved the same way (kernels.ops's d8 layout) for a vectorised float matmul. Each op is one
compiled call writing into a fresh output array."""
from __future__ import annotations

import logging
import os

import numba
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize

from ..gguf_file import Tensor
from ..kv_cache import KVCache
from ..kernels import ops
from ..kernels.isa import available_isas, best_isa
from ..kernels.qmatmul import mul_r8
from ..kernels.quant import QK, R8_TYPES, dequantize_r8, quantize_q8_0, quantize_q8_0_serial, repack_r8
from . import rope
from .numba_weights import DenseWeight, QuantWeight
from .numpy_ref import NumpyBackend
from .step import LlamaStep

log = logging.getLogger(__name__)

# what the compiled step (kernels.step) computes beyond a plain llama block: nothing yet, so a model
# that needs any feature (Model.features: biases, rope factors, QK-norm, soft-capping...) runs op by op
COMPILED_STEP_FEATURES: frozenset[str] = frozenset()
SERIAL_QUANT_ROWS = 4  # below this many activation rows a parallel region costs more than it saves


class NumbaBackend(NumpyBackend):
    name = "cpu"
    kv_types = ("f16",)   # its attention kernels read the float16 cache directly

    def __init__(self, threads: int | None = None, isa: str | None = None) -> None:
        super().__init__(threads)
        if threads:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        if isa is not None and isa not in available_isas():
            raise ValueError(f"instruction set {isa!r} not available here (have {available_isas()})")
        self.isa = isa or best_isa()
        self._last_x: np.ndarray | None = None      # the activation quantized last, and its Q8_0 form:
        self._last_q: tuple[np.ndarray, ...] = ()   # q, k, v (and gate, up) share one input
        self._rope_tables: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}   # rope setting: cos, sin [n, n_rot/2]
        self._warned_softcap = False

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

    # --- the compiled step ---------------------------------------------------------------------
    def compiled_step(self, model) -> LlamaStep | str:
        """The whole forward in one compiled call with one parallel region (backend.step,
        kernels.step), or the reason the model runs op by op (str)."""
        extra = sorted(model.features() - COMPILED_STEP_FEATURES)
        if os.environ.get("LOCALLLM_COMPILED_STEP", "1") == "0":
            return "disabled by LOCALLLM_COMPILED_STEP=0"
        if extra:
            return f"the compiled step lacks {', '.join(extra)}"
        return LlamaStep.build(model, self)

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

    def _cos_sin(self, pos: np.ndarray, n_rot: int, base: float, freq_scale: float,
                 factors: np.ndarray | None = None, mscale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """The reference's angles (backend/rope.py, element by element) at positions pos, rows of a
        table per rope setting that doubles when a position passes its end: a decode step gets
        two slices instead of a dozen small numpy calls (~40 µs a step)."""
        key = (n_rot, base, freq_scale, None if factors is None else factors.tobytes(), mscale)
        end = int(pos.max()) + 1
        cos, sin = self._rope_tables.get(key, (np.empty((0, n_rot // 2), np.float32),) * 2)
        if end > len(cos):
            n = max(end, 2 * len(cos), 256)
            cos, sin = self._rope_tables[key] = rope.cos_sin(np.arange(n), n_rot, base,
                                                             freq_scale, factors, mscale)   # [n, n_rot/2]
        p0 = int(pos[0])
        # consecutive positions (every forward of one sequence): views; a CacheBatch's are not
        if len(pos) == end - p0 and (len(pos) == 1 or bool(np.all(np.diff(pos) == 1))):
            return cos[p0:end], sin[p0:end]
        return cos[pos], sin[pos]

    def rope(self, x: np.ndarray, pos: np.ndarray, n_rot: int, base: float, neox: bool,
             freq_scale: float = 1.0, factors: np.ndarray | None = None, mscale: float = 1.0) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)                 # [T, heads, d]
        out = np.empty_like(x)
        ops.rope(x, *self._cos_sin(pos, n_rot, base, freq_scale, factors, mscale), neox, out)
        return out

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, cache: KVCache, layer: int,
                  pos0: int, scale: float, window: int = 0, softcap: float = 0.0) -> np.ndarray:
        if softcap > 0:
            # the SIMD attention kernels have no soft-capping: the reference's attention (float32
            # scores from the same float16 cache) does it
            if not self._warned_softcap:
                log.info("attention soft-capping runs in the numpy reference attention (no SIMD kernel)")
                self._warned_softcap = True
            return super().attention(q, k, v, cache, layer, pos0, scale, window, softcap)
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
