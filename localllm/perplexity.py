"""Perplexity the way `llama-perplexity -f FILE -c N` measures it (tools/perplexity/perplexity.cpp).

The whole text is tokenized once (BOS added as the model's metadata says, special-token text kept
literal), cut into len // N chunks of N tokens (the tail is dropped), and each chunk is evaluated
from an empty context with its first token replaced by BOS when the model adds BOS. Only the second
half is scored, so every scored token has at least N/2 tokens of context: positions N/2 .. N-2 each
predict the next token. The ± figure is llama.cpp's: the standard error of the mean NLL, times PPL.
"""
from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from .errors import LocalLLMError


class PerplexityError(LocalLLMError):
    """The text is too short for the context size, or the context size is unusable."""


def _chunk_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64 as llama.cpp sums its exponentials in double."""
    x = logits.astype(np.float64)
    mx = x.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(x - mx).sum(axis=1)) + mx[:, 0]
    return log_z - x[np.arange(len(targets)), targets]


def perplexity(llm, text: str, n_ctx: int = 128, progress: bool = True) -> dict[str, Any]:
    """PPL of `llm` (a loaded `LLM`) over `text` with llama-perplexity's chunking (see module doc).

    Returns ppl, ppl_stderr, n_chunks, n_tokens_scored and nll_mean (nats per token)."""
    from tqdm import tqdm

    tok = llm.tokenizer
    if n_ctx < 4 or n_ctx > llm.n_ctx:
        raise PerplexityError(f"context size {n_ctx} must be between 4 and the model's context ({llm.n_ctx})")
    if tok.add_eos:
        raise PerplexityError("the model appends EOS to every text: llama-perplexity refuses such models too")
    tokens = llm.tokenize(text, add_bos=True, special=False)
    if len(tokens) < 2 * n_ctx:
        raise PerplexityError(f"the text is {len(tokens)} tokens; perplexity with a context of {n_ctx} "
                              f"needs at least {2 * n_ctx}")
    n_chunks, first = len(tokens) // n_ctx, n_ctx // 2
    nll_sum = nll2_sum = 0.0
    count = 0
    with tqdm(total=n_chunks, unit="chunk", file=sys.stderr, disable=not progress, desc="perplexity") as bar:
        for i in range(n_chunks):
            chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
            if tok.add_bos:
                chunk[0] = tok.bos_id
            logits = llm.logits(chunk)
            nll = _chunk_nll(logits[first:n_ctx - 1], np.asarray(chunk[first + 1:], dtype=np.int64))
            nll_sum += float(nll.sum())
            nll2_sum += float((nll * nll).sum())
            count += len(nll)
            bar.set_postfix(ppl=f"{math.exp(nll_sum / count):.4f}")
            bar.update()
    return _summary(nll_sum, nll2_sum, count, n_chunks)


def _summary(nll_sum: float, nll2_sum: float, count: int, n_chunks: int) -> dict[str, Any]:
    mean = nll_sum / count
    ppl = math.exp(mean)
    var = nll2_sum / count - mean * mean
    stderr = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else float("nan")
    return {"ppl": ppl, "ppl_stderr": stderr, "n_chunks": n_chunks, "n_tokens_scored": count, "nll_mean": mean}
