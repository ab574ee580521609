"""OpenCL platform/device discovery and selection, device properties, and the kernel build.

Every failure here (no pyopencl, no platform, no matching device, an OpenCL C version below 1.2,
a kernel that does not build, not enough memory) becomes a one-line LocalLLMError."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ...errors import LocalLLMError

log = logging.getLogger(__name__)

ENV_DEVICE = "LOCALLLM_OPENCL_DEVICE"   # a device index (as in list_devices) or a name substring
ENV_GEMV = "LOCALLLM_OPENCL_GEMV"       # "TPR,RPW[,LS]": gemv lanes per row, rows per team, group size (tuning)
KERNEL_FILES = ("common.cl", "gemv.cl", "matmul.cl", "elementwise.cl", "attention.cl")  # build order
TPR = 32            # lanes per weight row in the matvec kernels (at least; GPUs use a whole group)
RPW = 8             # rows per TPR-lane team in the matvec kernels (each lane's activations reused;
                    # H100, 1.17B Q4_0 decode: 2 -> 278, 4 -> 349, 8 -> 380 tok/s)
# Rows per team of the gemv_add and gemv_norm kernels (the residual products, whose matrices have
# few rows, want more groups; the output head, many rows, fewer). H100, 1.17B Q4_0 alone: FFN
# down 2048x5632 16.2 -> 15.4 us at 4; float16 head 49152x2048 99.6 -> 77.9 us at 16. CPUs use
# them only when tests force the GPU kernels, which then check the mixed sizes too.
RPW_FAMILY = {"gemv_add": 4, "gemv_norm": 16}
MAX_DK = 512        # head dims attention keeps in local memory
MAX_DV_PER = 8      # V dims per attention lane: dv <= MAX_DV_PER * ATT_LS


class OpenCLError(LocalLLMError):
    """The OpenCL runtime, device or kernel build failed."""


def cl() -> Any:
    """pyopencl, or a one-line error saying how to get it."""
    try:
        import pyopencl
    except ImportError as e:
        raise OpenCLError(f"the opencl backend needs pyopencl: pip install 'pyopencl[pocl]' ({e})") from None
    return pyopencl


def _all_devices() -> list[tuple[Any, Any]]:
    """(platform, device) pairs in a stable order; an ICD loader with no platform is an error."""
    ocl = cl()
    try:
        platforms = ocl.get_platforms()
    except ocl.Error as e:
        raise OpenCLError(f"no OpenCL platform found ({e.what if hasattr(e, 'what') else e}); "
                          "install a driver or PoCL: pip install 'pyopencl[pocl]'") from None
    pairs = []
    for p in platforms:
        try:
            pairs += [(p, d) for d in p.get_devices()]
        except ocl.Error:
            log.info("OpenCL platform %s lists no devices", p.name)
    if not pairs:
        raise OpenCLError("OpenCL platforms exist but none has a device")
    return pairs


def _describe(index: int, platform: Any, dev: Any) -> dict:
    ocl = cl()
    return {"index": index, "platform": platform.name.strip(), "name": dev.name.strip(),
            "type": ocl.device_type.to_string(dev.type), "global_mem_bytes": int(dev.global_mem_size),
            "max_alloc_bytes": int(dev.max_mem_alloc_size), "local_mem_bytes": int(dev.local_mem_size),
            "compute_units": int(dev.max_compute_units), "max_work_group_size": int(dev.max_work_group_size),
            "opencl_version": dev.version.strip(), "opencl_c_version": dev.opencl_c_version.strip()}


def list_devices() -> list[dict]:
    """Every OpenCL device: platform, name, type, memory, compute units, max work-group size, version."""
    return [_describe(i, p, d) for i, (p, d) in enumerate(_all_devices())]


def _is_gpu(dev: Any) -> bool:
    return bool(dev.type & cl().device_type.GPU)


def has_gpu() -> bool:
    """True when an OpenCL GPU device exists (for backend "auto"); never raises."""
    try:
        return any(_is_gpu(d) for _, d in _all_devices())
    except LocalLLMError:
        return False


def select_device(spec: str | None = None) -> Any:
    """The device named by `spec` (or $LOCALLLM_OPENCL_DEVICE): an index into list_devices(), or a
    case-insensitive substring of "platform name"; by default the first GPU, else the first device."""
    spec = spec if spec is not None else os.environ.get(ENV_DEVICE, "")
    pairs = _all_devices()
    if spec.strip().isdigit():
        i = int(spec)
        if i >= len(pairs):
            raise OpenCLError(f"OpenCL device index {i} out of range (have {len(pairs)}: see list_devices)")
        return pairs[i][1]
    if spec:
        hits = [d for p, d in pairs if spec.lower() in f"{p.name} {d.name}".lower()]
        if not hits:
            names = "; ".join(d.name.strip() for _, d in pairs)
            raise OpenCLError(f"no OpenCL device matches {spec!r} (have: {names})")
        return hits[0]
    gpus = [d for _, d in pairs if _is_gpu(d)]
    return (gpus or [pairs[0][1]])[0]


def _pow2_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


@dataclass
class Device:
    """An opened device: context, in-order queue, built kernels, work-group sizes, memory ledger."""

    dev: Any
    ctx: Any = field(init=False)
    queue: Any = field(init=False)
    kernels: dict[str, Any] = field(init=False)
    program: Any = field(init=False)   # the built program (replay.py makes private kernel objects)
    ls: int = field(init=False)        # row-reduction work-group size (power of two, >= TPR)
    tpr: int = field(init=False)       # gemv lanes per row (power of two, divides ls)
    rpw: int = field(init=False)       # gemv rows per team of tpr lanes
    rpw_of: dict = field(init=False)   # the same per kernel family (gemv, gemv_add, gemv_norm, ...)
    att_ls: int = field(init=False)    # attention team size
    att_ns: int = field(init=False)    # attention teams per work-group
    tiled: bool = field(init=False)    # the 16x16 prefill matmul fits the device's work-groups
    reserved: int = 0                  # bytes of weights and KV caches allocated so far

    def __post_init__(self) -> None:
        ocl = cl()
        max_wg = int(self.dev.max_work_group_size)
        if max_wg < TPR:
            raise OpenCLError(f"{self.name}: max work-group size {max_wg} is below {TPR}")
        # GPUs: 4 rows (128 lanes) per matvec group keeps enough groups in flight on small
        # matrices; CPUs (PoCL) run a group per core, so wider groups only add loop overhead.
        self.ls = min(_pow2_at_most(max_wg), 128 if _is_gpu(self.dev) else 64)
        self.att_ls = min(_pow2_at_most(max_wg), 64)
        # attention teams per head: GPUs split a head's keys over 4 teams (one token's 32 heads
        # would otherwise occupy 32 compute units); CPUs keep one (barriers are serialized there)
        self.att_ns = max(1, min(4, max_wg // self.att_ls)) if _is_gpu(self.dev) else 1
        # GPUs: the whole group shares RPW rows, so a 2048-row matrix still has 512 groups to
        # spread over the compute units (measured on an H100: 32 lanes per row left them idle)
        self.tpr = self.ls if _is_gpu(self.dev) else TPR
        self.rpw = RPW
        self.rpw_of = dict(RPW_FAMILY)
        tune = os.environ.get(ENV_GEMV, "")          # "TPR,RPW[,LS]": a tuning override for benches
        if tune:
            try:
                values = [int(v) for v in tune.split(",")]
            except ValueError:
                values = []
            # anything but two or three integers is refused just below, with the expected form
            tpr, rpw, ls = (values + [self.ls])[:3] if len(values) in (2, 3) else (0, 0, 0)
            if ls & (ls - 1) or not TPR <= ls <= max_wg or tpr & (tpr - 1) or not TPR <= tpr <= ls or rpw < 1:
                raise OpenCLError(f"{ENV_GEMV}={tune[:40]}: expected TPR,RPW[,LS]; LS must be a power of two in {TPR}..{max_wg}, "
                                  f"TPR one in {TPR}..LS, RPW >= 1")
            self.tpr, self.rpw, self.ls, self.rpw_of = tpr, rpw, ls, {}
        for fam in ("gemv", "gemv_add", "gemv_norm", "gemv_swiglu", "gemv3"):
            self.rpw_of.setdefault(fam, self.rpw)
        # local-memory tiles and lane-shared rows suit GPUs; CPU runtimes serialize barriers, so
        # CPUs get the barrier-free matmul_rows kernel for every product
        self.tiled = _is_gpu(self.dev) and max_wg >= 256 and self.dev.local_mem_size >= 2 * 32 * 33 * 4
        self.ctx = ocl.Context([self.dev])
        self.queue = ocl.CommandQueue(self.ctx)
        self.kernels = self._build()
        log.info("OpenCL device %s (%s), %d MiB, work-groups %d/%d", self.name, self.dev.version.strip(),
                 self.dev.global_mem_size >> 20, self.ls, self.att_ls)

    @property
    def rows_of(self) -> dict[str, int]:
        """Matrix rows per work-group of each gemv kernel family (gemv, gemv_add, gemv_norm, ...)."""
        return {fam: self.ls // self.tpr * rpw for fam, rpw in self.rpw_of.items()}

    @property
    def name(self) -> str:
        return self.dev.name.strip()

    def _build(self) -> dict[str, Any]:
        ocl = cl()
        c_version = self.dev.opencl_c_version.split()[2] if self.dev.opencl_c_version else "1.0"
        if tuple(int(x) for x in c_version.split(".")[:2]) < (1, 2):
            raise OpenCLError(f"{self.name}: OpenCL C {c_version} is below the 1.2 the kernels need")
        options = ["-cl-std=CL1.2", "-cl-kernel-arg-info", f"-DLS={self.ls}", f"-DTPR={self.tpr}", f"-DRPW={self.rpw}",
                   f"-DRPW_ADD={self.rpw_of['gemv_add']}", f"-DRPW_NORM={self.rpw_of['gemv_norm']}",
                   f"-DATT_LS={self.att_ls}", f"-DATT_NS={self.att_ns}", f"-DMAX_DK={MAX_DK}", f"-DMAX_DV_PER={MAX_DV_PER}"]
        try:
            prg = ocl.Program(self.ctx, kernel_source()).build(options=options)
        except ocl.Error as e:
            first = next((ln for ln in str(e).splitlines() if "error" in ln.lower()), str(e).splitlines()[0])
            raise OpenCLError(f"OpenCL kernels failed to build on {self.name}: {first.strip()}") from None
        self.program = prg
        kernels = {k.function_name: k for k in prg.all_kernels()}
        for k in kernels.values():
            _declare_scalars(k)
        return kernels

    def reserve(self, nbytes: int, what: str) -> None:
        """Account for a device allocation; refuse one the device cannot hold."""
        if nbytes > self.dev.max_mem_alloc_size:
            raise OpenCLError(f"{what}: {nbytes >> 20} MiB exceeds {self.name}'s largest allocation "
                              f"({self.dev.max_mem_alloc_size >> 20} MiB)")
        if self.reserved + nbytes > self.dev.global_mem_size:
            raise OpenCLError(f"{what}: not enough memory on {self.name} ({(self.reserved + nbytes) >> 20} MiB "
                              f"needed, {self.dev.global_mem_size >> 20} MiB available)")
        self.reserved += nbytes

    def release(self, nbytes: int) -> None:
        """Return bytes to the ledger when their owner (a KV cache) is garbage-collected."""
        self.reserved -= nbytes

    def buffer(self, nbytes: int, what: str, host: Any = None) -> Any:
        """A device buffer (filled from `host` when given), with allocation failures made clear."""
        ocl = cl()
        self.reserve(nbytes, what)
        flags = ocl.mem_flags.READ_WRITE | (ocl.mem_flags.COPY_HOST_PTR if host is not None else 0)
        try:
            return ocl.Buffer(self.ctx, flags, size=max(nbytes, 4) if host is None else 0, hostbuf=host)
        except ocl.Error as e:
            raise OpenCLError(f"{what}: allocating {nbytes >> 20} MiB on {self.name} failed ({e})") from None


SCALAR_DTYPES = {"int": "int32", "long": "int64", "float": "float32"}


def _declare_scalars(kernel: Any) -> None:
    """Tell pyopencl each argument's scalar type (None for buffers): its generated invoker then
    packs the arguments in one call, several times faster than set_args' generic path."""
    import numpy as np
    info = cl().kernel_arg_info.TYPE_NAME
    types = [kernel.get_arg_info(i, info).strip() for i in range(kernel.num_args)]
    kernel.set_scalar_arg_dtypes([None if t.endswith("*") else np.dtype(SCALAR_DTYPES[t]) for t in types])


def kernel_source() -> str:
    """The .cl sources of kernels/opencl (package data of localllm.kernels), concatenated."""
    folder = resources.files("localllm.kernels") / "opencl"
    return "\n".join((folder / name).read_text() for name in KERNEL_FILES)


def open_device(spec: str | None = None) -> Device:
    return Device(select_device(spec))
