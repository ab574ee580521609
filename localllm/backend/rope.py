"""Rotary embedding angles, defined once: every backend takes its frequencies and angles from
here, so their rotations agree bit for bit (the compiled step, the OpenCL kernels and the numpy
reference all read these float32 values)."""
from __future__ import annotations

import numpy as np


def inv_frequencies(n_rot: int, base: float) -> np.ndarray:
    """base^(-2i/n_rot) for i < n_rot/2, in float32 as ggml computes theta_scale powers."""
    return np.float32(base) ** (-np.arange(0, n_rot, 2, dtype=np.float32) / np.float32(n_rot))   # [n_rot/2]


def angles(pos: np.ndarray, n_rot: int, base: float, freq_scale: float) -> np.ndarray:
    """theta[p, i] = pos[p] * freq_scale * base^(-2i/n_rot), float32 [len(pos), n_rot/2]."""
    return (pos.astype(np.float32)[:, None] * np.float32(freq_scale)) * inv_frequencies(n_rot, base)[None, :]
