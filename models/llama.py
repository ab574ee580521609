"""llama: Llama 1/2/3, TinyLlama, Mistral, SmolLM2 shapes. Pre-norm blocks, GQA, rotary
embeddings in NORM mode (GGUF's converter permutes Q/K for it), SwiGLU, optional untied output."""
from __future__ import annotations

import math

import numpy as np

from .base import Model, read_config

ARCH = "llama"


class Llama(Model):
    GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")
    LAYER_TENSORS = ("blk.{}.attn_norm.weight", "blk.{}.attn_q.weight", "blk.{}.attn_k.weight",
                     "blk.{}.attn_v.weight", "blk.{}.attn_output.weight", "blk.{}.ffn_norm.weight",
                     "blk.{}.ffn_gate.weight", "blk.{}.ffn_up.weight", "blk.{}.ffn_down.weight")
    OPTIONAL = frozenset({"output.weight"})  # absent = tied to token_embd
    rope_neox = False

    @classmethod
    def config(cls, meta):
        return read_config(meta, ARCH)

    def forward(self, tokens: np.ndarray, cache, all_logits: bool = False) -> np.ndarray:
        fast = getattr(self.ops, "fused_forward", None)   # a backend's compiled form of this function
        if fast is not None:
            out = fast(self, tokens, cache, all_logits)
            if out is not None:
                return out
        ops, c = self.ops, self.cfg
        T = len(tokens)
        pos = self.positions(cache, T)                                         # [T]
        x = ops.get_rows(self.w("token_embd"), tokens)                         # [T, dim]
        for il, L in enumerate(self.layers):
            h = ops.rms_norm(x, L.attn_norm, c.norm_eps)                        # [T, dim]
            q = ops.matmul(h, L.attn_q).reshape(T, c.n_heads, c.head_dim_k)     # [T, H, dk]
            k = ops.matmul(h, L.attn_k).reshape(T, c.n_kv_heads, c.head_dim_k)  # [T, KV, dk]
            v = ops.matmul(h, L.attn_v).reshape(T, c.n_kv_heads, c.head_dim_v)  # [T, KV, dv]
            q = ops.rope(q, pos, c.n_rot, c.rope_base, self.rope_neox, c.rope_freq_scale)
            k = ops.rope(k, pos, c.n_rot, c.rope_base, self.rope_neox, c.rope_freq_scale)
            o = self.attend(q, k, v, cache, il, 1.0 / math.sqrt(c.head_dim_k))          # [T, H*dv]
            x = ops.add(x, ops.matmul(o, L.attn_output))                        # [T, dim]
            h = ops.rms_norm(x, L.ffn_norm, c.norm_eps)
            f = ops.swiglu(ops.matmul(h, L.ffn_gate), ops.matmul(h, L.ffn_up))  # [T, ffn]
            x = ops.add(x, ops.matmul(f, L.ffn_down))                           # [T, dim]
        return self.output(x, cache, all_logits)                                # [T or 1, vocab]


ARCHITECTURE = Llama
