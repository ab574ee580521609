"""KV reuse, prefix cache, sessions on disk, context overflow policy, speculative decoding."""
from __future__ import annotations

import numpy as np
import pytest
from support import load_reference, needs_opencl

import localllm
from localllm.synthetic import make_random_gguf
from localllm.sampler import Sampler, SamplingParams
from localllm.speculative import DraftModel, accept_or_resample

SHAPE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128, n_ctx=256, seed=5)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("spec")
    return (make_random_gguf(d / "target.gguf", tensor_type="Q8_0", **SHAPE),
            make_random_gguf(d / "draft.gguf", tensor_type="Q4_0", output_type="Q4_0", **SHAPE))


PROMPTS = ["the cat sat on the mat", "hello world, hello", "one two three one two"]


@pytest.mark.parametrize("mode", ["self-draft", "other-draft", "lookup", "other-draft+lookup"])
def test_greedy_speculation_equals_plain_greedy(tiny_files, mode):
    _check_greedy_speculation(tiny_files, mode, "cpu")


@needs_opencl()
@pytest.mark.parametrize("mode", ["self-draft", "other-draft"])
def test_greedy_speculation_on_opencl_equals_plain_greedy(tiny_files, mode):
    """Target and draft on the OpenCL device (one backend: one context, one memory ledger); the
    draft's one-token steps are replayed there."""
    spec = _check_greedy_speculation(tiny_files, mode, "opencl")
    assert spec.draft.backend is spec.backend and spec.backend.replays > 0


def _check_greedy_speculation(tiny_files, mode: str, backend: str) -> localllm.LLM:
    target, draft = tiny_files
    plain = localllm.load(target, backend=backend)
    spec = localllm.load(target, backend=backend,
                         draft=target if mode == "self-draft" else draft if "draft" in mode else None,
                         lookup="lookup" in mode,
                         draft_p_min=0.0)     # random weights: the draft is never sure (see the p_min test)
    for prompt in PROMPTS:
        want = "".join(plain.generate(prompt, max_tokens=24, temperature=0, min_p=0))
        got = "".join(spec.generate(prompt, max_tokens=24, temperature=0, min_p=0))
        assert got == want, (mode, prompt)
        assert spec.last_stats["generated_tokens"] == plain.last_stats["generated_tokens"]
    assert spec.last_stats.get("draft_proposed", 0) >= spec.last_stats.get("draft_accepted", 0)
    if mode == "self-draft":
        assert spec.last_stats["draft_accepted"] == spec.last_stats["draft_proposed"] > 0
    return spec


def test_greedy_speculation_on_reference_prompts(smollm2_path):
    cases, _ = load_reference("smollm2-135m-q4_1")
    plain = localllm.load(smollm2_path, n_ctx=1024)
    spec = localllm.load(smollm2_path, n_ctx=1024, draft=smollm2_path, draft_p_min=0.0)
    look = localllm.load(smollm2_path, n_ctx=1024, lookup=True)
    assert spec.draft.logits(spec.tokenize("Hello")).shape[1] == 16384   # a BPE draft's head is cut by default
    for case in cases["cases"]:
        want = "".join(plain.generate(case["prompt"], max_tokens=24, temperature=0))
        assert want
        assert "".join(spec.generate(case["prompt"], max_tokens=24, temperature=0)) == want, case["prompt"][:40]
        assert spec.last_stats["draft_proposed"] > 0
        assert "".join(look.generate(case["prompt"], max_tokens=24, temperature=0)) == want, case["prompt"][:40]


