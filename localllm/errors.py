"""The one exception type users catch: every failure the library foresees is a LocalLLMError
whose message is a single line fit to print as-is."""
from __future__ import annotations

from typing import Any

MAX_MESSAGE = 1000  # characters: a message quoting a runaway value must still fit a terminal line or two
QUOTE_LIMIT = 80    # characters of a quoted name or value


def quoted(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """repr(value) cut to about `limit` characters, saying how long it was: for names and values
    taken from files or callers, which can be megabytes long."""
    text = repr(value) if not isinstance(value, (str, bytes)) or len(value) <= 4 * limit else repr(value[:4 * limit])
    if len(text) <= limit:
        return text
    size = f"{len(value):,} chars" if isinstance(value, (str, bytes)) else type(value).__name__
    return f"{text[:limit]}... ({size})"


def _capped(message: str) -> str:
    message = " ".join(message.split()) if "\n" in message or "\r" in message else message
    return message if len(message) <= MAX_MESSAGE else f"{message[:MAX_MESSAGE]}... ({len(message):,} chars)"


class LocalLLMError(Exception):
    """A clear, one-line error about the model file, the request or the environment. The message
    is kept to one line of at most MAX_MESSAGE characters, whatever it quotes."""

    def __init__(self, *args: Any) -> None:
        if args and isinstance(args[0], str):
            args = (_capped(args[0]), *args[1:])
        super().__init__(*args)


class GGUFError(LocalLLMError):
    """The file is not a readable GGUF (wrong magic, truncated, inconsistent)."""


class UnsupportedModelError(LocalLLMError):
    """The GGUF is valid but uses an architecture or tensor type this runtime does not run."""


class ContextOverflowError(LocalLLMError):
    """A prompt (plus the tokens asked for) does not fit in the context window."""
