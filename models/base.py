"""What every architecture shares: the hyperparameters read from `<arch>.*` GGUF keys (with
llama.cpp's defaults) and weights bound by their exact GGUF tensor names."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants

from ..backend.base import Backend, CompiledStep
from ..errors import GGUFError, UnsupportedModelError, quoted
from ..gguf_file import GGUFFile, Tensor
from ..kv_cache import CacheBatch

log = logging.getLogger(__name__)


# llama.cpp's llama_rope_scaling_type names; any other is refused (llama.cpp asserts)
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")


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
    rope_freq_scale: float  # 1/rope.scaling.factor (any scaling type but none), else 1
    norm_eps: float
    rope_scaling: str = "linear"    # none | linear | yarn | longrope (llama.cpp's default: linear)
    n_ctx_orig: int = 0             # rope.scaling.original_context_length (YaRN, LongRoPE's long/short pick)
    rope_attn_factor: float = 1.0   # rope.scaling.attn_factor: multiplies the rotated dims (cos and sin)
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0


# Upper bounds on hyperparameters, far above any released model, checked before anything is sized
# by them; the tensor shapes then pin every count exactly (expected_shape).
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
    try:
        value = int(value)
    except (TypeError, ValueError, OverflowError):
        raise GGUFError(f"metadata {key} is {quoted(value)}, not an integer") from None
    if not lo <= value <= hi:
        raise GGUFError(f"metadata {key} = {value} is out of range (expected {lo} to {hi})")
    return value


def meta_float(meta: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    try:
        value = float(meta.get(key, default))
    except (TypeError, ValueError):
        raise GGUFError(f"metadata {key} is {quoted(meta.get(key))}, not a number") from None
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
    """Common `<arch>.*` keys with llama.cpp's defaults (llama-model.cpp, load_hparams), each
    within a range before anything is sized by it."""
    k = lambda name: f"{arch}.{name}"  # noqa: E731
    dim = meta_int(meta, k("embedding_length"))
    n_heads = meta_int(meta, k("attention.head_count"), hi=MAX_COUNT)
    head_k = meta_int(meta, k("attention.key_length"), max(dim // n_heads, 1))
    n_kv_heads = meta_int(meta, k("attention.head_count_kv"), n_heads, hi=n_heads)
    if n_heads % n_kv_heads:
        raise GGUFError(f"metadata {k('attention.head_count')} = {n_heads} is not a multiple of "
                        f"{k('attention.head_count_kv')} = {n_kv_heads}")
    tokens = meta.get("tokenizer.ggml.tokens")
    scaling = meta.get(k("rope.scaling.type"), "linear")
    if scaling not in ROPE_SCALING_TYPES:
        raise UnsupportedModelError(f"rope scaling type {quoted(scaling)} is not supported "
                                    f"(supported: {', '.join(ROPE_SCALING_TYPES)})")
    factor = meta_float(meta, k("rope.scaling.factor"), meta_float(meta, k("rope.scale_linear"), 0.0, 0.0, 1e6), 0.0, 1e6)
    freq_scale = 1.0 / factor if scaling != "none" and factor > 0 else 1.0
    n_ctx_train = meta_int(meta, k("context_length"), 2048, hi=MAX_TOKENS)
    n_vocab = meta_int(meta, k("vocab_size"), len(tokens) if tokens is not None else None, hi=MAX_TOKENS)
    if tokens is not None and n_vocab != len(tokens):
        raise GGUFError(f"metadata {k('vocab_size')} = {n_vocab} but tokenizer.ggml.tokens holds {len(tokens)}")
    return ModelConfig(
        arch=arch,
        n_vocab=n_vocab,
        n_ctx_train=n_ctx_train,
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
        rope_scaling=scaling,
        n_ctx_orig=meta_int(meta, k("rope.scaling.original_context_length"), n_ctx_train, hi=MAX_TOKENS),
        rope_attn_factor=meta_float(meta, k("rope.scaling.attn_factor"), 1.0, 0.0, 1e6),
        yarn_beta_fast=meta_float(meta, k("rope.scaling.yarn_beta_fast"), 32.0, -1e6, 1e6),
        yarn_beta_slow=meta_float(meta, k("rope.scaling.yarn_beta_slow"), 1.0, -1e6, 1e6),
    )


def expected_shape(name: str, c: ModelConfig) -> tuple[int, ...] | None:
    """The numpy-order shape a block tensor must have (None: not one we check)."""
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


@dataclass(frozen=True)
class Block:
    """How an architecture's transformer block differs from llama's (the defaults). Biases
    (`<name>.bias` next to a projection) are used wherever the file has them."""

    rope_neox: bool = False       # NEOX pairs (i, i + n_rot/2), else NORM pairs (2i, 2i+1)
    qk_norm: bool = False         # RMSNorm over each head of Q and K (attn_q_norm, attn_k_norm), before RoPE
    post_norms: bool = False      # sandwich: RMSNorm of the attention and FFN outputs before their residual add
    gelu: bool = False            # GeGLU (ggml's tanh GELU), else SwiGLU
    embed_scale: bool = False     # embeddings times sqrt(dim)
    fused_qkv: bool = False       # attn_qkv holds [Q; K; V] by rows (split at load when present)
    fused_gate_up: bool = False   # ffn_up holds [gate; up] by rows (split at load when ffn_gate is absent)


@dataclass(frozen=True)
class Rope:
    """One layer's rotary settings as the backends' rope op takes them."""

    base: float
    freq_scale: float
    factors: np.ndarray | None    # [n_rot/2] divisors of each pair's angle (llama.cpp's freq_factors), or None
    mscale: float                 # multiplies cos and sin (YaRN's magnitude, LongRoPE's attn_factor)


class Model:
    """Base of the architecture classes and the one transformer forward they share. A subclass
    states its tensors (`GLOBAL_TENSORS`, `LAYER_TENSORS` with `{}` for the block index,
    `OPTIONAL` names) and its `BLOCK` flags, and overrides the per-layer hooks (`is_swa`,
    `rope_base`, `attn_scale`, `rope_factor_tensor`) where it differs."""

    GLOBAL_TENSORS: tuple[str, ...] = ("token_embd.weight", "output_norm.weight", "output.weight")
    LAYER_TENSORS: tuple[str, ...] = ()
    OPTIONAL: frozenset[str] = frozenset({"output.weight"})   # absent = tied to token_embd
    BLOCK = Block()
    ARCH = ""
    # per-projection biases llama.cpp reads where present (its create_tensor ... TENSOR_NOT_REQUIRED)
    BIASES = ("attn_q", "attn_k", "attn_v", "attn_output")

    @classmethod
    def config(cls, meta: dict[str, Any]) -> ModelConfig:
        return read_config(meta, cls.ARCH)

    def __init__(self, gguf: GGUFFile, cfg: ModelConfig, backend: Backend) -> None:
        self.cfg, self.ops, self.meta = cfg, backend, gguf.metadata
        self.weights: dict[str, Any] = {}
        self.rope_neox = self.BLOCK.rope_neox
        # a cheap bound before anything loops over block_count (which a hostile file sets to 2^32);
        # a fused attn_qkv stands for three tensors, a fused ffn_up for two
        per_layer = len(self.LAYER_TENSORS) - 2 * self.BLOCK.fused_qkv - self.BLOCK.fused_gate_up
        if cfg.n_layers * per_layer > len(gguf.tensors):
            raise GGUFError(f"{gguf.path}: block_count {cfg.n_layers} needs more tensors than the file's "
                            f"{len(gguf.tensors)}")
        tensors = self._split_fused(gguf)
        names = list(self.GLOBAL_TENSORS) + [n.format(i) for i in range(cfg.n_layers) for n in self.LAYER_TENSORS]
        names += [f"blk.{i}.{p}.bias" for i in range(cfg.n_layers) for p in self.BIASES if f"blk.{i}.{p}.bias" in tensors]
        for name in dict.fromkeys(names):
            tensor = tensors.get(name)
            if tensor is None:
                if name in self.OPTIONAL:
                    continue
                raise GGUFError(f"{gguf.path}: missing tensor {quoted(name)} required by architecture {cfg.arch}")
            want = expected_shape(name, cfg)
            if want is not None and tensor.shape != want:
                raise GGUFError(f"{gguf.path}: tensor {quoted(name)} has shape {quoted(tensor.shape)}, expected {want} "
                                f"from the metadata")
            reason = backend.decline_reason(tensor)
            if reason:
                raise UnsupportedModelError(f"{name}: {reason}")
            self.weights[name] = backend.upload(tensor)
        self.layers = [self._layer(i) for i in range(cfg.n_layers)]
        self._head_tensor = tensors.get("output.weight" if "output.weight" in self.weights else "token_embd.weight")
        self._head: Any = None     # limit_output's trimmed head
        meta = self.meta
        self.attn_softcap = meta_float(meta, f"{cfg.arch}.attn_logit_softcapping", self.ATTN_SOFTCAP, 0.0, 1e6) \
            if self.ATTN_SOFTCAP else 0.0
        self.final_softcap = meta_float(meta, f"{cfg.arch}.final_logit_softcapping", self.FINAL_SOFTCAP, 0.0, 1e6)
        self._rope_factors = {n: _vector(gguf.tensors[n]) for n in self.ROPE_FACTOR_TENSORS if n in gguf.tensors}
        self._ropes: dict[tuple[int, int], Rope] = {}
        k = lambda name: f"{cfg.arch}.{name}"  # noqa: E731
        self._window = meta_int(meta, k("attention.sliding_window"), self.WINDOW, lo=0, hi=MAX_TOKENS) \
            if self.SWA_PATTERN else 0
        self.is_swa = swa_layers(meta.get(k("attention.sliding_window_pattern"), self.SWA_PATTERN), cfg.n_layers) \
            if self._window > 0 else [False] * cfg.n_layers
        self._base_swa = meta_float(meta, k("rope.freq_base_swa"), self.ROPE_BASE_SWA or cfg.rope_base, 1e-6, 1e30)
        self._choose_step()

    def _choose_step(self) -> None:
        """The one place that decides between the backend's compiled step and forward_ops (at
        load, and again when limit_output changes the head the step holds); `step_path` says
        which runs and why (`localllm info`, and the log at INFO)."""
        step = self.ops.compiled_step(self)
        if isinstance(step, str):
            self.compiled_step: CompiledStep | None = None
            self.step_path = f"op by op: {step}"
        else:
            self.compiled_step, self.step_path = step, f"compiled step ({step.describe()})"
        log.info("%s on %s runs %s", self.cfg.arch, self.ops.name, self.step_path)

    # tanh soft-capping of attention scores / final logits (0: none): the defaults when the file
    # names none (`<arch>.final_logit_softcapping` is read for every architecture,
    # `attn_logit_softcapping` only for one with a default, as llama.cpp's attn_soft_cap)
    ATTN_SOFTCAP = 0.0
    FINAL_SOFTCAP = 0.0
    ROPE_FACTOR_TENSORS: tuple[str, ...] = ("rope_freqs.weight",)
    # sliding-window layers: llama.cpp's set_swa_pattern(n) (layer il slides when il % n < n - 1;
    # 0: no sliding layers), read from attention.sliding_window_pattern (a number or a per-layer
    # array) when the file has a window; WINDOW: the window when the file names none
    SWA_PATTERN = 0
    WINDOW = 0
    ROPE_BASE_SWA = 0.0           # the sliding layers' rope base when the file names none (0: the global one)
    SWA_ROPE_UNSCALED = False     # sliding layers ignore rope scaling (llama.cpp's rope_freq_scale_train_swa = 1)

    def _split_fused(self, gguf: GGUFFile) -> dict[str, Tensor]:
        """The file's tensors, with fused projections (BLOCK.fused_qkv, fused_gate_up) as the
        separate row ranges the block reads."""
        tensors, c = dict(gguf.tensors), self.cfg
        for i in range(c.n_layers):
            b = f"blk.{i}."
            if self.BLOCK.fused_qkv and b + "attn_qkv.weight" in tensors:
                q, kv = c.n_heads * c.head_dim_k, c.n_kv_heads * c.head_dim_k
                parts = {"attn_q": (0, q), "attn_k": (q, q + kv), "attn_v": (q + kv, q + kv + c.n_kv_heads * c.head_dim_v)}
                tensors.update(_row_split(tensors.pop(b + "attn_qkv.weight"), b, parts))
            if self.BLOCK.fused_gate_up and b + "ffn_gate.weight" not in tensors and b + "ffn_up.weight" in tensors:
                f = c.ffn_dim
                tensors.update(_row_split(tensors.pop(b + "ffn_up.weight"), b, {"ffn_gate": (0, f), "ffn_up": (f, 2 * f)}))
        return tensors

    def _layer(self, i: int) -> SimpleNamespace:
        """blk.i.attn_q.weight -> layers[i].attn_q, blk.i.attn_q.bias -> layers[i].attn_q_b."""
        prefix = f"blk.{i}."
        return SimpleNamespace(**{name[len(prefix):].removesuffix(".weight").replace(".bias", "_b"): w
                                  for name, w in self.weights.items() if name.startswith(prefix)})

    def w(self, name: str) -> Any:
        return self.weights.get(name + ".weight")

    def features(self) -> set[str]:
        """What this model's step needs beyond a plain llama block, by name (a fast path that
        lacks one of them declines)."""
        b, L0 = self.BLOCK, self.layers[0] if self.layers else SimpleNamespace()
        flags = {"rope_neox": b.rope_neox, "qk_norm": b.qk_norm, "post_norms": b.post_norms, "geglu": b.gelu,
                 "embed_scale": b.embed_scale, "attn_softcap": bool(self.attn_softcap),
                 "final_softcap": bool(self.final_softcap), "rope_factors": bool(self._rope_factors),
                 "rope_yarn": self.cfg.rope_scaling == "yarn" and self.cfg.rope_freq_scale != 1.0,
                 "rope_mscale": self.cfg.rope_attn_factor != 1.0,
                 "biases": any(hasattr(L0, p + "_b") for p in self.BIASES),
                 "sliding_window": any(self.window(il) for il in range(self.cfg.n_layers))}
        return {name for name, on in flags.items() if on}

    # --- per-layer settings (architectures override) -------------------------------------------
    def window(self, il: int) -> int:
        """Sliding-window size of layer il (0: global attention)."""
        return self._window if self.is_swa[il] else 0

    def attn_scale(self) -> float:
        return 1.0 / math.sqrt(self.cfg.head_dim_k)

    def rope_factor_tensor(self, n_ctx: int) -> np.ndarray | None:
        """Per-pair frequency factors: Llama 3.1's rope_freqs (architectures with long/short
        factors pick by context size)."""
        return self._rope_factors.get("rope_freqs.weight")

    def rope(self, il: int, n_ctx: int) -> Rope:
        """Layer il's rotary settings, as llama.cpp derives them (llama-context.cpp, ggml's rope_yarn)."""
        swa = self.is_swa[il]
        key = (swa, n_ctx)
        r = self._ropes.get(key)
        if r is None:
            c = self.cfg
            base = self._base_swa if swa else c.rope_base
            fs = 1.0 if swa and self.SWA_ROPE_UNSCALED else c.rope_freq_scale
            r = self._ropes[key] = rope_settings(c, base, fs, self.rope_factor_tensor(n_ctx))
        return r

    # --- the forward --------------------------------------------------------------------------
    def forward(self, tokens: np.ndarray, cache: Any, all_logits: bool = False) -> np.ndarray:
        """tokens [T] appended at cache.offset -> logits [T or 1, n_vocab] (numpy float32). cache
        may be a CacheBatch: rows of several sequences, each over its own cache (the server's
        continuous batching)."""
        if self.compiled_step is not None:
            logits = self.compiled_step(tokens, cache, all_logits)
            if logits is not None:     # None: the step does not take this call (e.g. this cache)
                return logits
        return self.forward_ops(tokens, cache, all_logits)

    def forward_ops(self, tokens: np.ndarray, cache: Any, all_logits: bool = False) -> np.ndarray:
        """The forward written op by op (the readable one; compiled steps must equal it)."""
        ops, c = self.ops, self.cfg
        pos = self.positions(cache, len(tokens))                                  # [T]
        x = ops.get_rows(self.w("token_embd"), tokens)                            # [T, dim]
        if self.BLOCK.embed_scale:
            x = ops.scale(x, math.sqrt(c.dim))
        for il, L in enumerate(self.layers):
            x = self.block(x, L, il, pos, cache)
        return self.output(x, cache, all_logits)                                  # [T or 1, vocab]

    # --- what lets one forward serve a single cache or a CacheBatch --------------------------------
    @staticmethod
    def positions(cache: Any, T: int) -> np.ndarray:
        """The position of each of the T rows."""
        return cache.positions() if isinstance(cache, CacheBatch) else cache.offset + np.arange(T)

    def attend(self, q: Any, k: Any, v: Any, cache: Any, layer: int, scale: float, window: int = 0,
               **soft: float) -> Any:
        """ops.attention over the rows' own caches: [T, H*dv]."""
        if not isinstance(cache, CacheBatch):
            return self.ops.attention(q, k, v, cache, layer, cache.offset, scale, window, **soft)
        return np.concatenate([self.ops.attention(q[a:b], k[a:b], v[a:b], c, layer, c.offset, scale, window, **soft)
                               for a, b, c in cache.spans()])

    def output(self, x: Any, cache: Any, all_logits: bool) -> np.ndarray:
        """Final norm and head: logits of the last row (of each CacheBatch segment) or of every
        row; the normalised hidden states instead for a CacheBatch with `hidden` set."""
        ops = self.ops
        if not all_logits:
            x = x[cache.last_rows()] if isinstance(cache, CacheBatch) else x[-1:]
        x = ops.rms_norm(x, self.w("output_norm"), self.cfg.norm_eps)
        if isinstance(cache, CacheBatch) and cache.hidden:
            return ops.to_numpy(x)
        logits = ops.matmul(x, self.output_weight())                              # [rows, vocab]
        if self.final_softcap:
            logits = ops.softcap(logits, self.final_softcap)
        return ops.to_numpy(logits)

    def _proj(self, x: Any, L: SimpleNamespace, name: str) -> Any:
        """x times layer weight `name`, plus its bias where the file has one."""
        y = self.ops.matmul(x, getattr(L, name))
        b = getattr(L, name + "_b", None)
        return y if b is None else self.ops.bias(y, b)

    def block(self, x: Any, L: SimpleNamespace, il: int, pos: np.ndarray, cache: Any) -> Any:
        """One transformer block on x [T, dim], as BLOCK describes it."""
        ops, c, b = self.ops, self.cfg, self.BLOCK
        T = len(pos)
        h = ops.rms_norm(x, L.attn_norm, c.norm_eps)                                   # [T, dim]
        q = self._proj(h, L, "attn_q").reshape(T, c.n_heads, c.head_dim_k)            # [T, H, dk]
        k = self._proj(h, L, "attn_k").reshape(T, c.n_kv_heads, c.head_dim_k)         # [T, KV, dk]
        v = self._proj(h, L, "attn_v").reshape(T, c.n_kv_heads, c.head_dim_v)         # [T, KV, dv]
        if b.qk_norm:
            q, k = ops.rms_norm(q, L.attn_q_norm, c.norm_eps), ops.rms_norm(k, L.attn_k_norm, c.norm_eps)
        r = self.rope(il, cache.n_ctx)
        extra = {} if r.factors is None and r.mscale == 1.0 else {"factors": r.factors, "mscale": r.mscale}
        q = ops.rope(q, pos, c.n_rot, r.base, b.rope_neox, r.freq_scale, **extra)
        k = ops.rope(k, pos, c.n_rot, r.base, b.rope_neox, r.freq_scale, **extra)
        soft = {"softcap": self.attn_softcap} if self.attn_softcap else {}
        o = self.attend(q, k, v, cache, il, self.attn_scale(), self.window(il), **soft)  # [T, H*dv]
        o = self._proj(o, L, "attn_output")                                            # [T, dim]
        if b.post_norms:
            o = ops.rms_norm(o, L.post_attention_norm, c.norm_eps)
        x = ops.add(x, o)
        h = ops.rms_norm(x, L.ffn_norm, c.norm_eps)
        act = ops.geglu if b.gelu else ops.swiglu
        f = ops.matmul(act(ops.matmul(h, L.ffn_gate), ops.matmul(h, L.ffn_up)), L.ffn_down)  # [T, dim]
        if b.post_norms:
            f = ops.rms_norm(f, L.post_ffw_norm, c.norm_eps)
        return ops.add(x, f)

    # --- the output head ----------------------------------------------------------------------
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
        self._choose_step()        # the compiled step holds the head it was built with


