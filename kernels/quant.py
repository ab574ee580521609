"""Weight repacking into the row-interleaved r8 layout, and Q8_0 quantization of activations.

r8 layout (like llama.cpp's q4_0_8x8 and ik_llama's Q4_0_R8/Q8_0_R8): rows are taken 8 at a time
(a "group", zero-padded at the end); every 32-column block of a group stores, for each of its four
8-column chunks, the 8 rows' 8 quants side by side: 64 bytes = one zmm register whose 64-bit lane r
holds row r. The activation chunk it multiplies is then one 8-byte value broadcast to all lanes.

Every supported block type becomes `value = d * u + m` with small unsigned integers u:
  U8: one byte per quant, four 64-byte chunks per block (256 bytes per group-block);
  U4: nibbles, chunk 2i in the low and chunk 2i+1 in the high nibbles of 64 bytes (128 bytes).
Q4_0 (u = q, m = -8d), Q4_1, Q4_K (per 32-column sub-block d*sc, -dmin*m) pack as U4;
Q5_0 (u = q, m = -16d) and Q8_0 (u = q + 128, m = -128d) as U8. The re-encoding is exact: d and m
are kept as float16 when the source scales are float16, else as float32 (Q4_K, whose d*sc
products need more than 11 bits). Where m is d times a fixed zero point (Q4_0: 8, Q5_0: 16, Q8_0:
128) m is not stored at all (`zero` > 0, m empty): kernels compute m = -zero*d, which is exact,
and decoding reads 10% fewer bytes (Q4_0: 18 of every 20).

Q6_K is the one type whose value is not d*u + m per 32 columns: value = d*sc_j*(u - 32) with a
6-bit u, an int8 sub-scale sc_j per 16 columns and a float16 d per 256. It packs as kind Q6: per
group-block the four 8x8 chunks' low nibbles exactly as U4 (128 bytes) followed by 64 bytes whose
bits 2c..2c+1 are chunk c's high two bits (192 bytes, u in 0..63); d holds the int8 sub-scales
[groups, blocks * 16] (index b*16 + h*8 + r: half h of block b, row r) and m the float32 super-block
scales [groups, blocks / 8 * 8] (index (b / 8)*8 + r). Kernels form d*sc_j in float32, which is
exact (11 x 8 significant bits), take dot(u, x) - 32*sum(x) per 16-column half and scale each half
by its own product: 6.6 bits per weight, as in the file.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as QT
from numba import njit, prange

from .simd import f16_to_f32, f32_to_f16, scale_at

QK = GGML_QUANT_SIZES[QT.Q8_0][0]    # quants per block (32; the activation block size too)
R = 8      # rows per group
U4, U8, Q6 = "u4", "u8", "q6"
ZERO_POINTS = {QT.Q4_0: 8, QT.Q5_0: 16, QT.Q8_0: 128}   # m = -zero * d exactly: m is not stored
R8_TYPES = frozenset({QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q6_K})
Q6_BYTES = 192       # bytes of one q6 group-block: 128 of nibbles (as U4) + 64 of high-bit pairs


@dataclass
class R8Weight:
    """A weight matrix in r8 layout; `rows` is the real row count (groups * 8 may be larger)."""

    kind: str          # U4 or U8
    qs: np.ndarray     # uint8 [groups, blocks * (128 or 256)]
    d: np.ndarray      # [groups, blocks * 8] float32, or uint16 float16 bits
    m: np.ndarray      # like d
    rows: int
    cols: int
    wide: bool         # some u >= 128 (Q8_0): an AVX2 dot product must not saturate
    zero: int = 0      # > 0: m = -zero * d, and m is empty

    @property
    def nbytes(self) -> int:
        return self.qs.nbytes + self.d.nbytes + self.m.nbytes


def _f16(raw: np.ndarray) -> np.ndarray:
    """uint8 [..., 2] -> float32 [...] through float16."""
    return np.ascontiguousarray(raw).view(np.float16)[..., 0].astype(np.float32)


def _split_nibbles(qs: np.ndarray) -> np.ndarray:
    """ggml's 16-byte nibble block -> 32 quants: low nibbles are quants 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _k4_scales(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K's 12 packed bytes -> 8 six-bit scales and 8 mins (ggml get_scale_min_k4)."""
    sc = sc.astype(np.uint8)
    lo_s, lo_m, hi = sc[..., 0:4], sc[..., 4:8], sc[..., 8:12]
    scale = np.concatenate([lo_s & 63, (hi & 0x0F) | ((lo_s >> 6) << 4)], axis=-1)
    mins = np.concatenate([lo_m & 63, (hi >> 4) | ((lo_m >> 6) << 4)], axis=-1)
    return scale.astype(np.float32), mins.astype(np.float32)


def decode_blocks(data: np.ndarray, qtype: QT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw GGUF rows (uint8 [n, row_bytes]) -> u uint8 [n, k], d and m float32 [n, k/32]."""
    n = data.shape[0]
    if qtype == QT.Q4_K:
        b = data.reshape(n, -1, 144)
        d, dmin = _f16(b[..., 0:2])[..., None], _f16(b[..., 2:4])[..., None]   # [n, nsb, 1]
        sc, mn = _k4_scales(b[..., 4:16])                                      # [n, nsb, 8]
        q = b[..., 16:].reshape(n, -1, 4, 32)                                  # 64 quants per 32 bytes
        u = np.stack([q & 0x0F, q >> 4], axis=3)                               # [n, nsb, 4, 2, 32]
        return u.reshape(n, -1), (d * sc).reshape(n, -1), (-dmin * mn).reshape(n, -1)
    size = {QT.Q4_0: 18, QT.Q4_1: 20, QT.Q5_0: 22, QT.Q8_0: 34}[qtype]
    b = data.reshape(n, -1, size)
    d = _f16(b[..., 0:2])
    if qtype == QT.Q4_0:
        return _split_nibbles(b[..., 2:]).reshape(n, -1), d, -8 * d
    if qtype == QT.Q4_1:
        return _split_nibbles(b[..., 4:]).reshape(n, -1), d, _f16(b[..., 2:4])
    if qtype == QT.Q5_0:
        qh = np.ascontiguousarray(b[..., 2:6]).view(np.uint32)                 # [n, nb, 1]
        high = ((qh >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8) << 4  # [n, nb, 32]
        return (_split_nibbles(b[..., 6:]) | high).reshape(n, -1), d, -16 * d
    u = (b[..., 2:] ^ 0x80).reshape(n, -1)                                     # int8 q + 128
    return u, d, -128 * d


def interleave(u: np.ndarray, d: np.ndarray, m: np.ndarray, kind: str, scale_dtype) -> tuple:
    """u [n, k], d/m [n, k/32] -> r8 arrays (see the module docstring)."""
    n, k = u.shape
    groups, nb = -(-n // R), k // QK
    pad = groups * R - n
    u, d, m = (np.pad(a, ((0, pad), (0, 0))) for a in (u, d, m))
    q = u.reshape(groups, R, nb, 4, 8).transpose(0, 2, 3, 1, 4)                # [G, nb, chunk, row, 8]
    if kind == U4:
        q = q[:, :, 0::2] | (q[:, :, 1::2] << 4)                               # [G, nb, 2, row, 8]
    qs = np.ascontiguousarray(q).reshape(groups, -1)

    def scales(a):                                                             # [n, nb] -> [G, nb*8]
        a = a.reshape(groups, R, nb).transpose(0, 2, 1).reshape(groups, -1)
        return np.ascontiguousarray(a.astype(np.float16).view(np.uint16) if scale_dtype == np.float16
                                    else a.astype(np.float32))
    return qs, scales(d), scales(m)


def decode_q6_k(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw Q6_K rows (uint8 [n, row_bytes]) -> u uint8 [n, k] in 0..63, sc int8 [n, k/16],
    d float32 [n, k/256]."""
    n = data.shape[0]
    b = data.reshape(n, -1, 210)
    ql, qh, sc = b[..., 0:128], b[..., 128:192], b[..., 192:208].view(np.int8)
    d = _f16(b[..., 208:210])                                                  # [n, nsb]
    lo = (ql.reshape(n, -1, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 1, 2, 1)) & 0x0F
    lo = lo.reshape(n, -1, 2, 2, 2, 32)                                        # [n, nsb, half, shift, l/32, 32]
    lo = lo.reshape(n, -1, 2, 4, 32)                                           # [n, nsb, half, quarter, 32]
    hi = (qh.reshape(n, -1, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 1, 4, 1)) & 3
    u = (lo | (hi << 4)).astype(np.uint8)                                      # [n, nsb, half, quarter, 32]
    return u.reshape(n, -1), sc.reshape(n, -1), d


def interleave_q6(u: np.ndarray, sc: np.ndarray, d: np.ndarray) -> tuple:
    """u [n, k] in 0..63, sc [n, k/16], d [n, k/256] -> q6 r8 arrays (qs, sub-scales, super-block
    scales); see the module docstring."""
    n, k = u.shape
    groups, nb = -(-n // R), k // QK
    pad = ((0, groups * R - n), (0, 0))
    u, sc, d = np.pad(u, pad), np.pad(sc, pad), np.pad(d, pad)
    q = u.reshape(groups, R, nb, 4, 8).transpose(0, 2, 3, 1, 4)                # [G, nb, chunk, row, 8]
    lo = q & 0x0F
    lo = lo[:, :, 0::2] | (lo[:, :, 1::2] << 4)                                # [G, nb, 2, row, 8]
    hi = q >> 4
    hi = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)   # [G, nb, row, 8]
    qs = np.concatenate([lo.reshape(groups, nb, 128), hi.reshape(groups, nb, 64)], axis=2)
    sub = sc.reshape(groups, R, nb, 2).transpose(0, 2, 3, 1).reshape(groups, -1)     # [G, nb*16]
    sup = d.reshape(groups, R, -1).transpose(0, 2, 1).reshape(groups, -1)            # [G, nsb*8]
    return (np.ascontiguousarray(qs.reshape(groups, -1)).astype(np.uint8), np.ascontiguousarray(sub, np.int8),
            np.ascontiguousarray(sup, np.float32))


def repack_r8(data: np.ndarray, qtype: QT) -> R8Weight:
    """Raw GGUF rows (uint8 [rows, row_bytes]) of a R8_TYPES type -> R8Weight."""
    if qtype == QT.Q6_K:
        u, sc, d = decode_q6_k(data)
        qs, sub, sup = interleave_q6(u, sc, d)
        return R8Weight(Q6, qs, sub, sup, data.shape[0], u.shape[1], wide=False)
    u, d, m = decode_blocks(data, qtype)
    kind = U4 if qtype in (QT.Q4_0, QT.Q4_1, QT.Q4_K) else U8
    scale_dtype = np.float32 if qtype == QT.Q4_K else np.float16
    qs, dd, mm = interleave(u, d, m, kind, scale_dtype)
    zero = ZERO_POINTS.get(qtype, 0)
    if zero:
        mm = np.zeros((qs.shape[0], 0), dd.dtype)
    return R8Weight(kind, qs, dd, mm, data.shape[0], u.shape[1], wide=qtype == QT.Q8_0, zero=zero)


def dequantize_r8(w: R8Weight, rows: np.ndarray) -> np.ndarray:
    """float32 [len(rows), cols] of the given rows, read back from the r8 arrays (embedding lookup)."""
    if w.kind == Q6:
        return _dequantize_rows_q6(w.qs, w.d, w.m, np.asarray(rows, dtype=np.int64), w.cols)
    return _dequantize_rows(w.qs, w.d, w.m, np.asarray(rows, dtype=np.int64), w.cols, w.kind == U4, w.zero)


@njit(cache=True, nogil=True)
def quant_at(qs, g, b, r, j, u4):
    """u of row r (of group g), column b*32 + j, in either r8 encoding."""
    c, e = j >> 3, j & 7
    if u4:
        byte = qs[g, b * 128 + (c >> 1) * 64 + r * 8 + e]
        return (byte >> 4) if c & 1 else (byte & 0x0F)
    return qs[g, b * 256 + c * 64 + r * 8 + e]


@njit(cache=True, nogil=True)
def q6_at(qs, g, b, r, j):
    """u (0..63) of row r (of group g), column b*32 + j, in the q6 encoding."""
    c, e = j >> 3, j & 7
    o = b * Q6_BYTES
    byte = np.int64(qs[g, o + (c >> 1) * 64 + r * 8 + e])
    lo = (byte >> 4) if c & 1 else (byte & 0x0F)
    return lo | (((np.int64(qs[g, o + 128 + r * 8 + e]) >> (2 * c)) & 3) << 4)


@njit(cache=True, nogil=True)
def _dequantize_rows_q6(qs, sub, sup, rows, cols):
    out = np.empty((rows.size, cols), dtype=np.float32)                       # [T, k]
    for i in range(rows.size):
        g, r = rows[i] >> 3, rows[i] & 7
        for b in range(cols // QK):
            for j in range(QK):
                ds = np.float32(sub[g, b * 16 + (j >> 4) * 8 + r]) * sup[g, (b >> 3) * 8 + r]
                out[i, b * QK + j] = ds * np.float32(np.int32(q6_at(qs, g, b, r, j)) - 32)
    return out


@njit(cache=True, nogil=True)
def _dequantize_rows(qs, d, m, rows, cols, u4, zero):
    out = np.empty((rows.size, cols), dtype=np.float32)                       # [T, k]
    for i in range(rows.size):
        g, r = rows[i] >> 3, rows[i] & 7
        for b in range(cols // QK):
            db = scale_at(d, g * d.shape[1] + b * 8 + r)
            mb = np.float32(-zero) * db if zero else scale_at(m, g * m.shape[1] + b * 8 + r)
            for j in range(QK):
                out[i, b * QK + j] = db * np.float32(quant_at(qs, g, b, r, j, u4)) + mb
    return out


# --- activations ----------------------------------------------------------------------------
@njit(cache=True, nogil=True, fastmath=False)
def _quantize_row(x, q, d, s):
    """One row of float32 -> Q8_0 blocks as ggml's AVX quantize_row_q8_0 rounds them:
    id = 127/amax, q = round-half-even(x*id), d = amax/127 stored as float16. s = d*sum(q)/2: the
    r8 kernels add the weight's m term once per lane and each row owns two lanes."""
    for b in range(x.size // QK):
        amax = np.float32(0.0)
        for j in range(b * QK, b * QK + QK):
            amax = max(amax, abs(x[j]))
        dq = amax / np.float32(127.0)
        inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
        total = 0
        for j in range(b * QK, b * QK + QK):
            v = np.int32(np.rint(x[j] * inv))
            q[j] = v
            total += v
        d[b] = f16_to_f32(f32_to_f16(dq))
        s[b] = d[b] * np.float32(total) * np.float32(0.5)


@njit(cache=True, nogil=True, parallel=True)
def quantize_q8_0(x, q, d, s):
    """x float32 [T, k] -> q int8 [T, k], d float32 [T, k/32], s float32 [T, k/32] (in place)."""
    for t in prange(x.shape[0]):
        _quantize_row(x[t], q[t], d[t], s[t])


@njit(cache=True, nogil=True)
def quantize_q8_0_serial(x, q, d, s):
    """quantize_q8_0 without a parallel region: cheaper for the single row of a decode step."""
    for t in range(x.shape[0]):
        _quantize_row(x[t], q[t], d[t], s[t])
