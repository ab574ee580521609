"""OpenCLBackend: the Backend ops as OpenCL kernels (kernels/opencl/*.cl) on one device.

Weights are uploaded once (weights.py); activations are DeviceArray handles that stay on the
device between ops; the KV cache lives on the device (kv.py); only `to_numpy` (the logits) reads
back. Every kernel enqueue is counted in `launches` and every host-to-device write in `writes`,
so the bench can report launches per token.

Decode (one-token forwards) is recorded once per KV cache and replayed (replay.py): the forward
below runs op by op the first time, and later steps re-enqueue its launches with new token ids
and positions, which every kernel reads from device buffers rather than scalar arguments."""
from __future__ import annotations

import logging
import math
import os
import weakref

import numpy as np
from gguf.quants import dequantize

from ...errors import ContextOverflowError, UnsupportedModelError
from ...gguf_file import Tensor
from .. import rope
from ..base import Backend
from . import weights
from .device import ENV_DEVICE, MAX_DK, MAX_DV_PER, cl, open_device
from .kv import KV_TYPES, DeviceKVCache
from .replay import DecodePlan, Recorder
from .weights import DeviceWeight

log = logging.getLogger(__name__)

GEMV_MAX_T = 4   # up to this many activation rows the matvec (re-reading weights per row) wins
TILE = 32        # matmul.cl's output tile
RB = 8           # gemv.cl's matmul_rows: tokens per work-item
EW_LS = 64       # element-wise work-group size


