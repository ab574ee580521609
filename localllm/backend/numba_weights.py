"""The Numba backend's weight handles (what NumbaBackend.upload returns), shared by its op-by-op
path (numba_cpu) and its compiled step (step)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGMLQuantizationType as QT

from ..kernels.quant import R8Weight


@dataclass
class QuantWeight:
    r8: R8Weight
    qtype: QT


@dataclass
class DenseWeight:
    w: np.ndarray      # [ceil(n/8), ceil(k/16)*128] d8 layout of float32, or uint16 float16 bits
    qtype: QT
    rows: int
    cols: int
