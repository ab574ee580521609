"""Random-weight GGUF files (llama and the other architectures of models/), laid out the way llama.cpp's convert + quantize tools write them.

They give tests and benchmarks models of any shape (up to 1B+ parameters) without downloading
one. Weights are N(0, 0.02) (norms near 1) so activations stay sane. Every tensor draws from its
own generator seeded by (seed, crc32(name)), so `random_weights` regenerates any tensor's float
values exactly, and the file is written tensor by tensor: only one tensor is ever in memory.

gguf-py implements quantize for F32/F16/BF16/Q4_0/Q4_1/Q5_0/Q8_0 but not for K-quants, so Q4_K,
Q5_K and Q6_K use the simple min/max quantizers below: valid blocks that dequantize close to the
input, though not llama.cpp's iterative reference rounding (not bit-identical to llama-quantize).
"""
from __future__ import annotations

import functools
import logging
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import regex
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType, GGUFWriter, LlamaFileType, TokenType
from gguf.constants import GGML_QUANT_VERSION
from gguf.quants import quantize

from .tokenizer.bpe import BYTE_TO_CHAR

log = logging.getLogger(__name__)

Q = GGMLQuantizationType
QK_K = 256
WEIGHT_STD = 0.02
BIAS_STD = 0.5
_CHUNK_ELEMS = 1 << 22  # floats generated and quantized at a time (16 MiB transient)

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
_FILE_TYPE = {
    Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16, Q.BF16: LlamaFileType.MOSTLY_BF16,
    Q.Q4_0: LlamaFileType.MOSTLY_Q4_0, Q.Q4_1: LlamaFileType.MOSTLY_Q4_1, Q.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    Q.Q8_0: LlamaFileType.MOSTLY_Q8_0, Q.Q4_K: LlamaFileType.MOSTLY_Q4_K_S, Q.Q5_K: LlamaFileType.MOSTLY_Q5_K_S,
    Q.Q6_K: LlamaFileType.MOSTLY_Q6_K,
}
# llama-quantize keeps output.weight at 6 bits when the body is quantized more coarsely.
_LOW_BIT = (Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q4_K, Q.Q5_K)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DEFAULT_MERGES = 400


@dataclass(frozen=True)
class Layout:
    """How an architecture's tensors differ from llama's, as llama.cpp's converters write them."""

    qkv_bias: bool = False        # attn_q/k/v.bias
    qk_norm: bool = False         # attn_q_norm / attn_k_norm [head_dim]
    post_norms: bool = False      # post_attention_norm / post_ffw_norm
    fused_qkv: bool = False       # attn_qkv [(H + 2 KV) * head_dim, dim]
    fused_gate_up: bool = False   # ffn_up [2 * ffn, dim] = [gate; up], no ffn_gate
    rope_factors: tuple[str, ...] = ()   # global per-pair factor tensors [n_rot/2]
    tied: bool = False            # the output is always the embedding table


LAYOUTS = {
    "llama": Layout(), "qwen2": Layout(qkv_bias=True), "qwen3": Layout(qk_norm=True),
    "phi3": Layout(fused_qkv=True, fused_gate_up=True, rope_factors=("rope_factors_long", "rope_factors_short")),
    "gemma2": Layout(post_norms=True, tied=True), "gemma3": Layout(qk_norm=True, post_norms=True),
}


