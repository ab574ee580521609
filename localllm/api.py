"""The Python API: `load()` returns an `LLM` that tokenizes, scores, generates and chats.

Library manners: logging only (silent by default), nothing written to stdout, safe to use from
several threads (see `LLM` for how streams share the one KV cache)."""
from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .models import model_class
from .backend import Backend, get_backend
from .errors import ContextOverflowError, LocalLLMError, quoted
from .generator import Sequence, Stats, StopStringFilter, generate_ids
from .gguf_file import GGUFFile
from .kv_cache import PrefixCache
from .sampler import Sampler, SamplingParams
from .session import load_session, model_fingerprint, save_session
from .speculative import (DRAFT_HEAD_TYPE, DRAFT_K, DRAFT_P_MIN, AdaptiveK, DraftModel, LookupThenDraft, PromptLookup,
                          default_draft_vocab, speculative_ids)
from .tokenizer import StreamDecoder, Tokenizer
from . import validate

log = logging.getLogger(__name__)

DEFAULT_KV_BUDGET = 1 << 30  # bytes of KV cache the default context may use (LOCALLLM_KV_BUDGET)


def kv_bytes_per_token(cfg) -> int:
    """float16 K and V for every layer."""
    return cfg.n_layers * cfg.n_kv_heads * (cfg.head_dim_k + cfg.head_dim_v) * 2