LLAMA_TENSORS = ("blk.{}.attn_norm.weight", "blk.{}.attn_q.weight", "blk.{}.attn_k.weight", "blk.{}.attn_v.weight",
                 "blk.{}.attn_output.weight", "blk.{}.ffn_norm.weight", "blk.{}.ffn_gate.weight",
                 "blk.{}.ffn_up.weight", "blk.{}.ffn_down.weight")


def swa_layers(pattern: Any, n_layers: int) -> list[bool]:
    """Which layers slide: a per-layer array as stored, or llama.cpp's set_swa_pattern(n)."""
    if isinstance(pattern, (list, np.ndarray)):
        if len(pattern) != n_layers:
            raise GGUFError(f"sliding_window_pattern has {len(pattern)} entries for {n_layers} layers")
        return [bool(p) for p in pattern]
    n = int(pattern)
    return [n == 0 or il % n < n - 1 for il in range(n_layers)]


def rope_settings(cfg: ModelConfig, base: float, fs: float, factors: np.ndarray | None) -> Rope:
    """llama.cpp's rotary angles for one base: theta_i = pos * freq_scale * base^(-2i/n_rot) /
    factors_i. YaRN (ggml's rope_yarn with ext_factor 1) mixes the interpolated and the
    extrapolated angle per pair by a ramp over the correction dims; the mix is linear in pos, so
    it folds into the per-pair factors, and its magnitude correction 1 + 0.1 ln(1/freq_scale)
    (times rope.scaling.attn_factor) into mscale."""
    half = cfg.n_rot // 2
    if factors is not None and factors.shape != (half,):
        raise GGUFError(f"rope frequency factors have shape {factors.shape}, expected ({half},)")
    mscale = cfg.rope_attn_factor
    if cfg.rope_scaling == "yarn" and fs != 1.0:
        low, high = yarn_corr_dims(cfg.n_rot, cfg.n_ctx_orig, base, cfg.yarn_beta_fast, cfg.yarn_beta_slow)
        ramp = 1.0 - np.clip((np.arange(half, dtype=np.float32) - low) / max(0.001, high - low), 0.0, 1.0)
        mix = (np.float32(fs) * (1 - ramp) + ramp).astype(np.float32)            # angle multiplier per pair
        factors = (np.ones(half, np.float32) if factors is None else factors) / mix
        mscale *= 1.0 + 0.1 * math.log(1.0 / fs)
        fs = 1.0
    return Rope(base, fs, None if factors is None else np.ascontiguousarray(factors, np.float32), float(mscale))


