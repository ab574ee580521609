"""gemma2: Gemma 2. Like gemma3 without the Q/K norms: embeddings scaled by sqrt(dim), sandwich
norms, GeGLU, NEOX rope, every other layer sliding-window (window 4096 by default, same rope
base), tanh soft-capping of the attention scores (50) and of the final logits (30), and the
output always tied to the embeddings (llama.cpp ignores an output.weight)."""
from __future__ import annotations

import math

from .base import LLAMA_TENSORS, Block, Model


class Gemma2(Model):
    ARCH = "gemma2"
    GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight")
    LAYER_TENSORS = LLAMA_TENSORS + ("blk.{}.post_attention_norm.weight", "blk.{}.post_ffw_norm.weight")
    BLOCK = Block(rope_neox=True, post_norms=True, gelu=True, embed_scale=True)
    ATTN_SOFTCAP, FINAL_SOFTCAP = 50.0, 30.0     # llama-hparams.h defaults
    SWA_PATTERN, WINDOW = 2, 4096                # llama.cpp: load_swa_pattern(ml, 2), n_swa = 4096

    def attn_scale(self) -> float:
        # 27B (46 layers) scales queries by 1/sqrt(dim/heads); the other sizes by 1/sqrt(head_dim)
        c = self.cfg
        return 1.0 / math.sqrt(c.dim // c.n_heads if c.n_layers == 46 else c.head_dim_k)


ARCHITECTURE = Gemma2
