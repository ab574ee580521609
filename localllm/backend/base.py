"""The contract between an architecture's forward and a backend. Arrays are backend-owned
("handles"); the forward only reshapes them and passes them between ops, so a GPU backend can keep
them on device. Every op an architecture may call is listed here, abstract; every optional
capability has its default here too, so callers never probe a backend with getattr."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

import numpy as np

from ..gguf_file import Tensor
from ..kv_cache import SequenceCache


class CompiledStep(Protocol):
    """A backend's compiled form of one model's forward (e.g. kernels/step.py for llama on CPU)."""

    def __call__(self, tokens: np.ndarray, cache: Any, all_logits: bool = False) -> np.ndarray | None:
        """What model.forward returns, or None for a call it does not take (the model then runs
        its forward_ops)."""

    def describe(self) -> str: ...


class Backend(ABC):
    name: str                                # the --backend value that picks it ("cpu", "numpy", "opencl")
    kv_types: tuple[str, ...] = ("f16",)     # KV cache element types its attention reads ("f16", "q8_0", ...)
    draft_shares = False                     # a draft model runs on the target's instance (one device
                                             # context and memory ledger for both)

    # --- weights --------------------------------------------------------------------------------

    @abstractmethod
    def decline_reason(self, tensor: Tensor) -> str | None:
        """None if this backend can hold and multiply `tensor`, else why not, in words."""

    @abstractmethod
    def upload(self, tensor: Tensor) -> Any:
        """The one place a weight's layout may change (dequantize, repack, copy to device)."""

    def runs_as(self, tensor: Tensor) -> str:
        """How `tensor` is held and multiplied, in words (`localllm info --tensors`)."""
        return f"{tensor.type.name}: as stored"

    # --- the KV cache ---------------------------------------------------------------------------

    @abstractmethod
    def new_kv_cache(self, n_layers: int, n_ctx: int, n_kv_heads: int, head_dim_k: int, head_dim_v: int,
                     kv_type: str = "f16") -> SequenceCache: ...

    # --- ops (shapes as the architectures use them) ----------------------------------------------

    @abstractmethod
    def get_rows(self, w: Any, ids: np.ndarray) -> Any: ...                   # [T] -> [T, dim]
    @abstractmethod
    def matmul(self, x: Any, w: Any) -> Any: ...                              # [T, k] x [n, k]^T -> [T, n]
    @abstractmethod
    def add(self, a: Any, b: Any) -> Any: ...
    @abstractmethod
    def scale(self, x: Any, s: float) -> Any: ...
    @abstractmethod
    def rms_norm(self, x: Any, w: Any, eps: float) -> Any: ...                # over the last axis
    @abstractmethod
    def bias(self, x: Any, b: Any) -> Any: ...                                # x [..., n] + b [n]
    @abstractmethod
    def softcap(self, x: Any, cap: float) -> Any: ...                         # cap * tanh(x / cap)
    # theta_i = pos * freq_scale * base^(-2i/n_rot) / factors_i; cos and sin times mscale (backend/rope.py)
    @abstractmethod
    def rope(self, x: Any, pos: np.ndarray, n_rot: int, base: float, neox: bool, freq_scale: float = 1.0,
             factors: np.ndarray | None = None, mscale: float = 1.0) -> Any: ...
    @abstractmethod
    def attention(self, q: Any, k: Any, v: Any, cache: SequenceCache, layer: int, pos0: int,
                  scale: float, window: int = 0, softcap: float = 0.0) -> Any: ...  # [T,H,dk],[T,KV,dk],[T,KV,dv] -> [T, H*dv]
    @abstractmethod
    def swiglu(self, gate: Any, up: Any) -> Any: ...
    @abstractmethod
    def geglu(self, gate: Any, up: Any) -> Any: ...
    @abstractmethod
    def to_numpy(self, x: Any) -> np.ndarray: ...

    def from_numpy(self, a: np.ndarray) -> Any:
        """A float32 host array as this backend's handle (a device copy where arrays live on one)."""
        return np.ascontiguousarray(a, dtype=np.float32)

    # --- optional capabilities, with their defaults ----------------------------------------------

    def compiled_step(self, model: Any) -> CompiledStep | str:
        """The model's forward as one compiled step, or why there is none (it then runs op by op)."""
        return f"the {self.name} backend has no compiled step"

    def copy_bandwidth(self) -> float | None:
        """Bytes/s of the backend's own memory (a GPU's), measured; None where weights live in host
        DRAM (`localllm bench` then probes DRAM)."""
        return None
