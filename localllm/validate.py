"""Arguments and environment checked at the API boundary: a caller (an app, a server passing
user-typed values through) gets a LocalLLMError naming the argument, never a TypeError from deep
inside numpy or a MemoryError after allocating."""
from __future__ import annotations

import math
import operator
import os
from typing import Any

from .errors import LocalLLMError, quoted
from .sampler import SamplingParams

SAMPLING_KEYS = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed")


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (numpy integers too; not bool, float or str) within [minimum, maximum]."""
    if isinstance(value, bool):
        raise LocalLLMError(f"{name} must be an integer, not {quoted(value)}")
    try:
        n = operator.index(value)
    except TypeError:
        raise LocalLLMError(f"{name} must be an integer, not {quoted(value)}") from None
    if minimum is not None and n < minimum:
        raise LocalLLMError(f"{name} must be at least {minimum}, not {quoted(n)}")
    if maximum is not None and n > maximum:
        raise LocalLLMError(f"{name} must be at most {maximum}, not {quoted(n)}")
    return n


def number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite real number (int or float, not bool or str) within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise LocalLLMError(f"{name} must be a number, not {quoted(value)}")
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise LocalLLMError(f"{name} must be a number, not {quoted(value)}") from None
    if not math.isfinite(x):
        raise LocalLLMError(f"{name} must be a finite number, not {x}")
    if minimum is not None and x < minimum or maximum is not None and x > maximum:
        low = "" if minimum is None else f" >= {minimum:g}"
        high = "" if maximum is None else f" <= {maximum:g}"
        raise LocalLLMError(f"{name} must be{low}{' and' if low and high else ''}{high}, not {x:g}")
    return x


def random_seed(value: Any) -> int | None:
    """None or -1 (llama.cpp's LLAMA_DEFAULT_SEED convention): a fresh random seed; else 0..2**64-1."""
    if value is None:
        return None
    n = integer("seed", value, minimum=-1, maximum=2**64 - 1)
    return None if n == -1 else n


# Logits are float32: dividing them by a smaller temperature or penalty (or multiplying by a larger
# penalty) overflows to inf, and the probabilities to NaN.
MIN_DIVISOR, MAX_FACTOR = 1e-30, 1e30


def sampling(temperature: Any = 0.8, top_k: Any = 40, top_p: Any = 0.95, min_p: Any = 0.05,
             repeat_penalty: Any = 1.0, seed: Any = None) -> SamplingParams:
    """SamplingParams from caller values. top_k <= 0 turns top-k off, as in llama.cpp."""
    temp = number("temperature", temperature, minimum=0.0)
    if 0 < temp < MIN_DIVISOR:
        raise LocalLLMError(f"temperature must be 0 (greedy) or at least {MIN_DIVISOR:g}, not {temp:g}")
    return SamplingParams(
        temperature=temp,
        top_k=integer("top_k", top_k),
        top_p=number("top_p", top_p, minimum=0.0, maximum=1.0),
        min_p=number("min_p", min_p, minimum=0.0, maximum=1.0),
        repeat_penalty=number("repeat_penalty", repeat_penalty, minimum=MIN_DIVISOR, maximum=MAX_FACTOR),
        seed=random_seed(seed),
    )


def stops(stop: Any) -> list[str]:
    """None, one string, or a list/tuple of strings."""
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, (list, tuple)) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise LocalLLMError(f"stop must be a string or a list of strings, not {quoted(stop)}")


def token_ids(name: str, ids: Any) -> list[int]:
    """A list of integer token ids (ranges are the model's to check)."""
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise LocalLLMError(f"{name} must be a list of token ids, not {quoted(ids)}")
    return [integer(f"{name} element", t) for t in ids]


def prompt(value: Any) -> str | list[int]:
    if isinstance(value, str):
        return value
    return token_ids("prompt", value)


def messages(value: Any) -> list[dict]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, dict) for m in value):
        raise LocalLLMError(f"messages must be a list of dicts, not {quoted(value)}")
    return list(value)


def env_int(name: str, default: int, minimum: int = 1) -> int:
    """An integer environment variable (e.g. LOCALLLM_KV_BUDGET), or `default` when unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise LocalLLMError(f"${name} must be an integer, not {quoted(text)}") from None
    if value < minimum:
        raise LocalLLMError(f"${name} must be at least {minimum}, not {value}")
    return value


def physical_memory() -> int | None:
    """Bytes of RAM, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def n_ctx_fits(n_ctx: int, bytes_per_token: int) -> None:
    """Refuse a context whose KV cache could never fit in RAM, before anything is allocated."""
    ram = physical_memory()
    need = n_ctx * bytes_per_token
    if ram is not None and need > ram:
        raise LocalLLMError(f"n_ctx={n_ctx:,} needs {need / 2**30:,.1f} GiB of KV cache, more than this machine's "
                            f"{ram / 2**30:.1f} GiB of memory")