class DeviceArray:
    """A float32 array on the device: a buffer, a shape, and an element offset (a first-axis
    slice such as the forward's x[-1:]; ops copy it out before use)."""

    __slots__ = ("buf", "shape", "offset")

    def __init__(self, buf, shape: tuple[int, ...], offset: int = 0) -> None:
        self.buf, self.shape, self.offset = buf, tuple(int(s) for s in shape), offset

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * 4

    def reshape(self, *shape) -> DeviceArray:
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(self.size // known if s == -1 else s for s in shape)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} to {shape}")
        return DeviceArray(self.buf, shape, self.offset)

    def __getitem__(self, key) -> DeviceArray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("device arrays support only first-axis slices with step 1")
        start, stop, _ = key.indices(self.shape[0])
        row = self.size // self.shape[0]
        return DeviceArray(self.buf, (max(stop - start, 0), *self.shape[1:]), self.offset + start * row)


class OpenCLBackend(Backend):
    name = "opencl"
    kv_types = KV_TYPES
    draft_shares = True   # per-model state is keyed by model and cache (the decode plans)

    def __init__(self, threads: int | None = None, device: str | None = None) -> None:
        ocl = cl()
        self.dev = open_device(device if device is not None else os.environ.get(ENV_DEVICE))
        self.queue, self.kernels = self.dev.queue, self.dev.kernels
        self.pool = ocl.tools.MemoryPool(ocl.tools.ImmediateAllocator(self.queue))  # activations
        self.launches = 0   # kernel enqueues and device-side copies
        self.writes = 0     # host-to-device transfers (token ids, positions)
        self.replay = True  # False: every forward runs op by op (tests compare the two)
        self.replays = 0    # decode steps replayed
        self.fuse = True    # False: a replay enqueues the recorded launches unfused
        self._positions: dict[bytes, DeviceArray] = {}       # this forward's positions [T] int32
        self._inv_freq: dict[tuple, DeviceArray] = {}        # rope's inv frequencies [n_rot/2]
        self._pending: list = []                             # non-blocking writes in flight
        self._rec: Recorder | None = None                    # set while a decode step is recorded
        self._plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cache -> {key: plan}

    # --- weights ------------------------------------------------------------------------------
    def decline_reason(self, tensor: Tensor) -> str | None:
        return weights.decline_reason(tensor)

    def runs_as(self, tensor: Tensor) -> str:
        return weights.runs_as(tensor)

    def upload(self, tensor: Tensor) -> DeviceWeight | DeviceArray:
        if tensor.data.ndim == 1:  # norms: float32 vectors
            v = np.ascontiguousarray(dequantize(tensor.data, tensor.type).reshape(tensor.shape), dtype=np.float32)
            return DeviceArray(self.dev.buffer(v.nbytes, tensor.name, v), v.shape)
        return weights.upload(self.dev, tensor, tensor.name)

    def new_kv_cache(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim_k: int,
                     head_dim_v: int, kv_type: str = "f16") -> DeviceKVCache:
        if head_dim_k > MAX_DK or head_dim_v > MAX_DV_PER * self.dev.att_ls:
            raise UnsupportedModelError(f"head dims {head_dim_k}/{head_dim_v} exceed the OpenCL attention "
                                        f"kernel's {MAX_DK}/{MAX_DV_PER * self.dev.att_ls}")
        return DeviceKVCache(self.dev, n_layers, n_ctx, n_kv_heads, head_dim_k, head_dim_v, kv_type)

    # --- plumbing -----------------------------------------------------------------------------
    def _empty(self, shape: tuple[int, ...]) -> DeviceArray:
        return DeviceArray(self.pool.allocate(max(math.prod(shape), 1) * 4), shape)

    def _write(self, host: np.ndarray, role: str | None = None) -> DeviceArray:
        """A small host array copied to a fresh device buffer. The write does not block: its event
        (which keeps `host` alive) is held until the next read-back. `role` names a per-step
        input ("ids", "pos") that a decode replay rewrites."""
        out = DeviceArray(self.pool.allocate(max(host.nbytes, 4)), host.shape)
        self._pending.append(cl().enqueue_copy(self.queue, out.buf, host, is_blocking=False))
        self.writes += 1
        if self._rec is not None:
            self._rec.write(role, out.buf, host)
        return out

    def _dense(self, x: DeviceArray) -> DeviceArray:
        """x with offset 0: a sliced view is copied out on the device."""
        if x.offset == 0:
            return x
        out = self._empty(x.shape)
        cl().enqueue_copy(self.queue, out.buf, x.buf, byte_count=x.nbytes, src_offset=x.offset * 4)
        self.launches += 1
        if self._rec is not None:
            self._rec.copy(out.buf, x.buf, x.nbytes, x.offset * 4)
        return out

    def _run(self, name: str, gsize: tuple[int, ...], lsize: tuple[int, ...] | None, *args) -> None:
        self.kernels[name](self.queue, gsize, lsize, *args)
        self.launches += 1
        if self._rec is not None:
            self._rec.launch(name, gsize, lsize, args)

    def _elementwise(self, name: str, inputs: list[DeviceArray], *scalars) -> DeviceArray:
        inputs = [self._dense(x) for x in inputs]
        n = inputs[0].size
        out = self._empty(inputs[0].shape)
        g = -(-n // EW_LS) * EW_LS
        self._run(name, (g,), (EW_LS,), *[x.buf for x in inputs], out.buf, *scalars, np.int32(n))
        return out

    # --- ops ----------------------------------------------------------------------------------
    def get_rows(self, w: DeviceWeight, ids: np.ndarray) -> DeviceArray:
        ids_d = self._write(np.ascontiguousarray(ids, dtype=np.int32), "ids")   # [T]
        out = self._empty((len(ids), w.k))                                   # [T, k]
        g0 = -(-w.k // EW_LS) * EW_LS
        self._run(f"get_rows_{w.kind}", (g0, len(ids)), (EW_LS, 1), w.q, w.d, w.m, ids_d.buf, out.buf,
                  np.int32(w.k))
        return out

    def matmul(self, x: DeviceArray, w: DeviceWeight) -> DeviceArray:
        x = self._dense(x)
        T = x.size // w.k
        out = self._empty((T, w.n))                                           # [T, n]
        args = (w.q, w.d, w.m, x.buf, out.buf, np.int32(w.n), np.int32(w.k))
        if not self.dev.tiled:      # CPU devices: barrier-free kernel, any T
            self._run(f"matmul_rows_{w.kind}_f32", (w.n, -(-T // RB)), None, *args, np.int32(T))
        elif T <= GEMV_MAX_T:
            rows = self.dev.rows_of["gemv"]
            self._run(f"gemv_{w.kind}_f32", (-(-w.n // rows) * self.dev.ls, T), (self.dev.ls, 1), *args)
        else:
            g = (-(-w.n // TILE) * 16, -(-T // TILE) * 16)
            self._run(f"matmul_{w.kind}_f32", g, (16, 16), *args, np.int32(T))
        return out

    def add(self, a: DeviceArray, b: DeviceArray) -> DeviceArray:
        return self._elementwise("add_f32", [a, b])

    def scale(self, x: DeviceArray, s: float) -> DeviceArray:
        return self._elementwise("scale_f32", [x], np.float32(s))

    def bias(self, x: DeviceArray, b: DeviceArray) -> DeviceArray:
        x = self._dense(x)
        out = self._empty(x.shape)
        n = x.size
        self._run("add_row_f32", (-(-n // EW_LS) * EW_LS,), (EW_LS,), x.buf, b.buf, out.buf, np.int32(b.size),
                  np.int32(n))
        return out

    def softcap(self, x: DeviceArray, cap: float) -> DeviceArray:
        return self._elementwise("softcap_f32", [x], np.float32(cap))

    def swiglu(self, gate: DeviceArray, up: DeviceArray) -> DeviceArray:
        return self._elementwise("swiglu_f32", [gate, up])

    def geglu(self, gate: DeviceArray, up: DeviceArray) -> DeviceArray:
        return self._elementwise("geglu_f32", [gate, up])

    def rms_norm(self, x: DeviceArray, w: DeviceArray, eps: float) -> DeviceArray:
        x = self._dense(x)
        d = x.shape[-1]
        out = self._empty(x.shape)
        ls = self.dev.ls
        self._run("rms_norm_f32", ((x.size // d) * ls,), (ls,), x.buf, w.buf, out.buf, np.int32(d), np.float32(eps))
        return out

    def _pos(self, pos: np.ndarray) -> DeviceArray:
        """Positions [T] as a device int32 array, written once per forward (rope and attention of
        every layer share it)."""
        key = np.ascontiguousarray(pos, dtype=np.int32).tobytes()
        if key not in self._positions:
            if len(self._positions) >= 4:   # a new forward: older positions are done with
                self._positions.clear()
            self._positions[key] = self._write(np.frombuffer(key, dtype=np.int32), "pos")
        return self._positions[key]

    def _inv(self, n_rot: int, base: float, factors: np.ndarray | None = None) -> DeviceArray:
        """rope's inverse frequencies [n_rot/2] (divided by the per-pair factors), the reference's
        float32 expression, uploaded once."""
        key = (n_rot, base, None if factors is None else factors.tobytes())
        if key not in self._inv_freq:
            inv = rope.inv_frequencies(n_rot, base, factors)
            self._inv_freq[key] = DeviceArray(self.dev.buffer(inv.nbytes, "rope frequencies", inv), inv.shape)
        return self._inv_freq[key]

    def rope(self, x: DeviceArray, pos: np.ndarray, n_rot: int, base: float, neox: bool,
             freq_scale: float = 1.0, factors: np.ndarray | None = None, mscale: float = 1.0) -> DeviceArray:
        x = self._dense(x)                                                   # [T, heads, d]
        T, heads, d = x.shape
        out = self._empty(x.shape)
        g0 = -(-(d // 2) // EW_LS) * EW_LS
        args = (x.buf, self._pos(pos).buf, self._inv(n_rot, base, factors).buf, out.buf, np.int32(heads), np.int32(d),
                np.int32(n_rot), np.int32(neox), np.float32(freq_scale))
        if mscale != 1.0:
            self._run("rope_mscale_f32", (g0, T * heads), (EW_LS, 1), *args, np.float32(mscale))
        else:
            self._run("rope_f32", (g0, T * heads), (EW_LS, 1), *args)
        return out

    def attention(self, q: DeviceArray, k: DeviceArray, v: DeviceArray, cache: DeviceKVCache, layer: int,
                  pos0: int, scale: float, window: int = 0, softcap: float = 0.0) -> DeviceArray:
        q, k, v = self._dense(q), self._dense(k), self._dense(v)
        T, H, dk = q.shape
        kv_heads, dv = v.shape[1], v.shape[2]
        if pos0 + T > cache.n_ctx:
            raise ContextOverflowError(f"positions {pos0}..{pos0 + T} do not fit the context of {cache.n_ctx}")
        nk, nv = k.size, v.size
        pos = self._pos(np.arange(pos0, pos0 + T)).buf                       # [T]
        sizes = (np.int32(cache.row_k), np.int32(cache.row_v), np.int32(nk), np.int32(nv))
        if cache.kv_type == "q8_0":      # one work-item per 32 values
            kv = (cache.k[layer], cache.k_d[layer], cache.v[layer], cache.v_d[layer])
            self._run("kv_store_q8_0", (-(-max(nk, nv) // (32 * EW_LS)) * EW_LS,), (EW_LS,), k.buf, v.buf, *kv, pos,
                      *sizes)
        else:
            kv = (cache.k[layer], cache.v[layer])
            self._run("kv_store_f16", (-(-max(nk, nv) // EW_LS) * EW_LS,), (EW_LS,), k.buf, v.buf, *kv, pos, *sizes)
        out = self._empty((T, H * dv))                                       # [T, H*dv]
        ls = self.dev.att_ls * self.dev.att_ns
        self._run(f"attention_f32_{cache.kv_type}kv", (H * ls, T), (ls, 1), q.buf, *kv, out.buf,
                  np.int32(H), np.int32(kv_heads), np.int32(dk), np.int32(dv), pos, np.float32(scale),
                  np.int32(window), np.float32(softcap))
        return out

    def to_numpy(self, x: DeviceArray) -> np.ndarray:
        out = np.empty(x.shape, dtype=np.float32)
        if out.size:
            cl().enqueue_copy(self.queue, out, x.buf, src_offset=x.offset * 4, is_blocking=True)
        self._pending.clear()          # the in-order queue has run every earlier write
        if self._rec is not None:
            self._rec.read(x)
        return out

    # --- decode record and replay -------------------------------------------------------------
    def compiled_step(self, model) -> "ReplayedStep | str":
        """Decode steps recorded once and replayed (replay.py), for every architecture: a replay
        re-enqueues what forward_ops enqueued (tests/test_architectures.py checks each)."""
        return ReplayedStep(self, model)

    def replayed(self, model, tokens: np.ndarray, cache, all_logits: bool = False) -> np.ndarray | None:
        """A one-token forward replayed from its recording (replay.py), or None: the caller then
        runs its op-by-op forward (prefill, replay off)."""
        if not self.replay or len(tokens) != 1 or not isinstance(cache, DeviceKVCache):
            return None
        plans = self._plans.setdefault(cache, {})
        key = (id(model), all_logits)
        plan = plans.get(key)
        if plan is None:
            plan, logits = self._record(model, tokens, cache, all_logits)
            plans[key] = plan
            return logits
        if plan is False:              # recorded once and found not replayable
            return None
        if cache.offset + 1 > cache.n_ctx:
            raise ContextOverflowError(f"positions {cache.offset}..{cache.offset + 1} do not fit the context "
                                       f"of {cache.n_ctx}")
        self.launches += plan.launches
        self.writes += 2
        self.replays += 1
        return plan.replay(self.queue, tokens, cache.offset)

    def _record(self, model, tokens: np.ndarray, cache, all_logits: bool) -> tuple[DecodePlan | bool, np.ndarray]:
        """Run the op-by-op forward once, recording it; (the plan or False, the logits)."""
        self._rec = rec = Recorder()
        self._positions.clear()        # the positions buffer must be this forward's own
        pos0 = cache.offset
        try:
            logits = model.forward_ops(tokens, cache, all_logits)
        finally:
            self._rec = None
            self._positions.clear()    # a replay rewrites the recorded buffer: never reuse it
        why = rec.check(np.asarray(tokens), pos0)
        if why is not None:
            log.info("decode step not replayable: %s", why)
            return False, logits
        return DecodePlan(rec, self.dev.program, self.dev.ls, self.dev.rows_of, self.dev.rpw_of["gemv3"],
                          self.fuse), logits

    def from_numpy(self, a: np.ndarray) -> DeviceArray:
        """A float32 host array on the device (tests and benches)."""
        return self._write(np.ascontiguousarray(a, dtype=np.float32))

    def finish(self) -> None:
        self.queue.finish()

    def copy_bandwidth(self, nbytes: int = 1 << 28, reps: int = 10) -> float:
        """Device memory bandwidth in bytes/s, measured by copy_f32x4 (each byte read and written)."""
        import time
        n4 = nbytes // 16
        src, dst = self._empty((n4 * 4,)), self._empty((n4 * 4,))
        g = -(-n4 // EW_LS) * EW_LS
        self._run("copy_f32x4", (g,), (EW_LS,), src.buf, dst.buf, np.int32(n4))  # warm up
        self.finish()
        t0 = time.perf_counter()
        for _ in range(reps):
            self._run("copy_f32x4", (g,), (EW_LS,), src.buf, dst.buf, np.int32(n4))
        self.finish()
        return 2 * n4 * 16 * reps / (time.perf_counter() - t0)


class ReplayedStep:
    """OpenCLBackend's compiled step for one model: its decode steps replayed (OpenCLBackend.replayed)."""

    def __init__(self, backend: OpenCLBackend, model) -> None:
        self.backend, self.model = backend, model

    def __call__(self, tokens: np.ndarray, cache, all_logits: bool = False) -> np.ndarray | None:
        return self.backend.replayed(self.model, tokens, cache, all_logits)

    def describe(self) -> str:
        return "one-token decode steps recorded once, then replayed (prefill op by op)"
