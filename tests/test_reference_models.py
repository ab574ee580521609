"""Whole-model checks against llama.cpp's outputs in tests/data/reference (teacher-forced logits,
tokenization, greedy continuation) through the public API and the reference backend."""
from __future__ import annotations

import numpy as np
import pytest
from support import assert_close_to_llama_cpp, closeness, load_reference

import localllm

MODELS = [("smollm2-135m-q4_1", "smollm2_path"), ("gemma3-270m-q4_k_m", "gemma3_path")]
BACKENDS = ["cpu", "numpy"]  # the SIMD backend and the float32 reference it is tested against
PARAMS = [(m, b) for m in MODELS for b in BACKENDS]


@pytest.fixture(scope="module", params=PARAMS, ids=[f"{m[0]}-{b}" for m, b in PARAMS])
def ref_model(request):
    (key, fixture), backend = request.param
    llm = localllm.load(request.getfixturevalue(fixture), n_ctx=1024, backend=backend)
    yield key, llm
    llm.close()


def test_tokenization_matches_llama_cpp(ref_model):
    key, llm = ref_model
    cases, _ = load_reference(key)
    for case in cases["cases"]:
        assert llm.tokenize(case["prompt"]) == case["prompt_tokens"], case["prompt"][:40]


def test_teacher_forced_logits_match_llama_cpp(ref_model):
    key, llm = ref_model
    fig = closeness(key, llm.logits)
    print(key, fig)
    assert_close_to_llama_cpp(fig)


def test_last_prompt_logits_match_over_whole_vocab(ref_model):
    """Beyond the top 10: the full logit vector at the last prompt position tracks llama.cpp's."""
    key, llm = ref_model
    cases, npz = load_reference(key)
    case = cases["cases"][0]
    ours = llm.logits(case["prompt_tokens"])[-1]
    ref = npz["last_logits_0"]
    assert ours.shape == ref.shape
    assert np.corrcoef(ours, ref)[0, 1] > 0.995
    assert np.abs(ours - ref).mean() < 0.3


def test_greedy_generation_starts_like_llama_cpp(ref_model):
    """Greedy continuations may drift after a near-tie; the first tokens must agree."""
    key, llm = ref_model
    cases, _ = load_reference(key)
    case = cases["cases"][0]
    text = "".join(llm.generate(case["prompt"], max_tokens=4, temperature=0))
    assert text == llm.detokenize(case["greedy_tokens"][:4], special=False)


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_int8_kernels_on_q8_0_and_q4_0_references(smollm2_requantized, qtype):
    llm = localllm.load(smollm2_requantized[qtype], n_ctx=1024, backend="cpu", prefix_cache_bytes=0)
    fig = closeness(f"smollm2-135m-{qtype}", llm.logits)
    print(qtype, fig)
    assert_close_to_llama_cpp(fig)