def test_draft_stops_where_it_is_unsure(tiny_files, smollm2_path):
    """p_min gates drafting on the draft's probability of its whole draft, tested before each
    further draft step: random weights are never sure (one token per round at 0.5, k at 0);
    SmolLM2 drafting itself is often sure; the output is plain greedy's either way."""
    target, draft = tiny_files
    llm = localllm.load(draft)
    greedy = Sampler(SamplingParams(temperature=0))
    ids = llm.tokenize(PROMPTS[0])
    assert len(DraftModel(llm._sequence(), greedy, llm.n_vocab, p_min=0.5).propose(ids, 4)[0]) == 1
    assert len(DraftModel(llm._sequence(), greedy, llm.n_vocab, p_min=0.0).propose(ids, 4)[0]) == 4
    plain, gated = localllm.load(target), localllm.load(target, draft=draft, draft_p_min=0.5, lookup=False)
    want = "".join(plain.generate(PROMPTS[0], max_tokens=16, temperature=0, min_p=0))
    assert "".join(gated.generate(PROMPTS[0], max_tokens=16, temperature=0, min_p=0)) == want
    real = localllm.load(smollm2_path, n_ctx=512, draft=smollm2_path, draft_p_min=0.5, lookup=False,
                         draft_vocab=0)          # the whole head as stored: the draft is the target itself
    plain = localllm.load(smollm2_path, n_ctx=512)
    prompt = "The capital of France is"
    want = "".join(plain.generate(prompt, max_tokens=24, temperature=0))
    assert "".join(real.generate(prompt, max_tokens=24, temperature=0)) == want
    assert 0 < real.last_stats["draft_proposed"] == real.last_stats["draft_accepted"]


def test_trimmed_draft_head(tiny_files):
    """draft_vocab: the draft's forward computes the first N logits only (the same values as the
    whole head's first N), its proposals never lie beyond them, and greedy output is unchanged."""
    target, draft = tiny_files
    whole, spec = localllm.load(draft), localllm.load(target, draft=draft, draft_vocab=200, draft_p_min=0.0)
    ids = np.asarray(whole.tokenize(PROMPTS[1]))
    full = whole._sequence().model.forward(ids, whole._sequence().cache, all_logits=True)             # [T, 659]
    cut = spec.draft._sequence().model.forward(ids, spec.draft._sequence().cache, all_logits=True)    # [T, 200]
    assert full.shape[1] == whole.n_vocab and cut.shape == (len(ids), 200)
    np.testing.assert_array_equal(cut, full[:, :200])
    spec.draft.reset()
    tokens, _ = DraftModel(spec.draft._sequence(), Sampler(SamplingParams(temperature=0)), spec.n_vocab, 0.0).propose(
        ids.tolist(), 4)
    assert len(tokens) == 4 and max(tokens) < 200
    plain = localllm.load(target)
    for prompt in PROMPTS:
        want = "".join(plain.generate(prompt, max_tokens=24, temperature=0, min_p=0))
        assert "".join(spec.generate(prompt, max_tokens=24, temperature=0, min_p=0)) == want, prompt
    with pytest.raises(localllm.LocalLLMError, match="draft_vocab"):
        localllm.load(target, draft=draft, draft_vocab=-1)


def test_cut_draft_head_requantized(tiny_files):
    """head_rows: a Q8_0 head cut for a draft becomes Q4_0 with ggml's reference rounding of its
    float32 values (gguf-py's quantize, bit-exact with ggml); a head already as narrow (the tiny
    draft's Q4_0) or a type whose blocks do not fit the width stays as stored."""
    from gguf import GGMLQuantizationType as QT
    from gguf import quants
    from localllm.models.base import head_rows
    target, draft = tiny_files
    t = localllm.load(target)._sequence().model._head_tensor                      # Q8_0 [659, 64]
    assert t.type == QT.Q8_0
    got = head_rows(t, 200, QT.Q4_0)
    assert got.type == QT.Q4_0 and got.shape == (200,) + tuple(t.shape[1:])
    want = quants.quantize(quants.dequantize(t.data[:200], QT.Q8_0).reshape(200, -1), QT.Q4_0)
    np.testing.assert_array_equal(got.data, want)
    assert head_rows(t, 200).type == QT.Q8_0
    d = localllm.load(draft)._sequence().model._head_tensor
    kept = head_rows(d, 200, QT.Q4_0)
    assert kept.type == QT.Q4_0
    np.testing.assert_array_equal(kept.data, d.data[:200])
    assert head_rows(t, 200, QT.Q4_K).type == QT.Q8_0                              # 64 columns: no 256-blocks
    spec = localllm.load(target, draft=target, draft_vocab=200, draft_p_min=0.0)  # a Q8_0 head cut and requantized
    plain = localllm.load(target)
    for prompt in PROMPTS:
        want = "".join(plain.generate(prompt, max_tokens=24, temperature=0, min_p=0))
        assert "".join(spec.generate(prompt, max_tokens=24, temperature=0, min_p=0)) == want, prompt


