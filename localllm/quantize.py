"""Quantize a GGUF to Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / F16 / BF16 (or F32) the way `llama-quantize` does.

What llama.cpp decides, reproduced here (src/llama-quant.cpp):
- only 2-D+ tensors whose name ends in "weight" are converted; norms, 1-D tensors and a few small
  special tensors are copied byte for byte, whatever their type;
- `output.weight` (or `token_embd.weight` when the embeddings are tied, i.e. there is no
  output.weight) gets Q6_K for the 4/5-bit types, falling back to Q8_0 when its row length is not a
  multiple of Q6_K's 256 (SmolLM2's 576, Gemma 3's 640); Q8_0 leaves it Q8_0. F16/BF16/F32
  convert every allowed tensor;
- any other row length that does not fit the target's block has no fallback: llama.cpp refuses
  the tensor, so do we;
- tensors are written in llama.cpp's order (non-layer tensors by name, then layer by layer, by name
  within a layer), metadata is copied in order with `general.quantization_version` and
  `general.file_type` moved to the end.
The block math is gguf-py's, which reproduces ggml's reference rounding (`quantize_row_*_ref`)
byte for byte; Q6_K, which gguf-py cannot quantize, is implemented below after
`quantize_row_q6_K_ref`.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType
from gguf import quants

from .atomic import atomic_write
from .errors import LocalLLMError
from .gguf_file import GGUFFile, Tensor, _Cursor

log = logging.getLogger(__name__)

Q = GGMLQuantizationType

# target name -> (default tensor type, llama.cpp's LLAMA_FTYPE written as general.file_type)
TARGETS: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "Q8_0": (Q.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "Q4_0": (Q.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "Q4_1": (Q.Q4_1, LlamaFileType.MOSTLY_Q4_1),
    "Q5_0": (Q.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "Q5_1": (Q.Q5_1, LlamaFileType.MOSTLY_Q5_1),
    "F16": (Q.F16, LlamaFileType.MOSTLY_F16),
    "BF16": (Q.BF16, LlamaFileType.MOSTLY_BF16),
    "F32": (Q.F32, LlamaFileType.ALL_F32),
}
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION
_CHUNK_ELEMENTS = 1 << 24  # float32 rows converted at a time: 64 MiB, whatever the tensor's size

# Substrings of names llama.cpp never quantizes (tensor_allows_quantization).
_KEEP = ("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
         "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
         "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
         "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
         "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
         "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
         "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd",
         "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook",
         "mm.a.code_embd")
_KEEP_EXACT = ("position_embd.weight", "token_types.weight")
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")  # llama.cpp drops them


class QuantizeError(LocalLLMError):
    """Bad quantization request: unknown type, same input and output, a tensor that cannot be converted."""


@dataclass(frozen=True)
class _Plan:
    tensor: Tensor
    out_type: GGMLQuantizationType

    @property
    def converts(self) -> bool:
        return self.out_type != self.tensor.type

    @property
    def out_bytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.out_type]
        return self.tensor.n_elements // block * size


def quantize_file(src: str | os.PathLike[str], dst: str | os.PathLike[str], type_name: str,
                  progress: bool = True) -> dict[str, Any]:
    """Write `dst`: `src` converted to `type_name` with llama-quantize's rules (see module doc).

    The file appears at `dst` only when complete (written beside it, then renamed). Already
    quantized source tensors are dequantized first (a warning says so, and the stats). Returns
    statistics: tensor counts and types, sizes in bytes, seconds."""
    t0 = time.perf_counter()
    default_type, ftype = _target(type_name)
    src, dst = os.fspath(src), os.fspath(dst)
    _refuse_same_file(src, dst)
    gguf = GGUFFile(src)
    try:
        plans = _plan(gguf, default_type)
        _check_dequantizable(plans)
        requantized = sorted({p.tensor.type.name for p in plans if p.converts and _is_quantized(p.tensor.type)})
        if requantized:
            log.warning("requantizing from %s: the result is worse than quantizing the original float weights",
                        ", ".join(requantized))
        _write_atomically(dst, lambda path: _write(path, gguf, plans, ftype, progress))
        return {
            "src": src, "dst": dst, "type": type_name.upper(), "file_type": int(ftype),
            "n_tensors": len(plans), "n_converted": sum(p.converts for p in plans),
            "requantized_from": requantized,
            "tensor_types": dict(Counter(p.out_type.name for p in plans)),
            "bytes_in": sum(p.tensor.n_bytes for p in plans), "bytes_out": sum(p.out_bytes for p in plans),
            "file_bytes": os.path.getsize(dst), "seconds": time.perf_counter() - t0,
        }
    finally:
        gguf.close()


def _target(type_name: str) -> tuple[GGMLQuantizationType, LlamaFileType]:
    try:
        return TARGETS[type_name.upper()]
    except KeyError:
        raise QuantizeError(f"unknown quantization type {type_name!r} (choose from {', '.join(TARGETS)})") from None


def _refuse_same_file(src: str, dst: str) -> None:
    """Overwriting the input while it is memory-mapped would destroy it mid-read."""
    if not os.path.exists(src):
        raise QuantizeError(f"cannot open {src}: no such file")
    same = os.path.realpath(src) == os.path.realpath(dst) or (os.path.exists(dst) and os.path.samefile(src, dst))
    if same:
        raise QuantizeError(f"output {dst} is the input file: choose another output path")


# --- which type each tensor gets ----------------------------------------------------------------

def _layer(name: str) -> int:
    m = re.match(r"blk\.(\d+)\.", name)
    return int(m.group(1)) if m else -1


def _llama_order(names: list[str]) -> list[str]:
    """llama_model_loader's weights_map order: by layer (-1 for non-layer tensors), then by name."""
    return sorted(names, key=lambda n: (_layer(n), n.encode()))


