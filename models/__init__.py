"""Architectures, one file each, found by the GGUF's `general.architecture` name: `llama` is
`models/llama.py`, `gemma3` is `models/gemma3.py` (as mlx-lm's `models/<type>.py`). Each file
names its class in `ARCHITECTURE`; `base.py` holds what they share."""
from __future__ import annotations

import importlib
import pkgutil
import re

from .base import Model, ModelConfig
from ..errors import UnsupportedModelError

_NOT_ARCHITECTURES = frozenset({"base"})


def supported() -> list[str]:
    """The architecture names this package has a file for, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_ARCHITECTURES)


def model_class(arch: str) -> type[Model]:
    """The class for a GGUF `general.architecture` value, or UnsupportedModelError naming it."""
    if not isinstance(arch, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", arch) or arch not in supported():
        shown = arch if isinstance(arch, str) and len(arch) <= 64 else f"{str(arch)[:64]}..."
        raise UnsupportedModelError(f"unknown architecture {shown!r} (supported: {', '.join(supported())})")
    return importlib.import_module(f"{__name__}.{arch}").ARCHITECTURE


__all__ = ["Model", "ModelConfig", "model_class", "supported"]
