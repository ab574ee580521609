"""qwen3: Qwen3 dense models. A llama block with RMSNorm on each head of Q and K (before rope),
no biases, NEOX rope; head_dim may differ from dim / heads (attention.key_length)."""
from __future__ import annotations

from .base import LLAMA_TENSORS, Block, Model


class Qwen3(Model):
    ARCH = "qwen3"
    LAYER_TENSORS = LLAMA_TENSORS + ("blk.{}.attn_q_norm.weight", "blk.{}.attn_k_norm.weight")
    BLOCK = Block(rope_neox=True, qk_norm=True)


ARCHITECTURE = Qwen3
