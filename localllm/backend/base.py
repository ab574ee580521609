"""The interface an architecture's forward talks to. Arrays are backend-owned ("handles"); the
forward only reshapes them and passes them between ops, so a GPU backend can keep them on device."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..gguf_file import Tensor


class CompiledStep(Protocol):
    """A backend's compiled form of one model's forward (e.g. kernels/step.py for llama on CPU)."""

    def __call__(self, tokens: np.ndarray, cache: Any, all_logits: bool = False) -> np.ndarray | None:
        """What model.forward returns, or None for a call it does not take (the model then runs
        its forward_ops)."""

    def describe(self) -> str: ...


class Backend(Protocol):
    name: str

    def compiled_step(self, model: Any) -> CompiledStep | str:
        """The model's forward as one compiled step, or why there is none (it then runs op by op)."""

    def decline_reason(self, tensor: Tensor) -> str | None:
        """None if this backend can hold and multiply `tensor`, else why not, in words."""

    def upload(self, tensor: Tensor) -> Any:
        """The one place a weight's layout may change (dequantize, repack, copy to device)."""

    kv_types: tuple[str, ...]   # KV cache element types this backend's attention reads ("f16", "q8_0", ...)

    def new_kv_cache(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim_k: int, head_dim_v: int,
                     kv_type: str = "f16") -> Any: ...

    def get_rows(self, w: Any, ids: np.ndarray) -> Any: ...                   # [T] -> [T, dim]
    def matmul(self, x: Any, w: Any) -> Any: ...                              # [T, k] x [n, k]^T -> [T, n]
    def add(self, a: Any, b: Any) -> Any: ...
    def scale(self, x: Any, s: float) -> Any: ...
    def rms_norm(self, x: Any, w: Any, eps: float) -> Any: ...                # over the last axis
    def rope(self, x: Any, pos: np.ndarray, n_rot: int, base: float, neox: bool, freq_scale: float = 1.0) -> Any: ...
    def attention(self, q: Any, k: Any, v: Any, cache: Any, layer: int, pos0: int,
                  scale: float, window: int = 0) -> Any: ...                  # [T,H,dk],[T,KV,dk],[T,KV,dv] -> [T, H*dv]
    def swiglu(self, gate: Any, up: Any) -> Any: ...
    def geglu(self, gate: Any, up: Any) -> Any: ...
    def to_numpy(self, x: Any) -> np.ndarray: ...