def default_n_ctx(cfg, budget: int) -> int:
    """The trained context, capped so the KV cache fits the budget (never below 256 tokens)."""
    fit = max(budget // kv_bytes_per_token(cfg), 256)
    return int(min(cfg.n_ctx_train, fit))


class _Slot:
    """A stream's claim on the LLM's sequence. While the stream is the sequence's owner the cache
    holds its state; when another call takes the sequence, the stream's state is parked here and
    put back when the stream next advances. A stream drops its claim when it ends, is closed or is
    garbage-collected (a dead weak reference), without taking any lock."""

    __slots__ = ("parked", "done", "__weakref__")

    def __init__(self) -> None:
        self.parked: Any = None     # a KVState copy, or the token tuple where the cache cannot be copied
        self.done = False


class LLM:
    """A loaded model. Create with `localllm.load`.

    Safe to use from several threads; each stream is independent. A `generate`/`chat` iterator may
    be advanced from any thread (as a thread pool or Starlette's `iterate_in_threadpool` does).
    The model has one KV cache: a lock serializes the work on it one step at a time (a prompt's
    evaluation or one token), never across a `yield`, so no call waits for a stream its caller
    abandoned. When streams interleave (or `logits`, `load_state`, `reset` run while a stream is
    unfinished), the unfinished stream's cache is parked: copied aside (the token list on
    backends whose cache stays on the device, re-evaluated on resume) and restored when it next
    advances, so every stream produces what it would have alone. Interleaving thus costs a copy of
    a stream's K/V per switch; a server wanting concurrency should batch requests instead.
    `save_state` saves what the cache holds at the time, whichever stream last advanced;
    `last_stats` are those of the stream that ended last."""

    def __init__(self, gguf: GGUFFile, tokenizer: Tokenizer, model=None, backend=None, n_ctx: int = 0,
                 kv_budget: int = DEFAULT_KV_BUDGET, chat_template: str | None = None,
                 prefix_cache_bytes: int = 0) -> None:
        self.gguf, self.tokenizer, self.model, self.backend = gguf, tokenizer, model, backend
        self.path = Path(gguf.path)
        self.n_ctx, self.kv_budget = n_ctx, kv_budget
        self._chat_template_override = chat_template
        self._lock = threading.Lock()       # held for one step at a time, never across a yield
        self._seq: Sequence | None = None
        self._owner: weakref.ref[_Slot] | None = None   # the stream whose state the cache holds
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
        out = validate.token_ids("ids", ids)
        bad = next((i for i in out if not 0 <= i < self.n_vocab), None)
        if bad is not None:
            raise LocalLLMError(f"token id {bad} is outside the vocabulary (0..{self.n_vocab - 1})")
        return out

    # --- scoring ----------------------------------------------------------------------------
    def _need_model(self) -> None:
        if self.model is None:
            raise LocalLLMError(f"{self.path.name} was loaded with vocab_only=True: it has no weights to run")

    def _sequence(self) -> Sequence:
        """Created on first use; callers other than tests hold `self._lock`."""
        if self._seq is None:
            c = self.model.cfg
            args = (c.n_layers, self.n_ctx, c.n_kv_heads, c.head_dim_k, c.head_dim_v)
            cache = self.backend.new_kv_cache(*args, kv_type=self.kv_type) if self.kv_type != "f16" \
                else self.backend.new_kv_cache(*args)
            self._seq = Sequence(self.model, cache, self.prefix_cache if cache.can_snapshot else None)
        return self._seq

    def _take_sequence(self, slot: _Slot | None = None) -> Sequence:
        """The sequence, for the caller holding `self._lock`: an unfinished stream that owns it is
        parked first, and `slot`'s own parked state put back (slot None: a one-off call)."""
        self._need_model()
        seq = self._sequence()
        owner = self._owner() if self._owner is not None else None
        if owner is slot:
            return seq
        if owner is not None and not owner.done:
            owner.parked = seq.cache.snapshot() if seq.cache.can_snapshot else tuple(seq.cache.tokens)
        if slot is not None and slot.parked is not None:
            self._unpark(seq, slot.parked)
            slot.parked = None
        self._owner = weakref.ref(slot) if slot is not None else None
        return seq

    @staticmethod
    def _unpark(seq: Sequence, parked: Any) -> None:
        if not isinstance(parked, tuple):
            seq.cache.restore(parked)
        elif parked:
            seq.eval_prompt(list(parked), Stats())   # the cache cannot be copied: evaluate again
        else:
            seq.cache.trim(0)

    def logits(self, ids: list[int]) -> np.ndarray:
        """float32 [len(ids), n_vocab]: teacher-forced logits over a fresh context."""
        ids = self._check_ids(ids)
        with self._lock:
            seq = self._take_sequence()
            seq.cache.trim(0)
            return seq.eval_prompt(ids, Stats(), all_logits=True)

    def reset(self) -> None:
        """Forget the cached conversation."""
        with self._lock:
            if self._seq is not None:
                self._take_sequence().cache.trim(0)

    # --- generation -------------------------------------------------------------------------
    def generate(self, prompt: str | list[int], max_tokens: int = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 seed: int | None = None, stop: list[str] | str | None = None,
                 add_bos: bool = True) -> Iterator[str]:
        """Stream text pieces of a raw completion (no chat template). A text prompt is tokenized
        with special tokens parsed; token ids are used as given. max_tokens < 0: until the context
        is full. Never splits a UTF-8 character; `last_stats` is set when the iterator ends."""
        self._need_model()
        prompt = validate.prompt(prompt)
        ids = self.tokenize(prompt, add_bos=add_bos) if isinstance(prompt, str) else self._check_ids(prompt)
        params = validate.sampling(temperature, top_k, top_p, min_p, repeat_penalty, seed)
        return self._stream(ids, params, validate.integer("max_tokens", max_tokens), validate.stops(stop))

    def _stream(self, ids: list[int], params: SamplingParams, max_tokens: int, stops: list[str]) -> Iterator[str]:
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(
                f"prompt is {len(ids)} tokens but the context holds {self.n_ctx} (no room to generate)")
        stats, slot = Stats(), _Slot()
        decoder, stopper = StreamDecoder(self.tokenizer), StopStringFilter(stops)
        tokens: Iterator[int] | None = None
        try:
            while not stopper.stopped:
                with self._lock:   # one step; released before the yield, so any thread may go on
                    seq = self._take_sequence(slot)
                    if tokens is None:
                        tokens = self._token_stream(seq, ids, params, max_tokens, stats)
                    tok = next(tokens, None)
                if tok is None:
                    tail = stopper.push(decoder.flush()) + ("" if stopper.stopped else stopper.flush())
                    if tail:
                        yield tail
                    return
                piece = stopper.push(decoder.feed(tok))
                if piece:
                    yield piece
            stats.stop_reason = "stop"
        except GeneratorExit:
            stats.stop_reason = "cancelled"
            raise
        finally:
            slot.done = True   # no lock here: this may run in the garbage collector, on any thread
            if tokens is not None:
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
        messages = validate.messages(messages)
        if overflow not in ("error", "drop_oldest"):
            raise LocalLLMError(f"overflow must be 'error' or 'drop_oldest', not {quoted(overflow)}")
        unknown = sorted(set(kwargs) - {*validate.SAMPLING_KEYS, "stop"})
        if unknown:
            raise LocalLLMError(f"chat() got unknown argument {quoted(unknown[0])}")
        params = validate.sampling(**{k: v for k, v in kwargs.items() if k != "stop"})
        stops, max_tokens = validate.stops(kwargs.get("stop")), validate.integer("max_tokens", max_tokens)
        if overflow == "drop_oldest":
            messages = self.fit_messages(messages, reserve=min(64, self.n_ctx // 4))
        ids = self.chat_tokens(messages, add_generation_prompt)
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
        """Write the conversation's tokens and KV cache (plus `extra`, e.g. chat messages: a dict
        that JSON can encode)."""
        _check_path("path", path)
        with self._lock:
            state = self._session_cache("save").snapshot()   # what the cache holds now
        save_session(path, state, model_fingerprint(self.gguf, self.model.cfg), {} if extra is None else extra)

    def _session_cache(self, verb: str):
        """The cache a session is saved from or loaded into, as it is (no stream is parked)."""
        self._need_model()
        cache = self._sequence().cache
        if not cache.can_snapshot:
            raise LocalLLMError(f"backend {self.backend.name} cannot {verb} sessions (its KV cache stays on the device)")
        return cache

    def load_state(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore a state saved by `save_state` with this model; returns its `extra`."""
        _check_path("path", path)
        with self._lock:
            cache = self._session_cache("load")
            layout = {name: (a.dtype, a.shape) for name, a in cache.arrays.items()}
        # outside the lock: reading and checking a file may take a while
        state, extra = load_session(path, model_fingerprint(self.gguf, self.model.cfg), layout, self.n_ctx,
                                    self.n_vocab)
        with self._lock:
            self._take_sequence().cache.restore(state)
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
            d.update({"config": dict(cfg.__dict__), "backend": self.backend.name, "step_path": self.model.step_path,
                      "n_ctx": self.n_ctx,
                      "n_ctx_train": cfg.n_ctx_train, "kv_budget_bytes": self.kv_budget,
                      "kv_bytes_per_token": kv_bytes_per_token(cfg),
                      "kv_cache_bytes": kv_bytes_per_token(cfg) * self.n_ctx,
                      "tensors_run_as": {n: self.backend.runs_as(t)
                                         for n, t in self.gguf.tensors.items()}})
        return d

    def close(self) -> None:
        """Release the weights and the cache; unfinished streams raise LocalLLMError if advanced."""
        with self._lock:
            self._seq = None
            self.model = None
            self.gguf.close()


def _check_path(name: str, path: Any) -> None:
    if not isinstance(path, (str, os.PathLike)) or not str(path) or "\0" in str(path):
        raise LocalLLMError(f"{name} must be a file path, not {quoted(path)}")


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
    validate.integer("draft_k", draft_k, minimum=1)
    validate.integer("prefix_cache_bytes", prefix_cache_bytes, minimum=0)
    validate.number("draft_p_min", draft_p_min, minimum=0.0, maximum=1.0)
    if draft_vocab is not None:
        validate.integer("draft_vocab", draft_vocab, minimum=0)
    llm = _load_one(path_or_name, backend, n_ctx, threads, vocab_only, chat_template, kv_budget,
                    prefix_cache_bytes, device)
    if kv_type != "f16" and not vocab_only:
        supported = llm.backend.kv_types
        if kv_type not in supported:
            raise LocalLLMError(f"backend {llm.backend.name} does not support kv_type {kv_type!r} "
                                f"(supported: {', '.join(supported)})")
        c = llm.model.cfg
        if kv_type == "q8_0" and (c.head_dim_k % 32 or c.head_dim_v % 32):
            raise LocalLLMError(f"kv_type q8_0 needs head dimensions divisible by 32 (this model: {c.head_dim_k})")
        llm.kv_type = kv_type
    if draft is not None:
        llm.draft = _load_one(draft, backend, llm.n_ctx, threads, False, None, kv_budget, 0, device,
                              llm.backend if llm.backend.draft_shares else None)
        key = "tokenizer.ggml.tokens"
        if llm.draft.gguf.metadata.get(key) != llm.gguf.metadata.get(key):
            raise LocalLLMError(f"draft model {Path(str(draft)).name} has a different vocabulary from "
                                f"{llm.path.name}: speculative decoding needs identical tokens")
        if draft_vocab is None:
            draft_vocab = default_draft_vocab(llm.draft.gguf.metadata.get("tokenizer.ggml.model"))
        llm.draft.model.limit_output(draft_vocab, DRAFT_HEAD_TYPE)
    if lookup is None:
        lookup = draft is not None
    llm.lookup, llm.draft_k, llm.spec_auto, llm.draft_p_min = lookup, draft_k, spec_auto, draft_p_min
    return llm


def _load_one(path_or_name, backend, n_ctx, threads, vocab_only, chat_template, kv_budget, prefix_cache_bytes,
              device=None, be: Backend | None = None) -> LLM:
    """One model; on `be` when given (a draft on its target's backend), else on a new backend."""
    from .catalog import resolve_model

    if not isinstance(path_or_name, (str, os.PathLike)):
        raise LocalLLMError(f"model must be a path or a catalog name, not {quoted(path_or_name)}")
    if threads is not None:
        validate.integer("threads", threads, minimum=1)
    path = resolve_model(str(path_or_name))
    gguf = GGUFFile(path)
    arch = gguf.architecture
    tokenizer = Tokenizer.from_metadata(gguf.metadata)
    if vocab_only:
        return LLM(gguf, tokenizer, chat_template=chat_template)
    cls = model_class(arch)
    cfg = cls.config(gguf.metadata)
    be = be or get_backend(backend, threads=threads, device=device)
    model = cls(gguf, cfg, be)
    budget = validate.integer("kv_budget", kv_budget, minimum=1) if kv_budget is not None \
        else validate.env_int("LOCALLLM_KV_BUDGET", DEFAULT_KV_BUDGET)
    ctx = validate.integer("n_ctx", n_ctx, minimum=1) if n_ctx is not None else default_n_ctx(cfg, budget)
    validate.n_ctx_fits(ctx, kv_bytes_per_token(cfg))
    log.info("loaded %s (%s, %d layers) on %s, n_ctx=%d", path.name, arch, cfg.n_layers, be.name, ctx)
    return LLM(gguf, tokenizer, model, be, ctx, budget, chat_template, prefix_cache_bytes)
