"""The Python API: `load()` returns an `LLM` that tokenizes, scores, generates and chats.

Library manners: logging only (silent by default), nothing written to stdout, a lock so a GUI's
worker thread and another thread cannot interleave on one KV cache."""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .models import model_class
from .backend import get_backend
from .errors import ContextOverflowError, LocalLLMError
from .generator import Sequence, Stats, StopStringFilter, generate_ids
from .gguf_file import GGUFFile
from .kv_cache import PrefixCache
from .sampler import Sampler, SamplingParams
from .session import load_session, model_fingerprint, save_session
from .speculative import (DRAFT_HEAD_TYPE, DRAFT_K, DRAFT_P_MIN, AdaptiveK, DraftModel, LookupThenDraft, PromptLookup,
                          default_draft_vocab, speculative_ids)
from .tokenizer import StreamDecoder, Tokenizer

log = logging.getLogger(__name__)

DEFAULT_KV_BUDGET = 1 << 30  # bytes of KV cache the default context may use (LOCALLLM_KV_BUDGET)


def kv_bytes_per_token(cfg) -> int:
    """float16 K and V for every layer."""
    return cfg.n_layers * cfg.n_kv_heads * (cfg.head_dim_k + cfg.head_dim_v) * 2


def default_n_ctx(cfg, budget: int) -> int:
    """The trained context, capped so the KV cache fits the budget (never below 256 tokens)."""
    fit = max(budget // kv_bytes_per_token(cfg), 256)
    return int(min(cfg.n_ctx_train, fit))


class LLM:
    """A loaded model. Create with `localllm.load`."""

    def __init__(self, gguf: GGUFFile, tokenizer: Tokenizer, model=None, backend=None, n_ctx: int = 0,
                 kv_budget: int = DEFAULT_KV_BUDGET, chat_template: str | None = None,
                 prefix_cache_bytes: int = 0) -> None:
        self.gguf, self.tokenizer, self.model, self.backend = gguf, tokenizer, model, backend
        self.path = Path(gguf.path)
        self.n_ctx, self.kv_budget = n_ctx, kv_budget
        self._chat_template_override = chat_template
        self._lock = threading.RLock()
        self._seq: Sequence | None = None
        self.last_stats: dict[str, Any] = {}
        self.draft: LLM | None = None       # speculative decoding: a draft model, or
        self.lookup = False                 # prompt-lookup drafting (n-grams of the context)
        self.draft_k, self.spec_auto = DRAFT_K, False
        self.draft_p_min = DRAFT_P_MIN      # drafting stops where the draft's confidence in its draft is lower
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.kv_type = "f16"

    # --- tokens -----------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self.tokenizer.n_vocab

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids; BOS is added only if `add_bos` and the model's metadata asks for it."""
        return self.tokenizer.encode(text, add_bos=add_bos, special=special)

    def detokenize(self, ids: list[int], special: bool = True) -> str:
        return self.tokenizer.decode(self._check_ids(ids), special=special)

    def _check_ids(self, ids: Any) -> list[int]:
        """Caller's token ids as ints within the vocabulary: the kernels index tables with them."""
        out = []
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                raise LocalLLMError(f"token ids must be integers, not {type(i).__name__}")
            if not 0 <= i < self.n_vocab:
                raise LocalLLMError(f"token id {i} is outside the vocabulary (0..{self.n_vocab - 1})")
            out.append(int(i))
        return out

    # --- scoring ----------------------------------------------------------------------------
    def _need_model(self) -> None:
        if self.model is None:
            raise LocalLLMError(f"{self.path.name} was loaded with vocab_only=True: it has no weights to run")

    def _sequence(self) -> Sequence:
        if self._seq is None:
            c = self.model.cfg
            args = (c.n_layers, self.n_ctx, c.n_kv_heads, c.head_dim_k, c.head_dim_v)
            cache = self.backend.new_kv_cache(*args, kv_type=self.kv_type) if self.kv_type != "f16" \
                else self.backend.new_kv_cache(*args)
            self._seq = Sequence(self.model, cache, self.prefix_cache if hasattr(cache, "snapshot") else None)
        return self._seq

    def logits(self, ids: list[int]) -> np.ndarray:
        """float32 [len(ids), n_vocab]: teacher-forced logits over a fresh context."""
        self._need_model()
        with self._lock:
            seq = self._sequence()
            seq.cache.trim(0)
            return seq.eval_prompt(self._check_ids(ids), Stats(), all_logits=True)

    def reset(self) -> None:
        """Forget the cached conversation."""
        with self._lock:
            if self._seq is not None:
                self._seq.cache.trim(0)

    # --- generation -------------------------------------------------------------------------
    def generate(self, prompt: str | list[int], max_tokens: int = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 seed: int | None = None, stop: list[str] | str | None = None,
                 add_bos: bool = True) -> Iterator[str]:
        """Stream text pieces of a raw completion (no chat template). A text prompt is tokenized
        with special tokens parsed; token ids are used as given. max_tokens < 0: until the context
        is full. Never splits a UTF-8 character; `last_stats` is set when the iterator ends."""
        self._need_model()
        ids = self.tokenize(prompt, add_bos=add_bos) if isinstance(prompt, str) else self._check_ids(prompt)
        params = SamplingParams(temperature, top_k, top_p, min_p, repeat_penalty, seed=seed)
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return self._stream(ids, params, max_tokens, stops)

    def _stream(self, ids: list[int], params: SamplingParams, max_tokens: int, stops: list[str]) -> Iterator[str]:
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(ids)} tokens but the context holds {self.n_ctx} (no room to generate)")
        stats = Stats()
        with self._lock:
            seq = self._sequence()
            decoder, stopper = StreamDecoder(self.tokenizer), StopStringFilter(stops)
            tokens = self._token_stream(seq, ids, params, max_tokens, stats)
            try:
                for tok in tokens:
                    piece = stopper.push(decoder.feed(tok))
                    if piece:
                        yield piece
                    if stopper.stopped:
                        stats.stop_reason = "stop"
                        break
                if not stopper.stopped:
                    tail = stopper.push(decoder.flush()) + ("" if stopper.stopped else stopper.flush())
                    if tail:
                        yield tail
            except GeneratorExit:
                stats.stop_reason = "cancelled"
                raise
            finally:
                tokens.close()
                self.last_stats = stats.as_dict()

    def _token_stream(self, seq: Sequence, ids: list[int], params: SamplingParams, max_tokens: int,
                      stats: Stats) -> Iterator[int]:
        sampler, eog = Sampler(params), self.tokenizer.eog_ids
        if self.draft is None and not self.lookup:
            return generate_ids(seq, ids, sampler, max_tokens, eog, stats)
        if self.draft is not None:
            draft_params = SamplingParams(**{**params.__dict__, "seed": None if params.seed is None else params.seed + 1})
            drafter = DraftModel(self.draft._sequence(), Sampler(draft_params), self.n_vocab, self.draft_p_min)
            if self.lookup:
                drafter = LookupThenDraft(drafter)
        else:
            drafter = PromptLookup()
        # a draft model pays a forward per drafted token, so k stays at most draft_k; lookup drafts
        # cost nothing to make, and k may grow while they are accepted
        policy = AdaptiveK(self.draft_k, k_max=self.draft_k if self.draft is not None else 12, auto=self.spec_auto)
        return speculative_ids(seq, drafter, ids, sampler, max_tokens, eog, stats, policy)

    def chat_tokens(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        ids = self.tokenize(self.apply_chat_template(messages, add_generation_prompt), add_bos=True)
        if self.tokenizer.bos_id is not None and ids[:2] == [self.tokenizer.bos_id] * 2:
            ids = ids[1:]  # the template wrote BOS itself; don't double it
        return ids

    def fit_messages(self, messages: list[dict], reserve: int = 1) -> list[dict]:
        """The context-overflow policy "drop_oldest": keep system messages and the last message,
        drop the oldest other turns until the rendered prompt leaves `reserve` tokens free."""
        msgs = list(messages)
        while len(self.chat_tokens(msgs)) + reserve > self.n_ctx:
            drop = next((i for i, m in enumerate(msgs[:-1]) if m.get("role") != "system"), None)
            if drop is None:
                break
            del msgs[drop]
        return msgs

    def chat(self, messages: list[dict], max_tokens: int = -1, add_generation_prompt: bool = True,
             overflow: str = "error", **kwargs: Any) -> Iterator[str]:
        """Like `generate`, on the conversation rendered by the model's chat template. A turn that
        extends the previous conversation re-evaluates only the new tokens (see last_stats).
        overflow: "error" raises ContextOverflowError when the conversation does not fit;
        "drop_oldest" drops the oldest turns (never the system prompt or the last message)."""
        self._need_model()
        if overflow not in ("error", "drop_oldest"):
            raise LocalLLMError(f"overflow must be 'error' or 'drop_oldest', not {overflow!r}")
        if overflow == "drop_oldest":
            messages = self.fit_messages(messages, reserve=min(64, self.n_ctx // 4))
        ids = self.chat_tokens(messages, add_generation_prompt)
        gen_keys = {"temperature", "top_k", "top_p", "min_p", "repeat_penalty", "seed"}
        params = SamplingParams(**{k: v for k, v in kwargs.items() if k in gen_keys})
        stop = kwargs.get("stop")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        return self._stream(ids, params, max_tokens, stops)

    @property
    def chat_template(self) -> str:
        from .chat_template import template_for
        return template_for(self.gguf.metadata, self._chat_template_override)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **variables: Any) -> str:
        from .chat_template import render_chat_template
        tok = self.tokenizer
        special = {"bos_token": tok.token_to_piece(tok.bos_id).decode("utf-8", "replace") if tok.bos_id is not None else "",
                   "eos_token": tok.token_to_piece(tok.eos_id).decode("utf-8", "replace") if tok.eos_id is not None else ""}
        return render_chat_template(self.chat_template, messages, add_generation_prompt, **{**special, **variables})

    # --- sessions ---------------------------------------------------------------------------
    def save_state(self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None) -> None:
        """Write the conversation's tokens and KV cache (plus `extra`, e.g. chat messages)."""
        self._need_model()
        with self._lock:
            state = self._sequence().cache.snapshot()
            save_session(path, state, model_fingerprint(self.gguf, self.model.cfg), extra or {})

    def load_state(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore a state saved by `save_state` with this model; returns its `extra`."""
        self._need_model()
        with self._lock:
            state, extra = load_session(path, model_fingerprint(self.gguf, self.model.cfg))
            if len(state.tokens) > self.n_ctx:
                raise LocalLLMError(f"{path}: session holds {len(state.tokens)} tokens, context is {self.n_ctx}")
            try:
                self._sequence().cache.restore(state)
            except ValueError as e:
                raise LocalLLMError(f"{path}: {e}") from None
            return extra

    # --- description ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        from collections import Counter
        meta = self.gguf.metadata
        d: dict[str, Any] = {
            "path": str(self.path), "file_bytes": self.gguf.file_size, "gguf_version": self.gguf.version,
            "architecture": self.gguf.architecture, "name": meta.get("general.name", ""),
            "tokenizer": meta.get("tokenizer.ggml.model"), "tokenizer_pre": meta.get("tokenizer.ggml.pre"),
            "n_vocab": self.tokenizer.n_vocab, "bos_id": self.tokenizer.bos_id, "eos_id": self.tokenizer.eos_id,
            "eog_ids": sorted(self.tokenizer.eog_ids),
            "chat_template": "metadata" if self._chat_template_override is None and "tokenizer.chat_template" in meta
                             else ("override" if self._chat_template_override else "built-in fallback"),
            "tensor_types": dict(Counter(t.type.name for t in self.gguf.tensors.values())),
            "n_params": int(sum(t.n_elements for t in self.gguf.tensors.values())),
        }
        if self.model is not None:
            cfg = self.model.cfg
            d.update({"config": dict(cfg.__dict__), "backend": self.backend.name, "n_ctx": self.n_ctx,
                      "n_ctx_train": cfg.n_ctx_train, "kv_budget_bytes": self.kv_budget,
                      "kv_bytes_per_token": kv_bytes_per_token(cfg),
                      "kv_cache_bytes": kv_bytes_per_token(cfg) * self.n_ctx,
                      "tensors_run_as": {n: getattr(self.backend, "runs_as", lambda t: t.type.name)(t)
                                         for n, t in self.gguf.tensors.items()}})
        return d

    def close(self) -> None:
        with self._lock:
            self._seq = None
            self.model = None
            self.gguf.close()


def load(path_or_name: str | os.PathLike[str], backend: str = "cpu", n_ctx: int | None = None,
         threads: int | None = None, vocab_only: bool = False, chat_template: str | None = None,
         kv_budget: int | None = None, draft: str | os.PathLike[str] | None = None, lookup: bool | None = None,
         draft_k: int = DRAFT_K, spec_auto: bool = False, prefix_cache_bytes: int = 256 << 20,
         kv_type: str = "f16", device: str | int | None = None, draft_p_min: float = DRAFT_P_MIN,
         draft_vocab: int | None = None) -> LLM:
    """Open a GGUF (a path, or a catalog name such as "smollm2-135m", fetched if missing).

    n_ctx: context length; default the model's trained length capped by `kv_budget` bytes of KV
    cache (default 1 GiB, or $LOCALLLM_KV_BUDGET). chat_template: overrides the file's template.
    draft: a smaller model with the same vocabulary for speculative decoding; lookup: draft from
    n-grams of the context (alone, or with a draft model where the context repeats itself; None:
    on with a draft model, else off); spec_auto: turn speculation off when acceptance is too low;
    draft_k: the most tokens a draft model proposes per round (lookup: the first rounds' count);
    draft_p_min: the draft stops once its probability of its whole draft is below this;
    draft_vocab: the draft computes logits for the first this many token ids only (0: all; None:
    16384 for GPT-2-style BPE vocabularies, whose low ids are the frequent tokens, else all); a
    cut head stored in more than 4.5 bits per weight is held as Q4_0.
    prefix_cache_bytes: memory for K/V of earlier conversations reused by later prompts (0: off).
    kv_type: "f16" (default, as llama.cpp), "f32", or "q8_0" (about half the memory of f16).
    device: the OpenCL device (index or name substring) for backend="opencl" or "auto"."""
    llm = _load_one(path_or_name, backend, n_ctx, threads, vocab_only, chat_template, kv_budget,
                    prefix_cache_bytes, device)
    if kv_type != "f16" and not vocab_only:
        supported = getattr(llm.backend, "kv_types", ("f16",))
        if kv_type not in supported:
            raise LocalLLMError(f"backend {llm.backend.name} does not support kv_type {kv_type!r} "
                                f"(supported: {', '.join(supported)})")
        c = llm.model.cfg
        if kv_type == "q8_0" and (c.head_dim_k % 32 or c.head_dim_v % 32):
            raise LocalLLMError(f"kv_type q8_0 needs head dimensions divisible by 32 (this model: {c.head_dim_k})")
        llm.kv_type = kv_type
    if draft is not None:
        llm.draft = _load_one(draft, backend, llm.n_ctx, threads, False, None, kv_budget, 0, device)
        key = "tokenizer.ggml.tokens"
        if llm.draft.gguf.metadata.get(key) != llm.gguf.metadata.get(key):
            raise LocalLLMError(f"draft model {Path(str(draft)).name} has a different vocabulary from "
                                f"{llm.path.name}: speculative decoding needs identical tokens")
        if draft_vocab is None:
            draft_vocab = default_draft_vocab(llm.draft.gguf.metadata.get("tokenizer.ggml.model"))
        if draft_vocab < 0:
            raise LocalLLMError(f"draft_vocab must be 0 (the whole vocabulary) or positive, not {draft_vocab}")
        llm.draft.model.limit_output(draft_vocab, DRAFT_HEAD_TYPE)
    if not 0.0 <= draft_p_min <= 1.0:
        raise LocalLLMError(f"draft_p_min must be between 0 and 1, not {draft_p_min}")
    if lookup is None:
        lookup = draft is not None
    llm.lookup, llm.draft_k, llm.spec_auto, llm.draft_p_min = lookup, draft_k, spec_auto, draft_p_min
    return llm


def _env_kv_budget() -> int:
    raw = os.environ.get("LOCALLLM_KV_BUDGET", str(DEFAULT_KV_BUDGET))
    try:
        budget = int(raw)
    except ValueError:
        budget = 0
    if budget <= 0:
        raise LocalLLMError(f"LOCALLLM_KV_BUDGET must be a positive number of bytes, not {raw[:32]!r}")
    return budget


def _available_memory() -> int | None:
    """Bytes the kernel says a new allocation can get (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _check_kv_fits(cfg, n_ctx: int) -> None:
    """Refuse, before allocating, a KV cache larger than the memory available."""
    need, avail = kv_bytes_per_token(cfg) * n_ctx, _available_memory()
    if avail is not None and need > avail:
        raise LocalLLMError(f"the KV cache for n_ctx={n_ctx} needs {need / 2**30:.1f} GiB, more than the "
                            f"{avail / 2**30:.1f} GiB of memory available (use a smaller n_ctx)")


def _load_one(path_or_name, backend, n_ctx, threads, vocab_only, chat_template, kv_budget, prefix_cache_bytes,
              device=None) -> LLM:
    from .catalog import resolve_model

    path = resolve_model(str(path_or_name))
    gguf = GGUFFile(path)
    arch = gguf.architecture
    tokenizer = Tokenizer.from_metadata(gguf.metadata)
    if vocab_only:
        return LLM(gguf, tokenizer, chat_template=chat_template)
    cls = model_class(arch)
    cfg = cls.config(gguf.metadata)
    be = get_backend(backend, threads=threads, device=device)
    model = cls(gguf, cfg, be)
    budget = kv_budget if kv_budget is not None else _env_kv_budget()
    if n_ctx is not None and n_ctx <= 0:
        raise LocalLLMError(f"n_ctx must be positive, got {n_ctx}")
    ctx = n_ctx if n_ctx is not None else default_n_ctx(cfg, budget)
    _check_kv_fits(cfg, ctx)
    log.info("loaded %s (%s, %d layers) on %s, n_ctx=%d", path.name, arch, cfg.n_layers, be.name, ctx)
    return LLM(gguf, tokenizer, model, be, ctx, budget, chat_template, prefix_cache_bytes)
