"""llama: Llama 1/2/3.x, TinyLlama, Mistral, SmolLM2 shapes. Pre-norm blocks, GQA, rotary
embeddings in NORM mode (GGUF's converter permutes Q/K for it), SwiGLU, optional untied output,
optional Q/K/V/O biases, Llama 3.1+ frequency factors (rope_freqs.weight) and linear/YaRN scaling."""
from __future__ import annotations

from .base import LLAMA_TENSORS, Model


class Llama(Model):
    ARCH = "llama"
    LAYER_TENSORS = LLAMA_TENSORS


ARCHITECTURE = Llama
