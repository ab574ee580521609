"""gemma3: Gemma 3 text models. Differences from llama: embeddings scaled by sqrt(dim), RMSNorm on
each head's Q and K, sandwich norms (pre and post) around attention and FFN, GeGLU, NEOX rope,
and (when the file sets a window) a layer pattern of 5 sliding-window layers (own rope base,
10k, unscaled) per global layer."""
from __future__ import annotations

import math

from .base import LLAMA_TENSORS, Block, Model


class Gemma3(Model):
    ARCH = "gemma3"
    LAYER_TENSORS = LLAMA_TENSORS + ("blk.{}.attn_q_norm.weight", "blk.{}.attn_k_norm.weight",
                                     "blk.{}.post_attention_norm.weight", "blk.{}.post_ffw_norm.weight")
    BLOCK = Block(rope_neox=True, qk_norm=True, post_norms=True, gelu=True, embed_scale=True)
    SWA_PATTERN = 6             # llama.cpp: load_swa_pattern(ml, 6): every 6th layer is global
    ROPE_BASE_SWA = 10000.0     # llama.cpp: rope_freq_base_train_swa's default
    SWA_ROPE_UNSCALED = True

    def attn_scale(self) -> float:
        # 27B (62 layers) scales queries by 1/sqrt(dim/heads); the other sizes by 1/sqrt(head_dim)
        c = self.cfg
        return 1.0 / math.sqrt(c.dim // c.n_heads if c.n_layers == 62 else c.head_dim_k)


ARCHITECTURE = Gemma3
