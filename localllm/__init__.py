"""localllm: run GGUF language models locally, on CPUs (Numba) and GPUs (OpenCL).

    import localllm
    llm = localllm.load("smollm2-135m")
    for piece in llm.generate("The capital of France is", max_tokens=8, temperature=0):
        print(piece, end="")
"""
import logging

from .api import LLM, load
from .errors import ContextOverflowError, GGUFError, LocalLLMError, UnsupportedModelError

logging.getLogger(__name__).addHandler(logging.NullHandler())


def render_chat_template(template: str, messages: list, add_generation_prompt: bool = True, **variables) -> str:
    """Render a (untrusted) Jinja chat template in a sandbox; see localllm.chat_template."""
    from .chat_template import render_chat_template as render
    return render(template, messages, add_generation_prompt, **variables)


def serve(llm: LLM, **kwargs):
    """Serve llm over HTTP (OpenAI and ollama APIs) from a background thread; returns a handle
    with `.url` and `.stop()`. Needs the `server` extra; see localllm.server.serve."""
    from .server import serve as start
    return start(llm, **kwargs)


__all__ = ["LLM", "load", "serve", "render_chat_template", "LocalLLMError", "GGUFError", "UnsupportedModelError",
           "ContextOverflowError"]
__version__ = "0.1.0"
