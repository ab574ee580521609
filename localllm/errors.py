"""The one exception type users catch: every failure the library foresees is a LocalLLMError
whose message is a single line fit to print as-is."""


class LocalLLMError(Exception):
    """A clear, one-line error about the model file, the request or the environment."""


class GGUFError(LocalLLMError):
    """The file is not a readable GGUF (wrong magic, truncated, inconsistent)."""


class UnsupportedModelError(LocalLLMError):
    """The GGUF is valid but uses an architecture or tensor type this runtime does not run."""


class ContextOverflowError(LocalLLMError):
    """A prompt (plus the tokens asked for) does not fit in the context window."""
