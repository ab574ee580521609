"""phi3: Phi-3 / Phi-3.5 / Phi-4-mini. A llama block with NEOX rope, Q/K/V fused in attn_qkv and
gate/up fused in ffn_up (split at load), partial rotary dims (rope.dimension_count), and LongRoPE:
per-pair factors rope_factors_short/long (long when the context exceeds
rope.scaling.original_context_length) with rope.scaling.attn_factor on the rotated dims.
A sliding window in the metadata is ignored, as llama.cpp does ("Phi SWA is currently disabled")."""
from __future__ import annotations

import numpy as np

from .base import LLAMA_TENSORS, Block, Model


class Phi3(Model):
    ARCH = "phi3"
    LAYER_TENSORS = LLAMA_TENSORS
    BLOCK = Block(rope_neox=True, fused_qkv=True, fused_gate_up=True)
    ROPE_FACTOR_TENSORS = ("rope_factors_long.weight", "rope_factors_short.weight")

    def rope_factor_tensor(self, n_ctx: int) -> np.ndarray | None:
        # llama.cpp's get_rope_factors: long factors once the context exceeds the original one
        name = "long" if n_ctx > self.cfg.n_ctx_orig else "short"
        return self._rope_factors.get(f"rope_factors_{name}.weight")


ARCHITECTURE = Phi3