def make_random_gguf(
    path: str | os.PathLike[str], *, arch: str = "llama", dim: int = 64, n_layers: int = 2, n_heads: int = 4,
    n_kv_heads: int = 2, ffn: int = 128, vocab: int | None = None, n_ctx: int = 512, tensor_type: str = "Q8_0",
    output_type: str | None = None, tied: bool = False, seed: int = 0, rope_base: float = 10000.0,
    norm_eps: float = 1e-5, tokenizer_from: str | os.PathLike[str] | None = None, head_dim: int | None = None,
    n_rot: int | None = None, rope_freqs: bool = False, rope_scaling: dict[str, Any] | None = None,
    sliding_window: int | None = None, softcap: tuple[float, float] | None = None, output_std: float = WEIGHT_STD,
    chat_template: bool = True,
) -> Path:
    """Write a random-weight GGUF of architecture `arch` (LAYOUTS) to `path` (atomically) and
    return it. chat_template=False leaves the template out (as a base model's file). n_rot: rotated dims per head (partial rotary; default all); rope_freqs: a llama
    rope_freqs.weight (Llama 3.1 factors); rope_scaling: rope.scaling.* keys ("type", "factor",
    "original_context_length", "attn_factor"); softcap: (attention, final) logit soft-capping;
    output_std: the output head's weight scale (larger: more peaked logits)."""
    if arch not in LAYOUTS:
        raise ValueError(f"no generator layout for {arch!r} (have {', '.join(LAYOUTS)})")
    layout = LAYOUTS[arch]
    head_dim = head_dim or dim // n_heads
    n_rot = n_rot or head_dim
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
    tok = _tokenizer_kv(tokenizer_from, vocab)
    if not chat_template:
        tok.pop("tokenizer.chat_template", None)
    vocab = len(tok["tokenizer.ggml.tokens"][0])
    qtype = _qtype(tensor_type)
    otype = _qtype(output_type) if output_type else _default_output(tensor_type, dim)
    factors = layout.rope_factors + (("rope_freqs",) if rope_freqs else ())
    specs = _tensor_specs(dim, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab, qtype, otype,
                          tied or layout.tied, layout, n_rot, factors)
    head = "token_embd.weight" if tied or layout.tied else "output.weight"
    stds = {head: output_std}

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = GGUFWriter(tmp, arch)
    try:
        _add_hparams(writer, arch, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn, vocab, n_ctx,
                     rope_base, norm_eps, qtype, n_rot)
        _add_extras(writer, arch, rope_scaling, sliding_window, softcap)
        for key, (value, vtype, sub_type) in tok.items():
            writer.add_key_value(key, value, vtype, sub_type)
        for name, shape, ttype in specs:
            writer.add_tensor_info(name, *_stored_layout(shape, ttype), raw_dtype=ttype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, shape, ttype in specs:
            writer.write_tensor_data(_encode_tensor(name, shape, ttype, seed, stds.get(name)))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s (%d tensors, %.1f MiB)", path, len(specs), path.stat().st_size / 2**20)
    return path


def random_weights(name: str, shape: tuple[int, ...], seed: int = 0, std: float | None = None) -> np.ndarray:
    """The float32 values `make_random_gguf` generated for tensor `name` before encoding it
    (std: the output head's, when make_random_gguf was given an output_std)."""
    rows = _n_rows(shape)
    return np.concatenate([x for _, _, x in _weight_chunks(name, rows, shape[-1], seed, std)]).reshape(shape)


# --- tensors ------------------------------------------------------------------------------

def _qtype(name: str) -> GGMLQuantizationType:
    if name not in SUPPORTED_TYPES:
        raise ValueError(f"tensor type {name!r} not supported (choose from {', '.join(SUPPORTED_TYPES)})")
    return Q[name]


def _default_output(tensor_type: str, dim: int) -> GGMLQuantizationType:
    qtype = _qtype(tensor_type)
    return Q.Q6_K if qtype in _LOW_BIT and dim % QK_K == 0 else qtype


def _tensor_specs(dim: int, n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int, ffn: int, vocab: int,
                  qtype: GGMLQuantizationType, otype: GGMLQuantizationType, tied: bool, layout: Layout = Layout(),
                  n_rot: int = 0, factors: tuple[str, ...] = ()) -> list[tuple[str, tuple[int, ...], GGMLQuantizationType]]:
    """(name, numpy shape, type) in file order; numpy shape = ggml ne reversed, rows first."""
    specs = [("token_embd.weight", (vocab, dim), qtype)]
    nq, nkv = n_heads * head_dim, n_kv_heads * head_dim
    for i in range(n_layers):
        b = f"blk.{i}."
        specs.append((b + "attn_norm.weight", (dim,), Q.F32))
        if layout.fused_qkv:
            specs.append((b + "attn_qkv.weight", (nq + 2 * nkv, dim), qtype))
        else:
            specs += [(b + f"attn_{p}.weight", (n, dim), qtype) for p, n in (("q", nq), ("k", nkv), ("v", nkv))]
        if layout.qkv_bias:
            specs += [(b + f"attn_{p}.bias", (n,), Q.F32) for p, n in (("q", nq), ("k", nkv), ("v", nkv))]
        if layout.qk_norm:
            specs += [(b + "attn_q_norm.weight", (head_dim,), Q.F32), (b + "attn_k_norm.weight", (head_dim,), Q.F32)]
        specs.append((b + "attn_output.weight", (dim, nq), qtype))
        if layout.post_norms:
            specs.append((b + "post_attention_norm.weight", (dim,), Q.F32))
        specs.append((b + "ffn_norm.weight", (dim,), Q.F32))
        if layout.fused_gate_up:
            specs.append((b + "ffn_up.weight", (2 * ffn, dim), qtype))
        else:
            specs += [(b + "ffn_gate.weight", (ffn, dim), qtype), (b + "ffn_up.weight", (ffn, dim), qtype)]
        specs.append((b + "ffn_down.weight", (dim, ffn), qtype))
        if layout.post_norms:
            specs.append((b + "post_ffw_norm.weight", (dim,), Q.F32))
    specs.append(("output_norm.weight", (dim,), Q.F32))
    if not tied:
        specs.append(("output.weight", (vocab, dim), otype))
    specs += [(f"{name}.weight", (n_rot // 2,), Q.F32) for name in factors]
    for name, shape, ttype in specs:
        block = GGML_QUANT_SIZES[ttype][0]
        if shape[-1] % block:
            raise ValueError(f"{name}: row length {shape[-1]} is not a multiple of {ttype.name}'s block of {block}")
    return specs


def _n_rows(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[:-1])) if len(shape) > 1 else 1


def _stored_layout(shape: tuple[int, ...], ttype: GGMLQuantizationType) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, nbytes) as GGUFWriter.add_tensor_info wants them for the encoded tensor."""
    block, type_size = GGML_QUANT_SIZES[ttype]
    nbytes = _n_rows(shape) * shape[-1] // block * type_size
    if ttype in (Q.F32, Q.F16):
        return shape, np.dtype(np.float32 if ttype == Q.F32 else np.float16), nbytes
    return (*shape[:-1], shape[-1] // block * type_size), np.dtype(np.uint8), nbytes


def _weight_chunks(name: str, rows: int, cols: int, seed: int,
                   std: float | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """(first row, end row, float32 [r, cols]) slices of the tensor, drawn from one stream, so the
    values do not depend on the chunking. Norms are near 1, biases N(0, BIAS_STD) (large enough to
    matter), rope factors 1 + |N(0, 2)| (positive divisors of the angles)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    mean = np.float32(1.0 if name.endswith("norm.weight") else 0.0)
    std = std or (BIAS_STD if name.endswith(".bias") else WEIGHT_STD)
    step = max(1, _CHUNK_ELEMS // cols)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        x = rng.standard_normal((r1 - r0, cols), dtype=np.float32)
        if name.startswith("rope_"):
            yield r0, r1, np.float32(1) + np.abs(x) * np.float32(2)
        else:
            yield r0, r1, x * np.float32(std) + mean


def _encode_tensor(name: str, shape: tuple[int, ...], ttype: GGMLQuantizationType, seed: int,
                   std: float | None = None) -> np.ndarray:
    rows = _n_rows(shape)
    stored, dtype, _ = _stored_layout((rows, shape[-1]), ttype)
    out = np.empty(stored, dtype=dtype)
    for r0, r1, x in _weight_chunks(name, rows, shape[-1], seed, std):
        out[r0:r1] = _encode(x, ttype)
    return out


def _encode(x: np.ndarray, ttype: GGMLQuantizationType) -> np.ndarray:
    if ttype == Q.Q4_K:
        return quantize_q4_k(x)
    if ttype == Q.Q5_K:
        return quantize_q5_k(x)
    if ttype == Q.Q6_K:
        return quantize_q6_k(x)
    return quantize(x, ttype)


def _fp16_scale(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """v rounded to fp16 (as stored) and its float32 value with zeros replaced by 1 (safe divisor)."""
    v16 = v.astype(np.float16)
    v32 = v16.astype(np.float32)
    return v16, np.where(v32 == 0, np.float32(1), v32)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """float32 [..., n*256] -> Q6_K bytes: per 16 values an int8 scale, q in [-32, 31]."""
    shape = x.shape
    sub = x.reshape(-1, QK_K // 16, 16).astype(np.float32)
    nb = sub.shape[0]
    # the signed extreme maps to q = -32 so the full range [-32, 31] is used
    extreme = np.take_along_axis(sub, np.abs(sub).argmax(-1)[..., None], -1)[..., 0]
    scale = -extreme / 32
    d16, d = _fp16_scale(np.abs(scale).max(-1) / 127)
    sc = np.clip(np.rint(scale / d[:, None]), -128, 127)
    step = d[:, None] * sc
    q = np.rint(sub / np.where(step == 0, 1, step)[..., None])
    q = (np.clip(np.where(step[..., None] == 0, 0, q), -32, 31) + 32).astype(np.uint8).reshape(nb, QK_K)
    lo, hi = q & 0x0F, q >> 4
    lo = lo.reshape(nb, 2, 2, 64)  # ql byte j of half h: low nibble value j, high nibble value j + 64
    ql = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(nb, 64 * 2)
    hi = hi.reshape(nb, 2, 4, 32)  # qh byte j of half h: 2 bits each of values j, j+32, j+64, j+96
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(nb, 64)
    blocks = np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d16.reshape(nb, 1).view(np.uint8)], -1)
    return blocks.reshape(*shape[:-1], shape[-1] // QK_K * blocks.shape[-1])


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    """float32 [..., n*256] -> Q4_K bytes: per 32 values a 6-bit scale and min, q in [0, 15]."""
    head, q = _k_blocks(x, 15)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(len(q), 128)
    return _k_rows(x.shape, np.concatenate([head, qs], -1))


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    """float32 [..., n*256] -> Q5_K bytes: Q4_K's scales, q in [0, 31] (the fifth bits in qh)."""
    head, q = _k_blocks(x, 31)
    nb = len(q)
    qs = ((q[:, :, 0] & 0x0F) | ((q[:, :, 1] & 0x0F) << 4)).reshape(nb, 128)
    fifth = (q >> 4).reshape(nb, 8, 32)              # bit i of qh byte l: the fifth bit of value 32i + l
    qh = np.bitwise_or.reduce(fifth << np.arange(8, dtype=np.uint8)[None, :, None], axis=1)
    return _k_rows(x.shape, np.concatenate([head, qh, qs], -1))


def _k_rows(shape: tuple[int, ...], blocks: np.ndarray) -> np.ndarray:
    return blocks.reshape(*shape[:-1], shape[-1] // QK_K * blocks.shape[-1])


def _k_blocks(x: np.ndarray, qmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's shared part: per super-block d, dmin and the 12 packed scale bytes [nb, 16], and
    the quants q in [0, qmax] as uint8 [nb, 4, 2, 32] (chunk of 64, its two sub-blocks of 32)."""
    sub = x.reshape(-1, 8, 32).astype(np.float32)
    nb = sub.shape[0]
    lo = np.minimum(sub.min(-1), 0)  # value = d*sc*q - dmin*m, with m >= 0
    scale, minv = (sub.max(-1) - lo) / qmax, -lo
    d16, d = _fp16_scale(scale.max(-1) / 63)
    dmin16, dmin = _fp16_scale(minv.max(-1) / 63)
    sc = np.clip(np.rint(scale / d[:, None]), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(minv / dmin[:, None]), 0, 63).astype(np.uint8)
    step = d[:, None] * sc
    q = np.rint((sub + (dmin[:, None] * m)[..., None]) / np.where(step == 0, 1, step)[..., None])
    q = np.clip(q, 0, qmax).astype(np.uint8).reshape(nb, 4, 2, 32)
    # 12 scale bytes: 6 low bits of sc/m 0-3, then nibbles of sc/m 4-7 with their top 2 bits above
    scales = np.concatenate([
        sc[:, :4] | ((sc[:, 4:] >> 4) << 6),
        m[:, :4] | ((m[:, 4:] >> 4) << 6),
        (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4),
    ], -1)
    return np.concatenate([d16.reshape(nb, 1).view(np.uint8), dmin16.reshape(nb, 1).view(np.uint8), scales], -1), q


# --- metadata -----------------------------------------------------------------------------

def _add_hparams(writer: GGUFWriter, arch: str, dim: int, n_layers: int, n_heads: int, n_kv_heads: int,
                 head_dim: int, ffn: int, vocab: int, n_ctx: int, rope_base: float, norm_eps: float,
                 qtype: GGMLQuantizationType, n_rot: int) -> None:
    # no architecture in the name: llama.cpp keys token attributes on names such as "phi3"
    writer.add_name(f"synthetic-{dim}x{n_layers}-{qtype.name}")
    writer.add_block_count(n_layers)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(dim)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(n_kv_heads)
    writer.add_rope_freq_base(rope_base)
    writer.add_layer_norm_rms_eps(norm_eps)
    writer.add_rope_dimension_count(n_rot)
    if head_dim * n_heads != dim:  # llama.cpp assumes dim / n_heads unless told otherwise
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(vocab)
    writer.add_file_type(_FILE_TYPE[qtype])
    writer.add_quantization_version(GGML_QUANT_VERSION)


def _add_extras(writer: GGUFWriter, arch: str, rope_scaling: dict[str, Any] | None, sliding_window: int | None,
                softcap: tuple[float, float] | None) -> None:
    """The optional `<arch>.*` keys: rope scaling, sliding window, soft-capping."""
    f32, u32, s = GGUFValueType.FLOAT32, GGUFValueType.UINT32, GGUFValueType.STRING
    kinds = {"type": s, "factor": f32, "original_context_length": u32, "attn_factor": f32}
    for key, value in (rope_scaling or {}).items():
        writer.add_key_value(f"{arch}.rope.scaling.{key}", value, kinds[key])
    if sliding_window is not None:
        writer.add_key_value(f"{arch}.attention.sliding_window", sliding_window, u32)
    if softcap is not None:
        writer.add_key_value(f"{arch}.attn_logit_softcapping", float(softcap[0]), f32)
        writer.add_key_value(f"{arch}.final_logit_softcapping", float(softcap[1]), f32)


KV = dict[str, tuple[Any, GGUFValueType, GGUFValueType | None]]


def _tokenizer_kv(tokenizer_from: str | os.PathLike[str] | None, vocab: int | None) -> KV:
    """tokenizer.* keys as (value, type, array element type): copied from a GGUF or built."""
    if tokenizer_from is None:
        return _built_tokenizer(vocab)
    from localllm.gguf_file import GGUFFile

    src = GGUFFile(tokenizer_from)
    kv = {k: _typed(k, v) for k, v in src.metadata.items() if k.startswith("tokenizer.")}
    src.close()
    if "tokenizer.ggml.tokens" not in kv:
        raise ValueError(f"{tokenizer_from}: no tokenizer.ggml.tokens to copy")
    n = len(kv["tokenizer.ggml.tokens"][0])
    if vocab is not None and vocab != n:
        raise ValueError(f"vocab {vocab} differs from {tokenizer_from}'s {n} tokens")
    return kv


def _typed(key: str, value: Any) -> tuple[Any, GGUFValueType, GGUFValueType | None]:
    """GGUFFile hands back plain python values; give each the GGUF type llama.cpp expects."""
    if isinstance(value, np.ndarray):  # numeric arrays keep their stored dtype (int32, float32...)
        return value.tolist(), GGUFValueType.ARRAY, GGUFValueType[value.dtype.name.upper()]
    if isinstance(value, list):
        return value, GGUFValueType.ARRAY, GGUFValueType.STRING
    if isinstance(value, bool):
        return value, GGUFValueType.BOOL, None
    if isinstance(value, int):  # token ids and counts are uint32 in llama.cpp's converters
        return value, GGUFValueType.UINT32 if value >= 0 else GGUFValueType.INT32, None
    if isinstance(value, float):
        return value, GGUFValueType.FLOAT32, None
    if isinstance(value, str):
        return value, GGUFValueType.STRING, None
    raise ValueError(f"cannot copy {key}: unsupported value type {type(value).__name__}")


def _built_tokenizer(vocab: int | None) -> KV:
    n_base = len(SPECIAL_TOKENS) + 256
    if vocab is not None and vocab < n_base:
        raise ValueError(f"vocab {vocab} is below the {n_base} tokens a byte-level vocabulary needs")
    tokens, merges = build_bpe_vocab(DEFAULT_MERGES if vocab is None else min(DEFAULT_MERGES, vocab - n_base))
    tokens = list(tokens)
    tokens += [f"<|reserved_{i}|>" for i in range((vocab or len(tokens)) - len(tokens))]
    types = [TokenType.CONTROL if t in SPECIAL_TOKENS or t.startswith("<|reserved_") else TokenType.NORMAL
             for t in tokens]
    arr, s, u32 = GGUFValueType.ARRAY, GGUFValueType.STRING, GGUFValueType.UINT32
    return {
        "tokenizer.ggml.model": ("gpt2", s, None),
        "tokenizer.ggml.pre": ("default", s, None),
        "tokenizer.ggml.tokens": (tokens, arr, s),
        "tokenizer.ggml.token_type": ([int(t) for t in types], arr, GGUFValueType.INT32),
        "tokenizer.ggml.merges": (list(merges), arr, s),
        "tokenizer.ggml.bos_token_id": (0, u32, None),
        "tokenizer.ggml.eos_token_id": (0, u32, None),
        "tokenizer.ggml.add_bos_token": (False, GGUFValueType.BOOL, None),
        "tokenizer.chat_template": (CHATML_TEMPLATE, s, None),
    }


# --- a tiny byte-level BPE ----------------------------------------------------------------

_CORPUS = """\
The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.
Once upon a time there was a little girl who lived in a village near the forest. Whenever she went
out, the little girl wore a red riding cloak, so everyone in the village called her Little Red Riding
Hood. One morning she asked her mother if she could go to visit her grandmother, as it had been a
while since they had seen each other. The weather was fine and the birds were singing in the trees.
Language models read text as tokens. A tokenizer splits the input into pieces that are often whole
words, parts of words, or single bytes, and the model then predicts the next piece, one at a time.
We tested the program on the computer and found that it worked well, but it was slower than we had
hoped. The people who are working on this project should also write their notes in the shared file.
There are many things that you can do with numbers: 1, 2, 3, 10, 100 and 2024 are all numbers, and
so are 3.14 and 42. What would you like to do today? I think that we should go for a walk in the park.
This is a simple sentence. These are some more sentences, and they are here to give the tokenizer
enough common English words to learn from: the, and, of, to, in, is, that, for, with, as, was, on,
be, at, by, this, have, from, or, one, had, not, but, what, all, were, when, we, there, can, an,
your, which, their, said, if, do, will, each, about, how, up, out, them, then, she, many, some, so,
these, would, other, into, has, more, her, two, like, him, see, time, could, no, make, than, first,
been, its, who, now, people, my, made, over, did, down, only, way, find, use, may, water, long,
little, very, after, words, called, just, where, most, know, get, through, back, much, before, go,
good, new, write, our, used, me, man, day, too, any, same, right, look, think, also, around, another.
"""
_PRETOKENIZE = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@functools.cache
def build_bpe_vocab(n_merges: int = DEFAULT_MERGES) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tokens, merges) of a byte-level BPE learned on a small English text: the specials first
    (ids 0-2, like SmolLM2), then the 256 byte symbols, then each merge's new symbol."""
    b2u = dict(enumerate(BYTE_TO_CHAR))   # GPT-2's byte -> printable symbol table
    words = Counter(tuple(b2u[b] for b in w.encode()) for w in _PRETOKENIZE.findall(_CORPUS))
    tokens = [*SPECIAL_TOKENS, *(b2u[b] for b in range(256))]
    known, merges = set(tokens), []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the pair itself: deterministic
        merges.append(f"{best[0]} {best[1]}")
        if best[0] + best[1] not in known:  # two merges can spell one symbol; tokens stay unique
            known.add(best[0] + best[1])
            tokens.append(best[0] + best[1])
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            merged[_merge(word, best)] += count
        words = merged
    return tuple(tokens), tuple(merges)


def _merge(word: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(word[i] + word[i + 1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)
