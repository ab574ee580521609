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
from ..gguf_file import GGUFFile, Tensor
from ..kv_cache import CacheBatch


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


def _int(meta: dict[str, Any], key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if value is None:
        raise GGUFError(f"missing metadata key {key}")
    if isinstance(value, np.ndarray):  # per-layer arrays: only uniform ones are supported here
        if value.size == 0 or np.any(value != value.flat[0]):
            raise UnsupportedModelError(f"per-layer values for {key} are not supported")
        value = value.flat[0]
    return int(value)


def read_config(meta: dict[str, Any], arch: str, eps_key: str = "attention.layer_norm_rms_epsilon") -> ModelConfig:
    """Common `<arch>.*` keys with llama.cpp's defaults (llama-model.cpp, load_hparams)."""
    k = lambda name: f"{arch}.{name}"  # noqa: E731
    dim = _int(meta, k("embedding_length"))
    n_heads = _int(meta, k("attention.head_count"))
    if n_heads <= 0 or dim <= 0:
        raise GGUFError(f"invalid shape in metadata: embedding_length={dim}, head_count={n_heads}")
    head_k = _int(meta, k("attention.key_length"), dim // n_heads)
    tokens = meta.get("tokenizer.ggml.tokens")
    scaling = meta.get(k("rope.scaling.type"), "none")
    factor = float(meta.get(k("rope.scaling.factor"), 0.0) or 0.0)
    freq_scale = 1.0 / factor if scaling == "linear" and factor > 0 else 1.0
    if scaling not in ("none", "linear"):
        raise UnsupportedModelError(f"rope scaling type {scaling!r} is not supported yet")
    return ModelConfig(
        arch=arch,
        n_vocab=_int(meta, k("vocab_size"), len(tokens) if tokens is not None else None),
        n_ctx_train=_int(meta, k("context_length"), 2048),
        dim=dim,
        n_layers=_int(meta, k("block_count")),
        n_heads=n_heads,
        n_kv_heads=_int(meta, k("attention.head_count_kv"), n_heads),
        head_dim_k=head_k,
        head_dim_v=_int(meta, k("attention.value_length"), dim // n_heads),
        ffn_dim=_int(meta, k("feed_forward_length")),
        n_rot=_int(meta, k("rope.dimension_count"), head_k),
        rope_base=float(meta.get(k("rope.freq_base"), 10000.0)),
        rope_freq_scale=freq_scale,
        norm_eps=float(meta.get(k(eps_key), 1e-5)),
    )


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
        names = list(self.GLOBAL_TENSORS) + [n.format(i) for i in range(cfg.n_layers) for n in self.LAYER_TENSORS]
        for name in names:
            tensor = gguf.tensors.get(name)
            if tensor is None:
                if name in self.OPTIONAL:
                    continue
                raise GGUFError(f"{gguf.path}: missing tensor {name!r} required by architecture {cfg.arch}")
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
        """tokens [T] appended at cache.offset -> logits [T or 1, n_vocab] (numpy float32). cache
        may be a CacheBatch: rows of several sequences, each over its own cache."""
        raise NotImplementedError

    # --- what forwards share, so that one forward serves a single cache or a CacheBatch ----------
    @staticmethod
    def positions(cache: Any, T: int) -> np.ndarray:
        """The position of each of the T rows."""
        return cache.positions() if isinstance(cache, CacheBatch) else cache.offset + np.arange(T)

    def attend(self, q: Any, k: Any, v: Any, cache: Any, layer: int, scale: float, window: int = 0) -> Any:
        """ops.attention over the rows' own caches: [T, H*dv]."""
        if not isinstance(cache, CacheBatch):
            return self.ops.attention(q, k, v, cache, layer, cache.offset, scale, window)
        return np.concatenate([self.ops.attention(q[a:b], k[a:b], v[a:b], c, layer, c.offset, scale, window)
                               for a, b, c in cache.spans()])

    def output(self, x: Any, cache: Any, all_logits: bool) -> np.ndarray:
        """Final norm and head: logits of the last row (of each CacheBatch segment) or of every row;
        the normalised hidden states instead for a CacheBatch with hidden set."""
        if not all_logits:
            x = x[cache.last_rows()] if isinstance(cache, CacheBatch) else x[-1:]
        x = self.ops.rms_norm(x, self.w("output_norm"), self.cfg.norm_eps)
        if getattr(cache, "hidden", False):
            return self.ops.to_numpy(x)
        return self.ops.to_numpy(self.ops.matmul(x, self.output_weight()))             # [rows, vocab]


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
