"""Weight upload: the one place a layout changes. Every matrix becomes one of the kernels' weight
kinds (common.cl): Q4_0, Q4_1, Q8_0 kept as they are, split into separate arrays of quants and
scales so lanes read them coalesced; Q4_K, Q5_K and Q6_K split the same way, their sub-block
scales reordered so that a kernel's 16-weight unit finds its two in one word (lossless, same bits
per weight up to Q4_K's and Q5_K's scales unpacked from 6 to 8 bits: 4.625 instead of 4.5, 5.625
instead of 5.5); Q5_0 requantized to
Q8_0 losslessly (its 5-bit quants fit in int8 with the same scale); F16/F32 kept; BF16 widened
to F32 (exact); every other type dequantized and stored as F16 (rounding to float16: relative
error <= 2^-11)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT
from gguf.quants import Q4_K, dequantize

from ...gguf_file import Tensor
from ..numpy_ref import SUPPORTED_TYPES
from .device import Device

QK = GGML_QUANT_SIZES[QT.Q8_0][0]  # elements per block of Q4_0 / Q4_1 / Q8_0 (32)
QK_K = GGML_QUANT_SIZES[QT.Q4_K][0]  # elements per super-block of Q4_K / Q6_K (256)
BLOCK_BYTES = {QT.Q4_0: 18, QT.Q4_1: 20, QT.Q8_0: 34}
KINDS = ("q4_0", "q4_1", "q8_0", "q4_k", "q5_k", "q6_k", "f16", "f32")   # every kernel family has one per kind


@dataclass
class DeviceWeight:
    """A matrix [n, k] on the device, in one of the kernels' weight kinds."""

    kind: str      # one of KINDS: selects the gemv_/matmul_/get_rows_ kernels
    n: int
    k: int
    q: Any         # one buffer: quants [n, k/2] u8 (q4), [n, k] i8 (q8), or the values [n, k] f16 / f32,
    d: Any         # then block scales [n, k/32] f16 at byte offset d (np.int64; 0 for float kinds),
    m: Any         # and block minima [n, k/32] f16 at byte offset m (q4_1 only, else 0); the
                   # k-quants' parts are in common.cl's table of weight kinds
    nbytes: int    # device bytes


def runs_as(tensor: Tensor) -> str:
    """How `tensor` is held and multiplied on the OpenCL device, in words."""
    t = tensor.type
    if tensor.data.ndim == 1:
        return f"{t.name}: float32 vector"
    kind = _kind(t)
    how = {QT.Q4_0: "Q4_0 as is", QT.Q4_1: "Q4_1 as is", QT.Q8_0: "Q8_0 as is",
           QT.Q4_K: "Q4_K repacked (lossless)", QT.Q5_K: "Q5_K repacked (lossless)",
           QT.Q6_K: "Q6_K repacked (lossless)",
           QT.Q5_0: "requantized to Q8_0 (lossless)", QT.F16: "F16 as is", QT.F32: "F32 as is",
           QT.BF16: "widened to F32 (exact)"}.get(t, "dequantized to F16 (rounded)")
    return f"{t.name}: {how}, {kind} x float32 kernels (float32 accumulation)"


def _kind(t: QT) -> str:
    return {QT.Q4_0: "q4_0", QT.Q4_1: "q4_1", QT.Q8_0: "q8_0", QT.Q5_0: "q8_0", QT.Q4_K: "q4_k", QT.Q5_K: "q5_k",
            QT.Q6_K: "q6_k", QT.F32: "f32", QT.BF16: "f32"}.get(t, "f16")


def host_layout(tensor: Tensor) -> tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(kind, q, d, m) as host arrays in the device layout of the weight's kind."""
    t, (n, k) = tensor.type, tensor.shape
    if t in BLOCK_BYTES:
        blocks = tensor.data.reshape(n, k // QK, BLOCK_BYTES[t])     # [n, nb, bytes per block]
        d = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16)  # [n, nb, 1]
        if t == QT.Q4_1:
            m = np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)
            return "q4_1", np.ascontiguousarray(blocks[..., 4:]), d, m
        return _kind(t), np.ascontiguousarray(blocks[..., 2:]), d, None
    if t in (QT.Q4_K, QT.Q5_K):
        return (_kind(t), *_q45_k_parts(tensor))
    if t == QT.Q6_K:
        return ("q6_k", *_q6_k_parts(tensor))
    if t == QT.Q5_0:
        return ("q8_0", *_q5_0_as_q8_0(tensor), None)
    if t == QT.F16:
        return "f16", tensor.data.view(np.float16), None, None
    if t == QT.F32:
        return "f32", tensor.data.view(np.float32), None, None
    f32 = dequantize(tensor.data, t).reshape(n, k)
    return (_kind(t), f32 if t == QT.BF16 else f32.astype(np.float16), None, None)


