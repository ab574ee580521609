"""Record and replay of a decode step: the launches of one op-by-op forward, enqueued again.

Why: a one-token forward is ~200-350 small kernels, and pyopencl's `kernel(queue, ...)` call costs
~10 us of host time each, which on a fast GPU is more than the kernels themselves. A recorded
step holds one kernel object per launch with its arguments set once, so a replay is a loop of
bare `enqueue_nd_range_kernel` calls.

What makes a recording replayable: every launch's arguments are the same at every step except
for two device buffers the forward writes from the host, the token ids (get_rows) and the
positions (rope, KV store, attention read them on the device). A replay writes those two buffers
and enqueues the same launches. The recorder checks that the forward wrote nothing else from
the host and read back exactly one result; a recording that breaks either rule is not replayed.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any

import numpy as np

from .device import cl
from .fuse import Launch, fuse

log = logging.getLogger(__name__)


def _loaded_libopencl() -> Any:
    """clEnqueueNDRangeKernel of the OpenCL library pyopencl loaded (found in /proc/self/maps),
    or None. pyopencl asks every enqueue for an event object; a replay needs none. It has no
    argtypes: a replay passes arguments already converted to C types (_raw_steps), which ctypes
    then hands over as they are (argtypes would convert each one at every call: ~1 us a launch)."""
    try:
        with open("/proc/self/maps") as f:
            path = next(ln.split()[-1] for ln in f if "libOpenCL" in ln)
        fn = ctypes.CDLL(path).clEnqueueNDRangeKernel
    except (OSError, StopIteration, AttributeError):
        return None
    fn.restype = ctypes.c_int
    return fn


_ENQUEUE: list = []   # [clEnqueueNDRangeKernel or None], looked up once


def _squeezed(gsize: tuple, lsize: tuple | None) -> tuple[tuple, tuple | None]:
    """The launch sizes without trailing dimensions of size 1 (a one-token step's (n, 1) is (n,)):
    the kernel sees the same ids and sizes (a missing dimension reads as size 1, id 0), and
    NVIDIA's OpenCL enqueues a 1-D range ~1-2 us faster (H100 host, gemv3/swiglu launches)."""
    d = len(gsize)
    while d > 1 and gsize[d - 1] == 1 and (lsize is None or lsize[d - 1] == 1):
        d -= 1
    return tuple(gsize[:d]), None if lsize is None else tuple(lsize[:d])


class Recorder:
    """Collects what a forward enqueues (OpenCLBackend calls it while recording)."""

    def __init__(self) -> None:
        self.steps: list = []                 # Launch | ("c", dst, src, nbytes, src_offset) device copies
        self.inputs: dict[str, Any] = {}      # role ("ids" | "pos") -> device buffer the forward wrote
        self.values: dict[str, np.ndarray] = {}   # role -> what it wrote there
        self.result: Any = None               # the DeviceArray read back (the logits)
        self.broken: str | None = None        # why this recording cannot be replayed

    def launch(self, name: str, gsize: tuple, lsize: tuple | None, args: tuple) -> None:
        self.steps.append(Launch(name, gsize, lsize, args))

    def copy(self, dst: Any, src: Any, nbytes: int, src_offset: int) -> None:
        self.steps.append(("c", dst, src, nbytes, src_offset))

    def write(self, role: str | None, buf: Any, host: np.ndarray) -> None:
        if role is None or role in self.inputs:
            self.broken = f"a host write ({role or 'unnamed'}) that a replay could not redo"
        else:
            self.inputs[role], self.values[role] = buf, host.copy()

    def check(self, tokens: np.ndarray, pos0: int) -> str | None:
        """Why the recording is not replayable (None if it is): a replay writes `tokens` as the
        ids and pos0.. as the positions, so the recorded forward must have written just those."""
        if self.broken or self.result is None:
            return self.broken or "no read-back"
        if "pos" not in self.values or not np.array_equal(self.values["pos"], pos0 + np.arange(len(tokens))):
            return "positions other than the cache offset"
        if "ids" in self.values and not np.array_equal(self.values["ids"], tokens):
            return "ids other than the tokens"
        return None

    def read(self, x: Any) -> None:
        if self.result is not None:
            self.broken = "more than one read-back"
        self.result = x


class DecodePlan:
    """A recorded forward of T tokens, fused (fuse.py), replayable at any position of the same KV
    cache. `ls`, `rows`, `rpw`: the gemv work-group size, rows per group of each gemv kernel
    family, gemv3's rows per team; with fused=False the launches stay as recorded."""

    def __init__(self, rec: Recorder, program: Any, ls: int, rows: dict[str, int], rpw: int,
                 fused: bool = True) -> None:
        self.ids, self.pos, self.result = rec.inputs.get("ids"), rec.inputs["pos"], rec.result
        self.steps: list[tuple] = []          # ("k", kernel, gsize, lsize) | ("c", dst, src, nbytes, src_offset)
        for s in fuse(rec.steps, rec.result.buf, ls, rows, rpw) if fused else rec.steps:
            if isinstance(s, Launch):
                k = cl().Kernel(program, s.name)   # a private kernel object: its arguments stay set
                k.set_args(*s.args)
                self.steps.append(("k", k, *_squeezed(s.gsize, s.lsize)))
            else:
                self.steps.append(s)
        self._pending: list[Any] = []         # the last replay's host-to-device writes (NannyEvents)
        self.raw = True                       # enqueue through the C entry point, without events
        self._raw: list[tuple] | None = None  # per step: clEnqueueNDRangeKernel's arguments

    @property
    def launches(self) -> int:
        return len(self.steps)

    def _raw_steps(self, queue: Any) -> list[tuple] | None:
        """The C-level argument tuples of every step (None: a device copy among them, or no
        library entry point found)."""
        if not _ENQUEUE:
            _ENQUEUE.append(_loaded_libopencl())
        if _ENQUEUE[0] is None or any(s[0] != "k" for s in self.steps):
            return None
        size_t = ctypes.c_size_t
        raw = []
        for _, k, g, l in self.steps:
            gs = (size_t * len(g))(*g)
            ls = (size_t * len(l))(*l) if l is not None else None
            raw.append((ctypes.c_void_p(queue.int_ptr), ctypes.c_void_p(k.int_ptr), ctypes.c_uint(len(g)), None, gs, ls,
                        ctypes.c_uint(0), None, None))
        return raw

    def replay(self, queue: Any, tokens: np.ndarray, pos0: int) -> np.ndarray:
        ocl = cl()
        ids = np.ascontiguousarray(tokens, dtype=np.int32)                       # [T]
        pos = np.arange(pos0, pos0 + len(ids), dtype=np.int32)                 # [T]
        # non-blocking writes; their events are kept so that dropping them does not wait
        self._pending = [ocl.enqueue_copy(queue, self.pos, pos, is_blocking=False)]
        if self.ids is not None:
            self._pending.append(ocl.enqueue_copy(queue, self.ids, ids, is_blocking=False))
        if self.raw and self._raw is None:
            self._raw = self._raw_steps(queue) or []
        if self.raw and self._raw:
            enqueue = _ENQUEUE[0]
            for args in self._raw:
                if enqueue(*args):
                    raise ocl.RuntimeError("clEnqueueNDRangeKernel failed in a decode replay")
        else:
            enqueue = ocl.enqueue_nd_range_kernel
            for s in self.steps:
                if s[0] == "k":
                    enqueue(queue, s[1], s[2], s[3])
                else:
                    ocl.enqueue_copy(queue, s[1], s[2], byte_count=s[3], src_offset=s[4])
        out = np.empty(self.result.shape, dtype=np.float32)
        ocl.enqueue_copy(queue, out, self.result.buf, src_offset=self.result.offset * 4, is_blocking=True)
        self._pending = []
        return out
