"""The API on tiny random-weight models: invariants of the KV cache and generation, every tensor
type, library manners. Real-model agreement with llama.cpp lives in test_reference_models.py."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import localllm
from localllm.generator import Sequence, Stats
from localllm.synthetic import make_random_gguf

TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K"]


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    return make_random_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", dim=64, n_layers=2, n_heads=4,
                            n_kv_heads=2, ffn=128, tensor_type="Q8_0", n_ctx=256)


@pytest.fixture(scope="session")
def tiny(tiny_path):
    return localllm.load(tiny_path)


IDS = [5, 17, 99, 3, 250, 42, 42, 7, 180, 64, 11, 300]


def test_prefill_equals_single_decodes(tiny):
    batch = tiny.logits(IDS)                                   # [T, vocab]
    seq = Sequence(tiny.model, tiny.backend.new_kv_cache(2, 64, 2, 16, 16))
    steps = [seq.eval_prompt(IDS[:1], Stats())] + [seq.step(t) for t in IDS[1:]]
    np.testing.assert_allclose(np.stack(steps), batch, rtol=0, atol=1e-4)


def test_prefill_in_chunks_equals_one_batch(tiny, monkeypatch):
    import localllm.generator as g
    whole = tiny.logits(IDS)
    monkeypatch.setattr(g, "PREFILL_CHUNK", 5)
    np.testing.assert_allclose(tiny.logits(IDS), whole, rtol=0, atol=1e-4)


def test_reused_cache_equals_cold_run(tiny_path, tiny):
    """A second prompt extending the first evaluates only the new tokens, with the same output."""
    first = IDS[:8]
    tiny.reset()
    list(tiny.generate(first, max_tokens=4, temperature=0))
    assert tiny.last_stats["cached_tokens"] == 0
    second = IDS[:8] + [9, 10, 11]
    warm = "".join(tiny.generate(second, max_tokens=6, temperature=0))
    assert tiny.last_stats["cached_tokens"] == 8
    assert tiny.last_stats["evaluated_tokens"] == 3
    cold_llm = localllm.load(tiny_path)
    cold = "".join(cold_llm.generate(second, max_tokens=6, temperature=0))
    assert warm == cold
    assert cold_llm.last_stats["cached_tokens"] == 0


def test_seeded_sampling_is_reproducible(tiny):
    a = "".join(tiny.generate("hello world", max_tokens=12, temperature=1.0, seed=7))
    b = "".join(tiny.generate("hello world", max_tokens=12, temperature=1.0, seed=7))
    assert a == b
    stats = tiny.last_stats
    for key in ("prompt_tokens", "cached_tokens", "evaluated_tokens", "generated_tokens", "prompt_tps", "gen_tps"):
        assert key in stats


def test_max_tokens_and_stop_reason(tiny):
    list(tiny.generate("hello", max_tokens=5, temperature=0, min_p=0))
    assert tiny.last_stats["generated_tokens"] <= 5
    assert tiny.last_stats["stop_reason"] in ("length", "eog")


def test_generation_stops_at_context_end(tiny_path):
    llm = localllm.load(tiny_path, n_ctx=16)
    list(llm.generate(IDS[:10], max_tokens=-1, temperature=0))
    assert llm.last_stats["stop_reason"] in ("context", "eog")
    # the last token is sampled from the logits at position 15 and never needs a cache row itself
    assert llm.last_stats["prompt_tokens"] + llm.last_stats["generated_tokens"] <= 16 + 1


@pytest.mark.parametrize("ttype", TYPES)
def test_every_tensor_type_runs_close_to_f32(tmp_path, ttype):
    """Same random weights stored in each type: logits track the F32 file's within the type's noise."""
    shape = dict(dim=256, n_layers=1, n_heads=4, n_kv_heads=2, ffn=256, n_ctx=64, seed=3)
    ref = localllm.load(make_random_gguf(tmp_path / "f32.gguf", tensor_type="F32", output_type="F32", **shape))
    llm = localllm.load(make_random_gguf(tmp_path / f"{ttype}.gguf", tensor_type=ttype, output_type=ttype, **shape))
    a, b = ref.logits(IDS), llm.logits(IDS)
    assert np.all(np.isfinite(b))
    rel = np.abs(a - b).mean() / np.abs(a).mean()
    budget = {"F32": 1e-6, "F16": 1e-3, "BF16": 1e-2, "Q8_0": 0.02}.get(ttype, 0.25)
    assert rel < budget, (ttype, rel)


def test_library_writes_nothing_to_stdout(tiny, capfd):
    list(tiny.generate("hello", max_tokens=3, temperature=0))
    tiny.logits(IDS[:3])
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_usable_from_a_worker_thread(tiny):
    results = []

    def work():
        results.append("".join(tiny.generate("hello", max_tokens=4, temperature=0)))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]


def test_vocab_only_has_tokenizer_but_no_weights(tiny_path):
    llm = localllm.load(tiny_path, vocab_only=True)
    assert llm.detokenize(llm.tokenize("hello world", add_bos=False)) == "hello world"
    with pytest.raises(localllm.LocalLLMError, match="vocab_only"):
        llm.logits([1, 2])


def test_info_reports_context_and_memory(tiny):
    d = tiny.info()
    assert d["architecture"] == "llama" and d["n_ctx"] == 256 and d["n_ctx_train"] == 256
    assert d["kv_cache_bytes"] == d["kv_bytes_per_token"] * d["n_ctx"]
    assert d["kv_budget_bytes"] > 0


def test_default_context_capped_by_kv_budget(tiny_path):
    llm = localllm.load(tiny_path, kv_budget=300 * (2 * 2 * 32 * 2))   # room for 300 tokens, floor 256
    assert llm.n_ctx == 256
    small = localllm.load(tiny_path, kv_budget=1)
    assert small.n_ctx == 256  # never below 256, never above the trained length


def test_chat_renders_template_and_reuses_cache(tiny):
    msgs = [{"role": "user", "content": "hi"}]
    reply = "".join(tiny.chat(msgs, max_tokens=4, temperature=0))
    msgs2 = msgs + [{"role": "assistant", "content": reply}, {"role": "user", "content": "more"}]
    list(tiny.chat(msgs2, max_tokens=4, temperature=0))
    assert tiny.last_stats["cached_tokens"] > 0
