"""Token sampling with llama.cpp's defaults and chain order:
repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw (temperature <= 0: argmax)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    temperature: float = 0.8
    top_k: int = 40            # <= 0: off
    top_p: float = 0.95        # >= 1: off
    min_p: float = 0.05        # <= 0: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64
    seed: int | None = None    # None: a fresh random seed each run


class Sampler:
    """Holds the random state, so one seeded sampler makes a reproducible run."""

    def __init__(self, params: SamplingParams) -> None:
        self.p = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray, history: Sequence[int] = ()) -> int:
        ids, probs = self.candidates(logits, history)
        return int(ids[0]) if len(ids) == 1 else int(ids[self.rng.choice(len(ids), p=probs)])

    def candidates(self, logits: np.ndarray, history: Sequence[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The tokens this sampler may draw and their probabilities (one token with p=1 when greedy)."""
        logits = np.asarray(logits, dtype=np.float32)          # [n_vocab]
        p = self.p
        if p.repeat_penalty != 1.0 and p.repeat_last_n != 0 and len(history):
            recent = history[-p.repeat_last_n:] if p.repeat_last_n > 0 else history
            logits = apply_repeat_penalty(logits, recent, p.repeat_penalty)
        if p.temperature <= 0:
            return np.array([int(np.argmax(logits))]), np.ones(1)
        ids, vals = candidates(logits, p.top_k, p.top_p, p.min_p)
        return ids, softmax(vals / np.float32(p.temperature))

    def distribution(self, logits: np.ndarray, history: Sequence[int] = ()) -> np.ndarray:
        """The full-vocabulary distribution this sampler draws from: [n_vocab] float64."""
        ids, probs = self.candidates(logits, history)
        dense = np.zeros(len(logits), dtype=np.float64)
        dense[ids] = probs
        return dense

    def draw(self, dist: np.ndarray) -> int:
        """One token from a full-vocabulary distribution (argmax when it is one-hot)."""
        nz = np.flatnonzero(dist)
        if len(nz) == 1:
            return int(nz[0])
        return int(nz[self.rng.choice(len(nz), p=dist[nz] / dist[nz].sum())])

    @property
    def greedy(self) -> bool:
        return self.p.temperature <= 0


def apply_repeat_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """llama.cpp's rule: a seen token's logit is divided by the penalty if positive, else multiplied."""
    out = logits.copy()
    seen = np.unique(np.asarray(recent, dtype=np.int64))
    seen = seen[(seen >= 0) & (seen < len(out))]
    v = out[seen]
    out[seen] = np.where(v > 0, v / penalty, v * penalty)
    return out


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(), dtype=np.float64)
    return e / e.sum()


def candidates(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The surviving token ids and their logits, sorted by logit descending (at least one kept)."""
    k = len(logits) if top_k <= 0 else min(top_k, len(logits))
    ids = np.argpartition(-logits, k - 1)[:k] if k < len(logits) else np.arange(len(logits))
    ids = ids[np.argsort(-logits[ids], kind="stable")]
    vals = logits[ids]
    if top_p < 1.0:
        cum = np.cumsum(softmax(vals))
        keep = int(np.searchsorted(cum, top_p) + 1)   # smallest prefix whose mass reaches top_p
        ids, vals = ids[:keep], vals[:keep]
    if min_p > 0.0:
        keep = vals >= vals[0] + np.log(min_p)        # p_i >= min_p * p_max, in logit space
        ids, vals = ids[keep], vals[keep]
    return ids, vals
