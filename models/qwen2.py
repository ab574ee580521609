"""qwen2: Qwen2, Qwen2.5, DeepSeek-R1-Distill-Qwen. A llama block with Q/K/V biases and NEOX rope
(large bases such as 1e6), tied or untied output."""
from __future__ import annotations

from .base import LLAMA_TENSORS, Block, Model


class Qwen2(Model):
    ARCH = "qwen2"
    LAYER_TENSORS = LLAMA_TENSORS + ("blk.{}.attn_q.bias", "blk.{}.attn_k.bias", "blk.{}.attn_v.bias")
    BLOCK = Block(rope_neox=True)


ARCHITECTURE = Qwen2
