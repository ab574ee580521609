"""Speculative decoding: a cheap drafter proposes k tokens, the target scores all of them in one
batched forward, and the acceptance rule below keeps the target's output distribution exactly.

Acceptance (Leviathan et al. 2023; gpt-fast): with target distribution p and draft distribution q
at a position, a drafted token d is accepted with probability min(1, p[d] / q[d]); on rejection
the token is drawn from normalize(max(0, p - q)) and the round ends. If every drafted token is
accepted, one bonus token is drawn from p after the last one. Greedy sampling makes p one-hot,
which reduces this to "accept while the target's argmax equals the draft". Prompt-lookup drafts
are deterministic (q one-hot on d): accept with probability p[d], else draw from p without d."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

import numpy as np
from gguf import GGMLQuantizationType

from .generator import Sequence, Stats
from .sampler import Sampler


# Defaults (localllm.load, `localllm run`), measured with bench/bench_speculative.py: a draft
# model's forward costs ~0.3-0.45 of the target's, so rounds stay short (verifying 2 or 3 tokens
# costs about one target step, 4 tokens 1.2 steps, 5 tokens 1.3: `--steps`).
DRAFT_K = 2          # tokens a draft model proposes per round at most (lookup: to start with)
DRAFT_P_MIN = 0.5    # drafting stops once the draft's probability of its whole draft is lower
# The draft's output head cut to the first ids (FR-Spec): a small model's head is a third of its
# bytes (SmolLM2), and in GPT-2-style BPE vocabularies the ids are merge ranks, frequent first
# (SmolLM2: the first 16384 ids hold 95.5% of generated tokens). SentencePiece ids are not ordered
# so (Gemma 3: 70.5% in the first 16384, 77% in 65536): their heads stay whole
# (bench_speculative.py --coverage).
DRAFT_VOCAB_BPE = 16384
DRAFT_HEAD_TYPE = GGMLQuantizationType.Q4_0   # a cut draft head held in 4.5 bits (models.base.head_rows)


LOOKUP_NGRAM = 3     # with a draft model: a match of the last 3 tokens proposes lookup tokens
LOOKUP_K = 4         # ... at most 4 of them (shorter n-grams matched too often in the wrong place)


def default_draft_vocab(tokenizer_model: str | None) -> int:
    """Rows of the draft's head to keep by default (0: all) for a GGUF tokenizer.ggml.model."""
    return DRAFT_VOCAB_BPE if tokenizer_model == "gpt2" else 0


class Drafter(Protocol):
    def propose(self, history: list[int], k: int) -> tuple[list[int], list[np.ndarray | None]]:
        """Up to k tokens continuing `history`, with the distribution each was drawn from
        ([n_vocab]) or None for a deterministic proposal."""


class DraftModel:
    """A smaller model with the same vocabulary, run through its own KV cache. Drafting stops
    once the draft is unsure the chain so far survives: when the product of its probabilities
    for the tokens drafted this round falls below p_min (cf. llama.cpp's per-token p_min). The
    test comes before the next draft step, so no step is spent on logits that are then not used.
    It depends on the draft's own logits only, so the acceptance rule stays exact."""

    def __init__(self, seq: Sequence, sampler: Sampler, n_vocab: int, p_min: float = DRAFT_P_MIN) -> None:
        self.seq, self.sampler, self.n_vocab, self.p_min = seq, sampler, n_vocab, p_min
        self._padded = np.full(n_vocab, -np.inf, dtype=np.float32)   # [n_vocab], see _full

    def _full(self, logits: np.ndarray) -> np.ndarray:
        """[n_vocab] logits; the ids a cut head (Model.limit_output) skips read -inf. One buffer,
        rewritten each step: a step's logits are used before the next step's arrive."""
        if len(logits) == self.n_vocab:
            return logits
        self._padded[:len(logits)] = logits
        return self._padded

    def propose(self, history: list[int], k: int) -> tuple[list[int], list[np.ndarray | None]]:
        k = min(k, self.seq.n_ctx - len(history))
        if k <= 0:
            return [], []
        raw = self.seq.eval_prompt(history, Stats())      # reuses the prefix its cache holds
        tokens: list[int] = []
        dists: list[np.ndarray | None] = []
        chain = 1.0                                        # the draft's probability of the whole draft
        for i in range(k):
            logits = self._full(raw)
            if self.sampler.greedy:                        # a deterministic proposal: q is one-hot
                tokens.append(self.sampler(logits, history + tokens))
                dists.append(None)
                chain /= np.exp(raw - raw[tokens[-1]]).sum()   # the cut ids add nothing
            else:
                q = self.sampler.distribution(logits, history + tokens)
                tokens.append(self.sampler.draw(q))
                dists.append(q)
                chain *= q[tokens[-1]]
            if i + 1 == k or chain < self.p_min:
                break
            raw = self.seq.step(tokens[-1])
        return tokens, dists


