"""gemma3: Gemma 3 text models. Differences from llama: embeddings scaled by sqrt(dim), RMSNorm on
each head's Q and K, sandwich norms (pre and post) around attention and FFN, GeGLU, NEOX rope,
and a layer pattern of 5 sliding-window layers (own rope base, 10k) per global layer."""
from __future__ import annotations

import math

import numpy as np

from .base import MAX_COUNT, MAX_TOKENS, Model, ModelConfig, meta_float, meta_int, read_config

ARCH = "gemma3"
SWA_PATTERN = 6           # llama.cpp: set_swa_pattern(6): every 6th layer is global
ROPE_BASE_SWA = 10000.0   # llama.cpp: rope_freq_base_train_swa for gemma3


class Gemma3(Model):
    GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")
    LAYER_TENSORS = ("blk.{}.attn_norm.weight", "blk.{}.attn_q.weight", "blk.{}.attn_k.weight",
                     "blk.{}.attn_v.weight", "blk.{}.attn_q_norm.weight", "blk.{}.attn_k_norm.weight",
                     "blk.{}.attn_output.weight", "blk.{}.post_attention_norm.weight",
                     "blk.{}.ffn_norm.weight", "blk.{}.ffn_gate.weight", "blk.{}.ffn_up.weight",
                     "blk.{}.ffn_down.weight", "blk.{}.post_ffw_norm.weight")
    OPTIONAL = frozenset({"output.weight"})

    @classmethod
    def config(cls, meta) -> ModelConfig:
        return read_config(meta, ARCH)

    def __init__(self, gguf, cfg, backend) -> None:
        super().__init__(gguf, cfg, backend)
        meta = gguf.metadata
        self.window = meta_int(meta, f"{ARCH}.attention.sliding_window", 0, lo=0, hi=MAX_TOKENS)
        self.rope_base_swa = meta_float(meta, f"{ARCH}.rope.freq_base_swa", ROPE_BASE_SWA, 1e-6, 1e30)
        pattern = meta_int(meta, f"{ARCH}.attention.sliding_window_pattern", SWA_PATTERN, lo=0, hi=MAX_COUNT)
        self.is_swa = [pattern == 0 or il % pattern < pattern - 1 for il in range(cfg.n_layers)]
        # 27B scales queries by 1/sqrt(dim/heads); the other sizes by 1/sqrt(head_dim)
        self.q_scale = 1.0 / math.sqrt(cfg.head_dim_k)

    def forward(self, tokens: np.ndarray, cache, all_logits: bool = False) -> np.ndarray:
        ops, c = self.ops, self.cfg
        T, pos0 = len(tokens), cache.offset
        pos = pos0 + np.arange(T)                                                  # [T]
        x = ops.scale(ops.get_rows(self.w("token_embd"), tokens), math.sqrt(c.dim))  # [T, dim]
        for il, L in enumerate(self.layers):
            swa = self.is_swa[il]
            base, freq_scale = (self.rope_base_swa, 1.0) if swa else (c.rope_base, c.rope_freq_scale)
            h = ops.rms_norm(x, L.attn_norm, c.norm_eps)                            # [T, dim]
            q = ops.matmul(h, L.attn_q).reshape(T, c.n_heads, c.head_dim_k)         # [T, H, dk]
            k = ops.matmul(h, L.attn_k).reshape(T, c.n_kv_heads, c.head_dim_k)      # [T, KV, dk]
            v = ops.matmul(h, L.attn_v).reshape(T, c.n_kv_heads, c.head_dim_v)      # [T, KV, dv]
            q = ops.rope(ops.rms_norm(q, L.attn_q_norm, c.norm_eps), pos, c.n_rot, base, True, freq_scale)
            k = ops.rope(ops.rms_norm(k, L.attn_k_norm, c.norm_eps), pos, c.n_rot, base, True, freq_scale)
            q = ops.scale(q, self.q_scale)
            o = ops.attention(q, k, v, cache, il, pos0, 1.0, self.window if swa else 0)  # [T, H*dv]
            o = ops.rms_norm(ops.matmul(o, L.attn_output), L.post_attention_norm, c.norm_eps)
            x = ops.add(x, o)                                                        # [T, dim]
            h = ops.rms_norm(x, L.ffn_norm, c.norm_eps)
            f = ops.geglu(ops.matmul(h, L.ffn_gate), ops.matmul(h, L.ffn_up))       # [T, ffn]
            x = ops.add(x, ops.rms_norm(ops.matmul(f, L.ffn_down), L.post_ffw_norm, c.norm_eps))
        if not all_logits:
            x = x[-1:]
        x = ops.rms_norm(x, self.w("output_norm"), c.norm_eps)
        return ops.to_numpy(ops.matmul(x, self.output_weight()))                                      # [T or 1, vocab]


ARCHITECTURE = Gemma3
