"""Sampler: llama.cpp's filters checked against direct definitions, and seeded reproducibility."""
from __future__ import annotations

import numpy as np

from localllm.generator import StopStringFilter
from localllm.sampler import Sampler, SamplingParams, apply_repeat_penalty, candidates, softmax

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=1000).astype(np.float32) * 3


def test_greedy_is_argmax():
    s = Sampler(SamplingParams(temperature=0))
    assert s(LOGITS) == int(np.argmax(LOGITS))


def test_top_k_keeps_the_k_largest():
    ids, _ = candidates(LOGITS, top_k=7, top_p=1.0, min_p=0.0)
    assert set(ids) == set(np.argsort(-LOGITS)[:7])


def test_top_p_keeps_smallest_prefix_reaching_mass():
    ids, vals = candidates(LOGITS, top_k=0, top_p=0.9, min_p=0.0)
    probs = softmax(np.sort(LOGITS)[::-1])
    need = int(np.argmax(np.cumsum(probs) >= 0.9)) + 1
    assert len(ids) == need
    assert np.all(np.diff(vals) <= 0)


def test_min_p_relative_to_best():
    ids, _ = candidates(LOGITS, top_k=0, top_p=1.0, min_p=0.1)
    p = softmax(LOGITS)
    assert set(ids) == set(np.flatnonzero(p >= 0.1 * p.max()))


def test_filters_always_keep_one():
    ids, _ = candidates(LOGITS, top_k=1, top_p=0.0, min_p=0.99)
    assert list(ids) == [int(np.argmax(LOGITS))]


def test_repeat_penalty_rule():
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    out = apply_repeat_penalty(logits, [0, 1, 1], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0]


def test_seed_reproducible_and_distribution():
    a = [Sampler(SamplingParams(seed=42))(LOGITS) for _ in range(5)]
    s1, s2 = Sampler(SamplingParams(seed=42)), Sampler(SamplingParams(seed=42))
    assert [s1(LOGITS) for _ in range(50)] == [s2(LOGITS) for _ in range(50)]
    assert len(set(a)) == 1
    # temperature sampling over two tokens follows softmax(logits / T)
    two = np.array([1.0, 0.0], dtype=np.float32)
    s = Sampler(SamplingParams(temperature=0.5, top_k=0, top_p=1.0, min_p=0.0, seed=1))
    freq = np.mean([s(two) == 0 for _ in range(4000)])
    expect = 1 / (1 + np.exp(-2.0))
    assert abs(freq - expect) < 0.03


def test_stop_string_filter_withholds_partial_matches():
    f = StopStringFilter(["\nUser:"])
    out = "".join(f.push(p) for p in ["Hello", " there\n", "Us", "er: more"])
    assert out == "Hello there"
    assert f.stopped
    g = StopStringFilter(["###"])
    assert g.push("a#") == "a" and g.push("b") == "#b" and g.flush() == ""
