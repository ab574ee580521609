"""Architectures, found by the GGUF's `general.architecture` name: one small file each."""
from __future__ import annotations

from .base import Model, ModelConfig
from .gemma3 import Gemma3
from .llama import Llama
from ..errors import UnsupportedModelError

ARCHITECTURES: dict[str, type[Model]] = {"llama": Llama, "gemma3": Gemma3}


def model_class(arch: str) -> type[Model]:
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        raise UnsupportedModelError(
            f"unknown architecture {arch!r} (supported: {', '.join(sorted(ARCHITECTURES))})") from None


__all__ = ["ARCHITECTURES", "Model", "ModelConfig", "model_class"]
