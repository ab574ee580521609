"""The generation loop: evaluate a prompt through a sequence's KV cache (reusing the prefix it
already holds), then sample token by token until an end-of-generation token, a stop string,
max_tokens or the end of the context."""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import ContextOverflowError, LocalLLMError
from .sampler import Sampler

PREFILL_CHUNK = 512  # tokens per forward during prefill: bounds the attention scratch memory


@dataclass
class Stats:
    prompt_tokens: int = 0
    cached_tokens: int = 0      # prompt tokens whose K/V were reused from the cache
    evaluated_tokens: int = 0   # prompt tokens actually run through the model
    generated_tokens: int = 0
    prompt_ms: float = 0.0
    gen_ms: float = 0.0
    stop_reason: str = ""       # "eog", "stop", "length", "context", "cancelled"
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d["prompt_tps"] = self.evaluated_tokens / (self.prompt_ms / 1e3) if self.prompt_ms > 0 else 0.0
        # the first generated token comes from the prompt's logits, so decode speed counts the rest
        steps = max(self.generated_tokens - 1, 0)
        d["gen_tps"] = steps / (self.gen_ms / 1e3) if self.gen_ms > 0 and steps else 0.0
        d.update(self.extra)
        return d


class Sequence:
    """One conversation's state: the model plus its KV cache (which owns the token history)."""

    def __init__(self, model, cache, prefix_cache=None) -> None:
        self.model, self.cache, self.prefix_cache = model, cache, prefix_cache

    @property
    def n_ctx(self) -> int:
        return self.cache.n_ctx

    def eval_prompt(self, ids: list[int], stats: Stats, all_logits: bool = False) -> np.ndarray:
        """Make the cache hold exactly `ids`; return the logits of the last token ([n_vocab]) or of
        every evaluated token. At least the last token is always re-evaluated to get its logits."""
        if len(ids) == 0:
            raise ContextOverflowError("empty prompt: nothing to evaluate")
        if len(ids) > self.n_ctx:
            raise ContextOverflowError(f"prompt is {len(ids)} tokens but the context holds {self.n_ctx}")
        n_vocab = self.model.cfg.n_vocab
        if min(ids) < 0 or max(ids) >= n_vocab:  # the kernels index the embedding table with them
            bad = next(i for i in ids if not 0 <= i < n_vocab)
            raise LocalLLMError(f"token id {bad} is outside the vocabulary (0..{n_vocab - 1})")
        keep = 0 if all_logits else min(self._reuse(ids), len(ids) - 1)
        self.cache.trim(keep)
        stats.prompt_tokens, stats.cached_tokens, stats.evaluated_tokens = len(ids), keep, len(ids) - keep
        t0 = time.perf_counter()
        outs = []
        for start in range(keep, len(ids), PREFILL_CHUNK):
            chunk = ids[start:start + PREFILL_CHUNK]
            last = start + len(chunk) == len(ids)
            logits = self.forward(chunk, all_logits)
            self.cache.tokens.extend(chunk)
            if all_logits or last:
                outs.append(logits)
        stats.prompt_ms = (time.perf_counter() - t0) * 1e3
        return np.concatenate(outs) if all_logits else outs[-1][-1]

    def _reuse(self, ids: list[int]) -> int:
        """How many leading tokens of ids the cache can keep, after restoring the best saved
        prefix if that beats what the cache holds (what it held is saved first)."""
        keep = self.cache.common_prefix(ids)
        if self.prefix_cache is None:
            return keep
        state, n = self.prefix_cache.best(ids)
        if keep < self.cache.offset or n > keep:
            self.prefix_cache.save(self.cache)
        if n > keep:
            self.cache.restore(state)
            keep = n
        return keep

    def step(self, token: int) -> np.ndarray:
        """Append one token; return the next-token logits [n_vocab]."""
        logits = self.forward([token])
        self.cache.tokens.append(token)
        return logits[-1]

    def forward(self, tokens: list[int], all_logits: bool = False) -> np.ndarray:
        """The model over `tokens` at the cache's end. The compiled kernels check divisions the way
        Python does, so a file whose weights hold NaN or inf ends here, in a clear error."""
        try:
            return self.model.forward(np.asarray(tokens, dtype=np.int64), self.cache, all_logits=all_logits)
        except ZeroDivisionError:
            raise LocalLLMError("the model computed a division by zero: its weights hold NaN or inf "
                                "(a corrupt file?)") from None


def generate_ids(seq: Sequence, prompt: list[int], sampler: Sampler, max_tokens: int,
                 eog_ids: frozenset[int], stats: Stats) -> Iterator[int]:
    """Yield sampled token ids. End-of-generation tokens stop the loop and are not yielded;
    their K/V is not kept (the next turn's template re-adds its own end-of-turn marker)."""
    logits = seq.eval_prompt(prompt, stats)
    history = list(prompt)
    t0 = time.perf_counter()
    stats.stop_reason = "length"
    try:
        while max_tokens < 0 or stats.generated_tokens < max_tokens:
            token = sampler(logits, history)
            if token in eog_ids:
                stats.stop_reason = "eog"
                return
            stats.generated_tokens += 1
            history.append(token)
            yield token
            if seq.cache.offset >= seq.n_ctx:
                stats.stop_reason = "context"
                return
            if max_tokens >= 0 and stats.generated_tokens >= max_tokens:
                return
            logits = seq.step(token)
    finally:
        stats.gen_ms = (time.perf_counter() - t0) * 1e3


class StopStringFilter:
    """Streams text while withholding any tail that could still grow into a stop string."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if not self.stops:
            return text
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf, self.stopped = self.buf[:min(hits)], "", True
            return out
        hold = max((n for s in self.stops for n in range(min(len(s) - 1, len(self.buf)), 0, -1)
                    if self.buf.endswith(s[:n])), default=0)
        out, self.buf = self.buf[:len(self.buf) - hold], self.buf[len(self.buf) - hold:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out
