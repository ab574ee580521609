"""Rotary embedding angles, defined once: every backend takes its frequencies and angles from
here, so their rotations agree bit for bit (the compiled step, the OpenCL kernels and the numpy
reference all read these float32 values)."""
from __future__ import annotations

import numpy as np


def inv_frequencies(n_rot: int, base: float, factors: np.ndarray | None = None) -> np.ndarray:
    """base^(-2i/n_rot) for i < n_rot/2, in float32 as ggml computes theta_scale powers, divided
    by per-pair frequency factors where the model has them (Llama 3.1 rope_freqs, LongRoPE)."""
    inv = np.float32(base) ** (-np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot))   # [n_rot/2]
    return inv if factors is None else (inv / factors).astype(np.float32)


def cos_sin(pos: np.ndarray, n_rot: int, base: float, freq_scale: float, factors: np.ndarray | None = None,
            mscale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [len(pos), n_rot/2] of theta = pos * freq_scale * inv_frequencies, float32,
    times mscale (YaRN's attention factor)."""
    theta = (pos.astype(np.float32)[:, None] * np.float32(freq_scale)) * inv_frequencies(n_rot, base, factors)[None, :]
    cos, sin = np.cos(theta), np.sin(theta)
    if mscale != 1.0:
        cos, sin = cos * np.float32(mscale), sin * np.float32(mscale)
    return cos, sin