def _q45_k_parts(tensor: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_K/Q5_K super-blocks [d, dmin f16, 12 packed scale bytes, (Q5_K: 32 qh bytes,) 128 nibble
    bytes] -> the quants as stored [n, k/256, 128 or 160], (d, dmin) [n, k/256, 2] f16, and per 64
    columns (sc, sc', m, m') of its two 32-column sub-blocks as bytes [n, k/256, 16] (a unit of
    16 weights spans both: one word)."""
    n, k = tensor.shape
    blocks = tensor.data.reshape(n * (k // QK_K), GGML_QUANT_SIZES[tensor.type][1])
    sc, m = Q4_K.get_scale_min(np.ascontiguousarray(blocks[:, 4:16]))                     # [nb, 8] each
    scales = np.stack([sc[:, 0::2], sc[:, 1::2], m[:, 0::2], m[:, 1::2]], axis=-1)       # [nb, 4, 4]
    return (np.ascontiguousarray(blocks[:, 16:]), np.ascontiguousarray(blocks[:, :4]),
            scales.astype(np.uint8).reshape(n, -1))


def _q6_k_parts(tensor: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q6_K super-blocks [ql 128, qh 64, 16 int8 scales, d f16] -> the quants as stored (ql, qh)
    [n, k/256, 192], d [n, k/256] f16, and the scales [n, k/256, 16] reordered as pairs (sc[j],
    sc[j+4]) of each 128-column half: the two 16-column sub-blocks a unit of 16 weights spans."""
    n, k = tensor.shape
    blocks = tensor.data.reshape(n * (k // QK_K), 210)
    sc = blocks[:, 192:208].reshape(-1, 2, 2, 4)                                         # [nb, half, j//4, j%4]
    return (np.ascontiguousarray(blocks[:, :192]), np.ascontiguousarray(blocks[:, 208:]),
            np.ascontiguousarray(sc.transpose(0, 1, 3, 2)).reshape(n, -1))


def _q5_0_as_q8_0(tensor: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Q5_0 is d * (q - 16) with q in 0..31: the same d with int8 quants q - 16 is Q8_0, exactly.
    Recovered from gguf-py's dequantization: d * q is exact in float32, so q = w / d is too."""
    n, k = tensor.shape
    d = np.ascontiguousarray(tensor.data.reshape(n, k // QK, 22)[..., 0:2]).view(np.float16)  # [n, nb, 1]
    w = dequantize(tensor.data, QT.Q5_0).reshape(n, k // QK, QK)                             # [n, nb, 32]
    d32 = d.astype(np.float32)
    q = np.divide(w, d32, out=np.zeros_like(w), where=d32 != 0)
    q8 = np.rint(q).astype(np.int8)
    assert np.array_equal(q8 * d32, w), "Q5_0 -> Q8_0 is not exact"  # guards the claim in runs_as
    return q8.view(np.uint8).reshape(n, k), d


ALIGN = 256   # byte alignment of the scales and minima within a weight's buffer


def upload(dev: Device, tensor: Tensor, name: str = "") -> DeviceWeight:
    """Copy a matrix to the device in its kernels' layout: its parts in one buffer (common.cl's
    WKARGS: NVIDIA's OpenCL spends ~0.4 us of host time per buffer argument of every kernel
    enqueue, and a matrix is then one buffer and two offsets)."""
    kind, q, d, m = host_layout(tensor)
    n, k = tensor.shape
    parts, offsets, at = [], [], 0
    for a in (q, d, m):
        offsets.append(at if a is not None else 0)
        if a is not None:
            raw = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
            parts.append(np.pad(raw, (0, -raw.size % ALIGN)))
            at += parts[-1].size
    host = np.concatenate(parts)
    buf = dev.buffer(host.nbytes, f"weight {name or tensor.type.name} [{n}, {k}]", host)
    return DeviceWeight(kind, n, k, buf, np.int64(offsets[1]), np.int64(offsets[2]), host.nbytes)


def decline_reason(tensor: Tensor) -> str | None:
    if tensor.type not in SUPPORTED_TYPES:
        return f"tensor type {tensor.type.name} has no dequantizer for the opencl backend"
    if tensor.data.ndim == 2 and tensor.type in (QT.Q4_0, QT.Q4_1, QT.Q8_0, QT.Q5_0) and tensor.shape[1] % QK:
        return f"row length {tensor.shape[1]} is not a multiple of {QK}"
    if tensor.data.ndim == 2 and tensor.type in (QT.Q4_K, QT.Q5_K, QT.Q6_K) and tensor.shape[1] % QK_K:
        return f"row length {tensor.shape[1]} is not a multiple of {QK_K}"
    return None