def _allows_quantization(t: Tensor) -> bool:
    return (len(t.shape) >= 2 and t.name.endswith("weight") and t.name not in _KEEP_EXACT
            and not any(s in t.name for s in _KEEP))


def _block(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def _is_quantized(t: GGMLQuantizationType) -> bool:
    return _block(t) > 1


def _output_type(default: GGMLQuantizationType, n_cols: int) -> GGMLQuantizationType:
    """llama_tensor_get_type_impl for the output matrix (or tied embeddings): more bits than the rest."""
    return Q.Q8_0 if default == Q.Q8_0 or n_cols % _block(default) else Q.Q6_K


def _fallback(name: str, n_cols: int, qtype: GGMLQuantizationType) -> GGMLQuantizationType:
    """tensor_type_fallback: of the types chosen here only Q6_K has one, Q8_0 (which fits: Q6_K is
    only chosen for rows that fit the 32-wide blocks of the default type)."""
    if n_cols % _block(qtype) == 0:
        return qtype
    if qtype != Q.Q6_K:
        raise QuantizeError(f"tensor {name}: row length {n_cols} is not a multiple of {qtype.name}'s "
                            f"block of {_block(qtype)} (llama.cpp has no fallback either)")
    log.warning("%s: row length %d is not a multiple of 256 (Q6_K): falling back to Q8_0", name, n_cols)
    return Q.Q8_0


def _tensor_type(t: Tensor, default: GGMLQuantizationType, tied: bool) -> GGMLQuantizationType:
    if not _allows_quantization(t):
        return t.type
    if not _is_quantized(default):   # F16 / BF16 / F32: no per-tensor rules
        return default
    n_cols = t.shape[-1]
    if t.name == "output.weight" or (tied and t.name == "token_embd.weight"):
        return _fallback(t.name, n_cols, _output_type(default, n_cols))
    return _fallback(t.name, n_cols, default)


def _plan(gguf: GGUFFile, default: GGMLQuantizationType) -> list[_Plan]:
    tied = "output.weight" not in gguf.tensors
    return [_Plan(gguf.tensors[n], _tensor_type(gguf.tensors[n], default, tied))
            for n in _llama_order(list(gguf.tensors))]


# --- conversion ---------------------------------------------------------------------------------

def _check_dequantizable(plans: list[_Plan]) -> None:
    """Fail before writing anything if gguf-py cannot read one of the source types."""
    for p in {p.tensor.type: p for p in plans if p.converts}.values():
        try:
            quants.dequantize(p.tensor.data[:1], p.tensor.type)
        except NotImplementedError:
            raise QuantizeError(f"tensor {p.tensor.name}: cannot convert from {p.tensor.type.name}") from None


def _convert(plan: _Plan) -> np.ndarray:
    """The tensor's bytes in its output type, converted a block of rows at a time so that only one
    chunk of float32 exists at once."""
    t = plan.tensor
    if not plan.converts:
        return t.data
    rows = t.data  # [n_rows, row_bytes]: only 2-D+ tensors are converted
    out = np.empty((rows.shape[0], plan.out_bytes // rows.shape[0]), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMENTS // t.shape[-1])
    for r in range(0, rows.shape[0], step):
        f32 = quants.dequantize(rows[r:r + step], t.type).reshape(-1, t.shape[-1])
        out[r:r + step] = _encode(f32, plan.out_type).reshape(f32.shape[0], -1)
    return out


def _encode(f32: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.Q6_K:
        return quantize_q6_k(f32)
    return quants.quantize(f32, qtype).view(np.uint8)


# --- Q6_K (quantize_row_q6_K_ref, make_qx_quants with rmse_type 1) ------------------------------

def _nearest_int(x: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even, as float addition of 1.5*2^23 does."""
    return np.rint(x).astype(np.int32)


def _make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale per group of 16 (x: [n, 16]) and its quants L in [0, 2*nmax), weights x^2, trying
    19 scales as ggml does. Sums run left to right in float32 to match the C loops."""
    n = x.shape[0]
    amax_i = np.abs(x).argmax(axis=1)
    xmax = x[np.arange(n), amax_i]
    zero = np.abs(xmax) < 1e-15  # GROUP_MAX_EPS
    safe_max = np.where(zero, np.float32(1), xmax).astype(np.float32)
    w = x * x

    def attempt(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        l = np.clip(_nearest_int(iscale[:, None] * x), -nmax, nmax - 1)
        lf = l.astype(np.float32)
        sumlx = np.zeros(n, np.float32)
        suml2 = np.zeros(n, np.float32)
        for i in range(x.shape[1]):
            sumlx += w[:, i] * x[:, i] * lf[:, i]
            suml2 += w[:, i] * lf[:, i] * lf[:, i]
        return l, sumlx, suml2

    l, sumlx, suml2 = attempt(np.float32(-nmax) / safe_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, np.float32(0)).astype(np.float32)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        cand, sumlx, suml2 = attempt((np.float32(-nmax) - np.float32(0.1) * np.float32(step)) / safe_max)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        with np.errstate(divide="ignore", invalid="ignore"):
            new_scale = (sumlx / suml2).astype(np.float32)
        l = np.where(better[:, None], cand, l)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, scale * sumlx, best)
    # an all-zero group: scale 0 and L 0 (not nmax), as the C code leaves it
    return np.where(zero, np.float32(0), scale), np.where(zero[:, None], 0, l + nmax).astype(np.int32)


def quantize_q6_k(f32: np.ndarray) -> np.ndarray:
    """Rows [n, k] (k a multiple of 256) -> Q6_K bytes [n, k/256*210], as quantize_row_q6_K_ref.

    Bit-exact with ggml's build of it: ggml-quants.c lives in ggml-base, compiled without -march, so
    `sumlx += w*x*l` is not contracted into FMAs (an FMA build picks another scale in ~0.5% of
    blocks, on near-ties)."""
    blocks = f32.astype(np.float32, copy=False).reshape(-1, 256)
    nb = blocks.shape[0]
    scales, l0 = _make_qx_quants(blocks.reshape(-1, 16), 32)
    scales = scales.reshape(nb, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), idx]
    empty = np.abs(max_scale) < 1e-15
    with np.errstate(divide="ignore"):
        iscale = np.where(empty, np.float32(0), np.float32(-128) / np.where(empty, 1, max_scale)).astype(np.float32)
        d16 = np.where(empty, 0, np.float32(1) / iscale).astype(np.float16)
    sc = np.minimum(127, _nearest_int(iscale[:, None] * scales)).astype(np.int8)
    d = d16.astype(np.float32)[:, None] * sc.astype(np.float32)           # [nb, 16]
    x = blocks.reshape(nb, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(_nearest_int(x / d[:, :, None]), -32, 31) + 32
    # a zero sub-block scale leaves L as make_qx_quants set it
    q = np.where((d == 0)[:, :, None], l0.reshape(nb, 16, 16), q).reshape(nb, 256).astype(np.uint8)
    q = np.where(empty[:, None], 0, q).astype(np.uint8)
    sc = np.where(empty[:, None], 0, sc).astype(np.int8)
    return np.concatenate([_pack_q6(q), sc.view(np.uint8), d16.reshape(nb, 1).view(np.uint8)],
                          axis=1).reshape(f32.shape[0], -1)


def _pack_q6(q: np.ndarray) -> np.ndarray:
    """ql (128 bytes: low nibbles) and qh (64 bytes: high 2 bits) in ggml's interleaved layout."""
    nb = q.shape[0]
    q = q.reshape(nb, 2, 4, 32)                  # [half of 128, quarter of 32, l]
    lo, hi = q & 0xF, q >> 4
    ql = np.stack([lo[:, :, 0] | (lo[:, :, 2] << 4), lo[:, :, 1] | (lo[:, :, 3] << 4)], axis=2)
    qh = hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)
    return np.concatenate([ql.reshape(nb, 128), qh.reshape(nb, 64)], axis=1).astype(np.uint8)


# --- writing ------------------------------------------------------------------------------------

def _write_atomically(dst: str, write) -> None:
    """Write to a temporary name beside dst and rename: an interrupted run leaves dst untouched."""
    try:
        with atomic_write(dst) as tmp:
            write(str(tmp))
    except OSError as e:
        raise QuantizeError(f"cannot write {dst}: {e.strerror or e}") from None


def _read_kv(path: str, header_size: int) -> list[tuple[str, GGUFValueType, GGUFValueType | None, Any]]:
    """Metadata with its GGUF value types (GGUFFile keeps values only; ints need their exact type)."""
    with open(path, "rb") as f:
        header = f.read(header_size)
    cur = _Cursor(header, path)
    cur.take(4 + 4 + 8)  # magic, version, tensor count
    out = []
    for _ in range(cur.unpack("Q")):
        key, vtype = cur.string(), GGUFValueType(cur.unpack("I"))
        is_array = vtype == GGUFValueType.ARRAY
        sub = GGUFValueType(int.from_bytes(header[cur.pos:cur.pos + 4], "little")) if is_array else None
        value = cur.value(vtype, key)
        out.append((key, vtype, sub, value.tolist() if isinstance(value, np.ndarray) else value))
    return out


def _add_metadata(writer: GGUFWriter, gguf: GGUFFile, ftype: LlamaFileType) -> None:
    """Copy every key in order (GGUFWriter already wrote general.architecture), then set the two
    keys llama.cpp sets; like gguf_set_val_u32 they go to the end."""
    skip = ("general.architecture", "general.quantization_version", "general.file_type") + _SPLIT_KEYS
    for key, vtype, sub, value in _read_kv(gguf.path, gguf.data_offset):
        if key == "general.alignment":
            writer.data_alignment = int(value)
        if key in skip:
            continue
        writer.add_key_value(key, value, vtype, sub_type=sub)
    writer.add_uint32("general.quantization_version", QUANTIZATION_VERSION)
    writer.add_uint32("general.file_type", int(ftype))


def _write(path: str, gguf: GGUFFile, plans: list[_Plan], ftype: LlamaFileType, progress: bool) -> None:
    from tqdm import tqdm

    writer = GGUFWriter(path, gguf.architecture)
    _add_metadata(writer, gguf, ftype)
    for p in plans:
        # the shape is the element shape: with a non-uint8 dtype GGUFWriter takes it as is
        writer.add_tensor_info(p.tensor.name, p.tensor.shape, np.dtype(np.float32), p.out_bytes,
                               raw_dtype=p.out_type)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with tqdm(total=sum(p.tensor.n_bytes for p in plans), unit="B", unit_scale=True, file=sys.stderr,
                  disable=not progress, desc=f"quantize {os.path.basename(gguf.path)}") as bar:
            for p in plans:
                writer.write_tensor_data(_convert(p))
                bar.update(p.tensor.n_bytes)
    finally:
        writer.close()