class PromptLookup:
    """Drafts by finding the latest earlier occurrence of the context's last n tokens
    (n = max_ngram down to min_ngram) and proposing what followed it."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def propose(self, history: list[int], k: int) -> tuple[list[int], list[np.ndarray | None]]:
        h = np.asarray(history)
        for n in range(min(self.max_ngram, len(h) - 1), self.min_ngram - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(h[:-1], n)   # [len-n, n]
            hits = np.flatnonzero((windows == h[-n:]).all(axis=1))
            if len(hits):
                start = int(hits[-1]) + n
                draft = h[start:start + k].tolist()
                if draft:
                    return draft, [None] * len(draft)
        return [], []


class LookupThenDraft:
    """Prompt lookup where the context repeats itself, the draft model elsewhere: a lookup draft
    costs no forward at all, so where the last LOOKUP_NGRAM tokens occurred before, what followed
    them is proposed (up to LOOKUP_K tokens) and the draft model is not run. Its cache catches up
    on the skipped tokens in one batch the next time it drafts. (SmolLM2 F16 with its Q4_0 draft
    on the code prompt: ~0.1x more speed-up than the draft alone; bench_speculative.py.)"""

    def __init__(self, draft: DraftModel) -> None:
        self.draft, self.lookup = draft, PromptLookup(max_ngram=LOOKUP_NGRAM, min_ngram=LOOKUP_NGRAM)

    def propose(self, history: list[int], k: int) -> tuple[list[int], list[np.ndarray | None]]:
        tokens, dists = self.lookup.propose(history, LOOKUP_K)
        return (tokens, dists) if tokens else self.draft.propose(history, k)


def accept_or_resample(p: np.ndarray, q: np.ndarray | None, d: int, sampler: Sampler) -> tuple[bool, int]:
    """The acceptance rule for one drafted token d, temperature > 0: (accepted, token to emit)."""
    q_d = 1.0 if q is None else q[d]
    if sampler.rng.random() < min(1.0, p[d] / q_d):
        return True, d
    if q is None:
        residual = p.copy()
        residual[d] = 0.0
    else:
        residual = np.maximum(p - q, 0.0)
    if residual.sum() <= 0:   # nothing left to correct towards: p itself is the exact draw
        return False, sampler.draw(p)
    return False, sampler.draw(residual / residual.sum())


class AdaptiveK:
    """Grows k while drafts are fully accepted, shrinks it after early rejections; with `auto`,
    turns speculation off when acceptance is too low to pay for the drafting."""

    def __init__(self, k: int = DRAFT_K, k_max: int = 12, auto: bool = False) -> None:
        self.k, self.k_max, self.auto = k, k_max, auto
        self.proposed = self.accepted = self.rounds = 0
        self.enabled = True

    def update(self, proposed: int, accepted: int) -> None:
        self.proposed += proposed
        self.accepted += accepted
        self.rounds += 1
        self.k = min(self.k + 1, self.k_max) if accepted == proposed else max(1, accepted + 1)
        if self.auto and self.rounds >= 8 and self.accepted < 0.3 * self.proposed:
            self.enabled = False


def verify(seq: Sequence, pending: int, draft: list[int], qs: list[np.ndarray | None], sampler: Sampler,
           history: list[int], eog_ids: frozenset[int]) -> tuple[list[int], int]:
    """One batched target forward over [pending] + draft. Returns the tokens to emit (accepted
    drafts, then a correction or bonus token) and how many drafts were accepted; the cache keeps
    K/V for pending and the accepted drafts only."""
    base = seq.cache.offset
    batch = [pending] + draft
    logits = seq.forward(batch, all_logits=True)  # [1+k, vocab]
    seq.cache.tokens.extend(batch)
    emitted: list[int] = []
    n_ok = 0
    for i, d in enumerate(draft):
        if sampler.greedy:                     # p is one-hot on the argmax: accept while it is the draft
            token = sampler(logits[i], history + emitted)
            ok = token == d
        else:
            ok, token = accept_or_resample(sampler.distribution(logits[i], history + emitted), qs[i], d, sampler)
        emitted.append(token)
        if not ok:
            break
        n_ok += 1
        if token in eog_ids:
            break
    else:
        emitted.append(sampler(logits[len(draft)], history + emitted))   # bonus token
    seq.cache.trim(base + 1 + min(n_ok, len(emitted) - 1))   # the last emitted token is the next pending
    return emitted, n_ok


def speculative_ids(seq: Sequence, drafter: Drafter, prompt: list[int], sampler: Sampler, max_tokens: int,
                    eog_ids: frozenset[int], stats: Stats, policy: AdaptiveK) -> Iterator[int]:
    """Like generator.generate_ids, with drafts verified in batches. Invariant between rounds: the
    target's cache holds every emitted token but the last (`pending`), which opens the next batch."""
    logits = seq.eval_prompt(prompt, stats)
    history = list(prompt)
    t0 = time.perf_counter()
    stats.stop_reason = "length"
    queue = [sampler(logits, history)]
    try:
        while True:
            for token in queue:
                if token in eog_ids:
                    stats.stop_reason = "eog"
                    return
                history.append(token)
                stats.generated_tokens += 1
                yield token
                if 0 <= max_tokens <= stats.generated_tokens:
                    return
            room = seq.n_ctx - seq.cache.offset - 1       # cache rows left once pending is stored
            if room < 0:
                stats.stop_reason = "context"
                return
            left = max_tokens - stats.generated_tokens if max_tokens >= 0 else room
            k = min(policy.k, room, left) if policy.enabled else 0
            draft, qs = drafter.propose(history, k) if k > 0 else ([], [])
            queue, n_ok = verify(seq, history[-1], draft, qs, sampler, history, eog_ids)
            if draft:
                policy.update(len(draft), n_ok)
                stats.extra.update(draft_proposed=policy.proposed, draft_accepted=policy.accepted)
    finally:
        stats.gen_ms = (time.perf_counter() - t0) * 1e3
