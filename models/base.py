"""What every architecture shares: the hyperparameters read from `<arch>.*` GGUF keys (with
llama.cpp's defaults) and weights bound by their exact GGUF tensor names."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants

from ..backend.base import Backend
from ..errors import GGUFError, UnsupportedModelError
from ..gguf_file import GGUFFile, Tensor, shown


@dataclass
class ModelConfig:
    arch: str
    n_vocab: int
    n_ctx_train: int
    dim: int            # embedding_length
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim_k: int
    head_dim_v: int
    ffn_dim: int
    n_rot: int          # rope.dimension_count: leading dims of each head that are rotated
    rope_base: float
    rope_freq_scale: float  # 1/factor for linear rope scaling, else 1
    norm_eps: float


# Upper bounds on hyperparameters, far above any released model, checked before anything is sized
# by them; the tensor shapes then pin every count exactly (Model._check_shape).
MAX_DIM = 1 << 20          # embedding, feed-forward and head widths
MAX_COUNT = 1 << 14        # layers and heads
MAX_TOKENS = 1 << 31       # vocabulary and trained context
MIN_EPS = 1e-38            # a norm's epsilon keeps 1/rms finite on an all-zero row


def meta_int(meta: dict[str, Any], key: str, default: int | None = None, lo: int = 1, hi: int = MAX_DIM) -> int:
    """An integer key within [lo, hi] (the GGUF value kind is checked at load, gguf_file.check_metadata)."""
    value = meta.get(key, default)
    if value is None:
        raise GGUFError(f"missing metadata key {key}")
    if isinstance(value, np.ndarray):  # per-layer arrays: only uniform ones are supported here
        if value.size == 0 or np.any(value != value.flat[0]):
            raise UnsupportedModelError(f"per-layer values for {key} are not supported")
        value = value.flat[0]
    value = int(value)
    if not lo <= value <= hi:
        raise GGUFError(f"metadata {key} = {value} is out of range (expected {lo} to {hi})")
    return value


def meta_float(meta: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = float(meta.get(key, default))
    if not lo <= value <= hi:
        raise GGUFError(f"metadata {key} = {value} is out of range (expected {lo:g} to {hi:g})")
    return value


def _rope_dims(meta: dict[str, Any], key: str, head_k: int) -> int:
    """Rotated dims come in pairs and lie within a head."""
    n_rot = meta_int(meta, key, head_k, lo=0, hi=head_k)
    if n_rot % 2:
        raise GGUFError(f"metadata {key} = {n_rot} is odd (rotary dimensions come in pairs)")
    return n_rot


def read_config(meta: dict[str, Any], arch: str, eps_key: str = "attention.layer_norm_rms_epsilon") -> ModelConfig:
    """Common `<arch>.*` keys with llama.cpp's defaults (llama-model.cpp, load_hparams)."""
    k = lambda name: f"{arch}.{name}"  # noqa: E731
    dim = meta_int(meta, k("embedding_length"))
    n_heads = meta_int(meta, k("attention.head_count"), hi=MAX_COUNT)
    head_k = meta_int(meta, k("attention.key_length"), max(dim // n_heads, 1))
    n_kv_heads = meta_int(meta, k("attention.head_count_kv"), n_heads, hi=n_heads)
    if n_heads % n_kv_heads:
        raise GGUFError(f"metadata {k('attention.head_count')} = {n_heads} is not a multiple of "
                        f"{k('attention.head_count_kv')} = {n_kv_heads}")
    tokens = meta.get("tokenizer.ggml.tokens")
    scaling = meta.get(k("rope.scaling.type"), "none")
    factor = meta_float(meta, k("rope.scaling.factor"), 0.0, 0.0, 1e6)
    freq_scale = 1.0 / factor if scaling == "linear" and factor > 0 else 1.0
    if scaling not in ("none", "linear"):
        raise UnsupportedModelError(f"rope scaling type {shown(scaling)} is not supported yet")
    n_vocab = meta_int(meta, k("vocab_size"), len(tokens) if tokens is not None else None, hi=MAX_TOKENS)
    if tokens is not None and n_vocab != len(tokens):
        raise GGUFError(f"metadata {k('vocab_size')} = {n_vocab} but tokenizer.ggml.tokens holds {len(tokens)}")
    return ModelConfig(
        arch=arch,
        n_vocab=n_vocab,
        n_ctx_train=meta_int(meta, k("context_length"), 2048, hi=MAX_TOKENS),
        dim=dim,
        n_layers=meta_int(meta, k("block_count"), hi=MAX_COUNT),
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim_k=head_k,
        head_dim_v=meta_int(meta, k("attention.value_length"), max(dim // n_heads, 1)),
        ffn_dim=meta_int(meta, k("feed_forward_length")),
        n_rot=_rope_dims(meta, k("rope.dimension_count"), head_k),
        rope_base=meta_float(meta, k("rope.freq_base"), 10000.0, 1e-6, 1e30),
        rope_freq_scale=freq_scale,
        norm_eps=meta_float(meta, k(eps_key), 1e-5, MIN_EPS, 1.0),
    )


def expected_shape(name: str, c: ModelConfig) -> tuple[int, ...] | None:
    """The numpy-order shape a tensor of the llama family must have (None: not one we check)."""
    short = name.split(".", 2)[2] if name.startswith("blk.") else name
    short = short.removesuffix(".weight")
    q, kv_k, kv_v = c.n_heads * c.head_dim_k, c.n_kv_heads * c.head_dim_k, c.n_kv_heads * c.head_dim_v
    shapes = {
        "token_embd": (c.n_vocab, c.dim), "output": (c.n_vocab, c.dim), "output_norm": (c.dim,),
        "attn_norm": (c.dim,), "ffn_norm": (c.dim,), "post_attention_norm": (c.dim,), "post_ffw_norm": (c.dim,),
        "attn_q_norm": (c.head_dim_k,), "attn_k_norm": (c.head_dim_k,),
        "attn_q": (q, c.dim), "attn_k": (kv_k, c.dim), "attn_v": (kv_v, c.dim),
        "attn_output": (c.dim, c.n_heads * c.head_dim_v),
        "ffn_gate": (c.ffn_dim, c.dim), "ffn_up": (c.ffn_dim, c.dim), "ffn_down": (c.dim, c.ffn_dim),
    }
    return shapes.get(short)


class Model:
    """Base of the architecture classes: binds GGUF tensors by name through the backend.
    Subclasses list `GLOBAL_TENSORS`, `LAYER_TENSORS` (with `{}` for the block index) and
    `OPTIONAL` names, and implement `forward`."""

    GLOBAL_TENSORS: tuple[str, ...] = ()
    LAYER_TENSORS: tuple[str, ...] = ()
    OPTIONAL: frozenset[str] = frozenset()

    def __init__(self, gguf: GGUFFile, cfg: ModelConfig, backend: Backend) -> None:
        self.cfg, self.ops = cfg, backend
        self.weights: dict[str, Any] = {}
        if cfg.n_layers * len(self.LAYER_TENSORS) > len(gguf.tensors):
            raise GGUFError(f"{gguf.path}: block_count {cfg.n_layers} needs more tensors than the file's "
                            f"{len(gguf.tensors)}")
        names = list(self.GLOBAL_TENSORS) + [n.format(i) for i in range(cfg.n_layers) for n in self.LAYER_TENSORS]
        for name in names:
            tensor = gguf.tensors.get(name)
            if tensor is None:
                if name in self.OPTIONAL:
                    continue
                raise GGUFError(f"{gguf.path}: missing tensor {name!r} required by architecture {cfg.arch}")
            want = expected_shape(name, cfg)
            if want is not None and tensor.shape != want:
                raise GGUFError(f"{gguf.path}: tensor {name!r} has shape {shown(tensor.shape)}, expected {want} "
                                f"from the metadata")
            reason = backend.decline_reason(tensor)
            if reason:
                raise UnsupportedModelError(f"{name}: {reason}")
            self.weights[name] = backend.upload(tensor)
        self.layers = [self._layer(i) for i in range(cfg.n_layers)]
        self._head_tensor = gguf.tensors.get("output.weight") or gguf.tensors.get("token_embd.weight")
        self._head: Any = None     # limit_output's trimmed head

    def _layer(self, i: int) -> SimpleNamespace:
        """blk.i.attn_q.weight -> layers[i].attn_q (attribute named like the GGUF tensor)."""
        prefix = f"blk.{i}."
        return SimpleNamespace(**{name[len(prefix):].removesuffix(".weight"): w
                                  for name, w in self.weights.items() if name.startswith(prefix)})

    def w(self, name: str) -> Any:
        return self.weights.get(name + ".weight")

    def output_weight(self) -> Any:
        """The output projection, tied to the embedding table when the file has none."""
        if self._head is not None:
            return self._head
        out = self.w("output")
        return out if out is not None else self.w("token_embd")

    def limit_output(self, rows: int, qtype: GGMLQuantizationType | None = None) -> None:
        """Compute logits for the first `rows` vocabulary entries only: forward returns [T, rows].
        For a draft model (as FR-Spec does): its head is a third of a small model's bytes, and the
        low ids of GPT-2-style BPE vocabularies are the frequent tokens. With `qtype`, the cut head
        is re-encoded in that type where it is stored in more bits per weight (head_rows). Call it
        before the first forward (a backend may compile its plan then)."""
        t = self._head_tensor
        if t is None or not 0 < rows < t.shape[0]:
            return
        self._head = self.ops.upload(head_rows(t, rows, qtype))

    def forward(self, tokens: np.ndarray, cache: Any, all_logits: bool = False) -> np.ndarray:
        """tokens [T] appended at cache.offset -> logits [T or 1, n_vocab] (numpy float32)."""
        raise NotImplementedError


def _bits(qtype: GGMLQuantizationType) -> float:
    block, size = GGML_QUANT_SIZES[qtype]
    return 8 * size / block


def head_rows(t: Tensor, rows: int, qtype: GGMLQuantizationType | None = None) -> Tensor:
    """The first `rows` rows of a [vocab, dim] head; re-encoded in qtype (ggml's reference rounding,
    through float32) when that takes fewer bits per weight than the stored type and dim fits its
    blocks. A draft's head only ranks candidates: SmolLM2's Q8_0 head cut to 16384 rows and held as
    Q4_0 made its draft step ~8% cheaper with acceptance unchanged (76/106 against 75/108 on
    bench_speculative.py's code prompt; ad hoc)."""
    head = Tensor(t.name, t.type, (rows,) + tuple(t.shape[1:]), t.data[:rows])
    if qtype is None or _bits(qtype) >= _bits(t.type) or t.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
        return head
    f32 = quants.dequantize(head.data, t.type).reshape(rows, -1)                       # [rows, dim]
    return Tensor(t.name, qtype, head.shape, np.ascontiguousarray(quants.quantize(f32, qtype)))