def test_acceptance_rule_preserves_target_distribution():
    """Draw d ~ q, apply the rule: the emitted token is distributed as p (exactly, in theory)."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6))
    q = rng.dirichlet(np.ones(6))
    sampler = Sampler(SamplingParams(temperature=1.0, seed=1))
    n = 40000
    for dist in (q, None):
        counts = np.zeros(6)
        for _ in range(n):
            d = int(rng.choice(6, p=q)) if dist is not None else 2
            counts[accept_or_resample(p, dist, d, sampler)[1]] += 1
        assert np.abs(counts / n - p).max() < 0.015, (counts / n, p)


def test_sampled_speculation_matches_plain_distribution(tiny_files):
    """End to end with temperature: the first two generated tokens (the second one drafted and
    verified) follow the same distribution with a different-model draft, its head cut to the
    first 300 ids, as without: total variation over 400 seeded runs each, on a support of at
    most 16 pairs."""
    target, draft = tiny_files
    plain, spec = localllm.load(target), localllm.load(target, draft=draft, draft_p_min=0.0, draft_vocab=300)
    ids = plain.tokenize("the cat", add_bos=False)
    kw = dict(max_tokens=2, temperature=1.0, top_k=4, top_p=1.0, min_p=0.0)

    def pairs(llm):
        return [tuple(llm.generate(ids, seed=seed, **kw)) for seed in range(400)]

    a, b = pairs(plain), pairs(spec)
    assert spec.last_stats["draft_proposed"] > 0
    keys = set(a) | set(b)
    assert len(keys) >= 3
    tv = 0.5 * sum(abs(a.count(k) - b.count(k)) for k in keys) / 400
    assert tv < 0.15, tv


def test_second_chat_turn_evaluates_only_new_tokens(tiny_files):
    target, _ = tiny_files
    llm = localllm.load(target)
    msgs = [{"role": "user", "content": "hello there"}]
    reply = "".join(llm.chat(msgs, max_tokens=8, temperature=0))
    n_first = llm.last_stats["prompt_tokens"]
    msgs += [{"role": "assistant", "content": reply}, {"role": "user", "content": "and then?"}]
    warm = "".join(llm.chat(msgs, max_tokens=8, temperature=0))
    s = llm.last_stats
    assert s["cached_tokens"] >= n_first - 1
    assert s["evaluated_tokens"] == s["prompt_tokens"] - s["cached_tokens"]
    cold = localllm.load(target)
    assert "".join(cold.chat(msgs, max_tokens=8, temperature=0)) == warm


def test_prefix_cache_across_conversations(tiny_files):
    target, _ = tiny_files
    llm = localllm.load(target)
    a = "the quick brown fox jumps over the lazy dog " * 3
    b = "a completely different conversation about cats " * 3
    first = "".join(llm.generate(a, max_tokens=4, temperature=0))
    list(llm.generate(b, max_tokens=4, temperature=0))
    again = "".join(llm.generate(a, max_tokens=4, temperature=0))
    assert llm.last_stats["cached_tokens"] > 10
    assert again == first
    off = localllm.load(target, prefix_cache_bytes=0)
    list(off.generate(a, max_tokens=4, temperature=0))
    list(off.generate(b, max_tokens=4, temperature=0))
    list(off.generate(a, max_tokens=4, temperature=0))
    assert off.last_stats["cached_tokens"] == 0


def test_prefix_cache_is_bounded(tiny_files):
    target, _ = tiny_files
    llm = localllm.load(target, prefix_cache_bytes=40_000)
    for i in range(6):
        list(llm.generate(f"conversation number {i} " * 6, max_tokens=2, temperature=0))
    assert llm.prefix_cache.nbytes <= 40_000


def test_session_save_and_load(tiny_files, tmp_path):
    target, draft = tiny_files
    llm = localllm.load(target)
    list(llm.generate("remember this sentence please", max_tokens=6, temperature=0))
    path = tmp_path / "s.session"
    llm.save_state(path, extra={"messages": [{"role": "user", "content": "x"}]})
    assert not list(tmp_path.glob(".*tmp*"))
    cont = "".join(llm.generate(llm._sequence().cache.tokens + [7], max_tokens=6, temperature=0))
    fresh = localllm.load(target)
    assert fresh.load_state(path) == {"messages": [{"role": "user", "content": "x"}]}
    tokens = list(fresh._sequence().cache.tokens)
    assert "".join(fresh.generate(tokens + [7], max_tokens=6, temperature=0)) == cont
    assert fresh.last_stats["cached_tokens"] == len(tokens)
    other = localllm.load(draft)
    with pytest.raises(localllm.LocalLLMError, match="different model"):
        other.load_state(path)
    bad = tmp_path / "bad.session"
    bad.write_bytes(path.read_bytes()[:300])
    with pytest.raises(localllm.LocalLLMError, match="truncated or corrupt"):
        fresh.load_state(bad)


def test_context_overflow_policy(tiny_files):
    target, _ = tiny_files
    llm = localllm.load(target, n_ctx=64)
    msgs = [{"role": "system", "content": "be brief"}]
    for i in range(12):
        msgs += [{"role": "user", "content": f"question {i} about things"}, {"role": "assistant", "content": "ok fine"}]
    msgs.append({"role": "user", "content": "last one"})
    with pytest.raises(localllm.ContextOverflowError):
        list(llm.chat(msgs, max_tokens=4))
    kept = llm.fit_messages(msgs, reserve=16)
    assert kept[0] == msgs[0] and kept[-1] == msgs[-1] and len(kept) < len(msgs)
    list(llm.chat(msgs, max_tokens=4, overflow="drop_oldest"))
    assert llm.last_stats["prompt_tokens"] <= 64


def test_draft_with_other_vocabulary_is_refused(tiny_files, smollm2_path):
    target, _ = tiny_files
    with pytest.raises(localllm.LocalLLMError, match="different vocabulary"):
        localllm.load(target, draft=smollm2_path)


def test_q8_0_kv_cache_halves_memory_and_tracks_f16(tiny_files, tmp_path):
    with pytest.raises(localllm.LocalLLMError, match="divisible by 32"):
        localllm.load(tiny_files[0], backend="numpy", kv_type="q8_0")
    target = make_random_gguf(tmp_path / "hd32.gguf", **{**SHAPE, "dim": 128})
    f16 = localllm.load(target, backend="numpy")
    q8 = localllm.load(target, backend="numpy", kv_type="q8_0")
    ids = f16.tokenize("the quick brown fox jumps over the lazy dog", add_bos=False)
    a, b = f16.logits(ids), q8.logits(ids)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    assert q8._sequence().cache.nbytes < 0.6 * f16._sequence().cache.nbytes
    list(q8.generate(ids, max_tokens=3, temperature=0))
    q8.save_state(tmp_path / "q8.session")
    with pytest.raises(localllm.LocalLLMError, match="KV type"):
        f16.load_state(tmp_path / "q8.session")
    fresh = localllm.load(target, backend="numpy", kv_type="q8_0")
    fresh.load_state(tmp_path / "q8.session")
    assert fresh._sequence().cache.tokens == q8._sequence().cache.tokens
    with pytest.raises(localllm.LocalLLMError, match="kv_type"):
        localllm.load(target, backend="numpy", kv_type="q4_0")