def yarn_corr_dims(n_rot: int, n_ctx_orig: int, base: float, beta_fast: float, beta_slow: float) -> tuple[float, float]:
    """ggml_rope_yarn_corr_dims: the pair indices where YaRN's ramp starts and ends."""
    def dim(n: float) -> float:
        return n_rot * math.log(n_ctx_orig / (n * 2 * math.pi)) / (2 * math.log(base))
    return max(0.0, math.floor(dim(beta_fast))), min(n_rot - 1.0, math.ceil(dim(beta_slow)))


def _row_split(t: Tensor, prefix: str, parts: dict[str, tuple[int, int]]) -> dict[str, Tensor]:
    """Row ranges of a fused [rows, k] tensor as tensors of their own (views of its bytes)."""
    end = max(r1 for _, r1 in parts.values())
    if t.shape[0] != end:
        raise GGUFError(f"{t.name}: {t.shape[0]} rows, expected {end} for the fused projection")
    return {f"{prefix}{name}.weight": Tensor(f"{prefix}{name}.weight", t.type, (r1 - r0,) + tuple(t.shape[1:]),
                                             t.data[r0:r1]) for name, (r0, r1) in parts.items()}


def _vector(t: Tensor) -> np.ndarray:
    return quants.dequantize(t.data, t.type).reshape(-1).astype(np.float32)


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
