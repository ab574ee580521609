"""The quantizer against llama-quantize: the exact bytes of llama.cpp's SmolLM2 Q8_0 / Q4_0
files, llama.cpp's per-tensor type rules, the metadata it writes, and safe writing."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from support import REFERENCE, load_reference
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants

import localllm
import localllm.quantize as quantize_mod
from localllm.errors import LocalLLMError
from localllm.gguf_file import GGUFFile
from localllm.quantize import QuantizeError, quantize_file, quantize_q6_k

# Whole-file sha256 prefixes from tests/data/reference/README.md: equal prefixes mean equal metadata
# order and layout too, not only equal tensors.
FILE_SHA_PREFIX = {"q8_0": "7b46609d", "q4_0": "aa4256f3"}


def _sha(data: np.ndarray | bytes) -> str:
    return hashlib.sha256(data if isinstance(data, bytes) else data.tobytes()).hexdigest()


@pytest.fixture(scope="module")
def smollm2_f32(smollm2_path, tmp_path_factory) -> Path:
    """SmolLM2 with every tensor dequantized to float32 (`d * q + m`): the input of llama.cpp's
    reference Q8_0 / Q4_0 files."""
    dst = tmp_path_factory.mktemp("f32") / "smollm2-f32.gguf"
    quantize_file(smollm2_path, dst, "F32", progress=False)
    return dst


@pytest.fixture(scope="module")
def quantized(smollm2_f32, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("quantized")
    return {t: quantize_file(smollm2_f32, out / f"smollm2-{t}.gguf", t, progress=False)["dst"]
            for t in ("q8_0", "q4_0")}


def test_f32_file_is_the_exact_dequantization(smollm2_path, smollm2_f32):
    src, f32 = GGUFFile(smollm2_path), GGUFFile(smollm2_f32)
    assert sorted(src.tensors) == sorted(f32.tensors)
    for name, t in src.tensors.items():
        out = f32.tensors[name]
        assert out.type == Q.F32 and out.shape == t.shape
        assert np.array_equal(out.data.view(np.float32).reshape(t.shape),
                              quants.dequantize(t.data, t.type).reshape(t.shape)), name


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0"])
def test_tensors_match_llama_quantize_byte_for_byte(quantized, qtype):
    with open(REFERENCE / "smollm2-135m-quantized-tensor-sha256.json") as f:
        ref = json.load(f)[qtype]
    g = GGUFFile(quantized[qtype])
    assert list(g.tensors) == list(ref)  # llama.cpp's tensor order
    for name, t in g.tensors.items():
        assert (t.type.name, _sha(t.data)) == (ref[name]["type"], ref[name]["sha256"]), name
    with open(quantized[qtype], "rb") as f:
        assert _sha(f.read()).startswith(FILE_SHA_PREFIX[qtype])


@pytest.mark.parametrize("qtype, ftype", [("q8_0", 7), ("q4_0", 2)])
def test_metadata_copied_and_file_type_set(smollm2_path, quantized, qtype, ftype):
    src, out = GGUFFile(smollm2_path).metadata, GGUFFile(quantized[qtype]).metadata
    assert out["general.file_type"] == ftype
    assert out["general.quantization_version"] == 2
    # like gguf_set_val_u32, llama.cpp moves the two keys it sets to the end
    assert list(out)[-2:] == ["general.quantization_version", "general.file_type"]
    assert sorted(out) == sorted(src)
    for key, value in src.items():
        if key != "general.file_type":
            assert np.array_equal(out[key], value) if isinstance(value, np.ndarray) else out[key] == value, key


def test_quantized_model_runs_like_llama_cpps_q8_0(quantized):
    """Our Q8_0 file, run by our runtime, against llama.cpp running its own Q8_0 file (the short
    cases of tests/data/reference; the long one would take a minute)."""
    cases, npz = load_reference("smollm2-135m-q8_0")
    llm = localllm.load(quantized["q8_0"], n_ctx=256)
    try:
        agree = total = 0
        for i, case in enumerate(cases["cases"][:-1]):
            logits = llm.logits(case["prompt_tokens"] + case["greedy_tokens"])
            assert np.isfinite(logits).all()
            agree += int((logits.argmax(-1) == npz[f"top10_ids_{i}"][:, 0]).sum())
            total += len(logits)
        last = llm.logits(cases["cases"][0]["prompt_tokens"])[-1]
    finally:
        llm.close()
    assert agree / total >= 0.95
    assert np.abs(last - npz["last_logits_0"]).mean() < 0.3


def _tiny_gguf(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    w = GGUFWriter(path, "llama")
    w.add_uint32("general.file_type", 0)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _types(path: Path) -> dict[str, str]:
    return {n: t.type.name for n, t in GGUFFile(path).tensors.items()}


def _tiny_llama(path: Path, tied: bool) -> Path:
    """A one-layer llama with n_embd 256, so that llama.cpp gives its output matrix Q6_K."""
    rng = np.random.default_rng(7)
    w = GGUFWriter(path, "llama")
    for key, value in (("block_count", 1), ("context_length", 64), ("embedding_length", 256),
                       ("feed_forward_length", 512), ("attention.head_count", 4), ("attention.head_count_kv", 2),
                       ("rope.dimension_count", 64)):
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(64)])
    w.add_array("tokenizer.ggml.merges", ["t 0"])

    def r(*shape: int) -> np.ndarray:  # rows at different scales
        return (rng.standard_normal(shape) * rng.uniform(0.01, 0.1, (shape[0], 1))).astype(np.float32)

    tensors = {"token_embd.weight": r(64, 256), "blk.0.attn_norm.weight": np.ones(256, np.float32),
               "blk.0.attn_q.weight": r(256, 256), "blk.0.attn_k.weight": r(128, 256),
               "blk.0.attn_v.weight": r(128, 256), "blk.0.attn_output.weight": r(256, 256),
               "blk.0.ffn_norm.weight": np.ones(256, np.float32), "blk.0.ffn_gate.weight": r(512, 256),
               "blk.0.ffn_up.weight": r(512, 256), "blk.0.ffn_down.weight": r(256, 512),
               "output_norm.weight": np.ones(256, np.float32)}
    if not tied:
        tensors["output.weight"] = r(64, 256)
    for name, a in tensors.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# sha256 of the whole files llama_model_quantize (llama-cpp-python 0.3.36) wrote from _tiny_llama
TINY_LLAMA_CPP = [
    (False, "q4_0", "Q6_K", "c275c98654af051bc278e77a5bc4f4c904a5b798af31743dee5a3292713196a2"),
    (False, "q4_1", "Q6_K", "ecc34ef5c2c1f49bc912196708c10e8d4e8deffce55967e694fd5bbc9b6e73d8"),
    (False, "q5_0", "Q6_K", "5068f788795a714f432b5266b19853071eed3f7ba76209bef8d560909dc4a28a"),
    (False, "q5_1", "Q6_K", "2c84c1ce70a54367653684d7737d68d8c5f21019bacbc83741d37f42fff34beb"),
    (False, "q8_0", "Q8_0", "60fba89c161e1c48a920d366cab0a745ac443db357c66a7b5992fc20e31575c3"),
    (False, "f16", "F16", "6b834b851362500c630a186771af534a0879af19c82c72470497766d878ec5cd"),
    (False, "bf16", "BF16", "e0f034c1cb08b4dac98cec7fc34b24c11a758f8d12e0c992d56450736e7fd570"),
    (True, "q4_0", "Q6_K", "50f02e6aec728c0b38fd00a2d196149fd9cd8cbfaee192ac210dca044b162aa8"),
    (True, "q5_1", "Q6_K", "966d0afeae1f82e552489c14a1135b3956a8a6e46b58a191f217042b5e5cf702"),
    (True, "q8_0", "Q8_0", "1bb21dccb1045e393d0514fb1d614480d3e6b476fb21b93671ca1f7c02408922"),
]


@pytest.mark.parametrize("tied, qtype, output_type, sha", TINY_LLAMA_CPP,
                         ids=[f"{'tied' if t else 'untied'}-{q}" for t, q, _, _ in TINY_LLAMA_CPP])
def test_whole_file_matches_llama_quantize(tmp_path, tied, qtype, output_type, sha):
    """Every rule at once: Q6_K output (or tied embeddings) with ggml's Q6_K bytes, norms kept F32,
    tensor order, metadata order, alignment."""
    dst = tmp_path / "out.gguf"
    quantize_file(_tiny_llama(tmp_path / "tiny.gguf", tied), dst, qtype, progress=False)
    types = _types(dst)
    assert types["output_norm.weight"] == "F32"
    assert types["token_embd.weight" if tied else "output.weight"] == output_type
    assert _sha(dst.read_bytes()) == sha


def test_row_length_without_a_fallback_is_refused(tmp_path):
    src = _tiny_gguf(tmp_path / "odd.gguf", {"blk.0.ffn_up.weight": np.ones((4, 48), np.float32)})
    with pytest.raises(QuantizeError, match="not a multiple of Q4_0's block of 32"):
        quantize_file(src, tmp_path / "out.gguf", "Q4_0", progress=False)
    assert not (tmp_path / "out.gguf").exists()
    quantize_file(src, tmp_path / "out.gguf", "F16", progress=False)  # no blocks, no problem
    assert _types(tmp_path / "out.gguf") == {"blk.0.ffn_up.weight": "F16"}


def test_q6_k_matches_ggml_reference():
    """sha256 of quantize_row_q6_K_ref's output (ggml-quants.c, compiled without FMA contraction as
    ggml-base is) on this input: zero super-block, zero group, sparse and tiny rows included."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    x[0, :256] = 0
    x[1, :16] = 0
    x[2] *= rng.random(512) < 0.1
    x[3] *= 1e-3
    q = quantize_q6_k(x)
    assert _sha(q) == "3bc992079e2d747fca43b53a08e617b0416da668adc61a88d8342824a8cb29f2"
    back = quants.dequantize(q, Q.Q6_K)
    assert np.abs(back - x).mean() < 0.03 * np.abs(x).mean()


def test_interrupted_run_leaves_dst_untouched(smollm2_path, tmp_path, monkeypatch):
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"previous contents")
    real, calls = quantize_mod._convert, []

    def failing(plan):
        calls.append(plan)
        if len(calls) == 20:
            raise KeyboardInterrupt
        return real(plan)

    monkeypatch.setattr(quantize_mod, "_convert", failing)
    with pytest.raises(KeyboardInterrupt):
        quantize_file(smollm2_path, dst, "Q8_0", progress=False)
    assert dst.read_bytes() == b"previous contents"
    assert os.listdir(tmp_path) == ["out.gguf"]  # no temporary file left behind


def test_refuses_to_overwrite_its_input(smollm2_path, tmp_path):
    with pytest.raises(QuantizeError, match="is the input"):
        quantize_file(smollm2_path, smollm2_path, "Q8_0", progress=False)
    link = tmp_path / "link.gguf"
    link.symlink_to(smollm2_path)
    with pytest.raises(QuantizeError, match="is the input"):
        quantize_file(smollm2_path, link, "Q8_0", progress=False)
    assert link.resolve() == Path(smollm2_path).resolve()


def test_bad_requests_are_one_line_errors(smollm2_path, tmp_path):
    with pytest.raises(QuantizeError, match="unknown quantization type 'Q3_X'"):
        quantize_file(smollm2_path, tmp_path / "x.gguf", "Q3_X")
    with pytest.raises(LocalLLMError, match="cannot open"):
        quantize_file(tmp_path / "missing.gguf", tmp_path / "x.gguf", "Q8_0")
    (tmp_path / "text.gguf").write_text("not a model at all, just some text")
    with pytest.raises(LocalLLMError, match="not a GGUF"):
        quantize_file(tmp_path / "text.gguf", tmp_path / "x.gguf", "Q8_0")
    with pytest.raises(QuantizeError, match="cannot write"):
        quantize_file(smollm2_path, tmp_path / "no" / "such" / "dir.gguf", "Q8_0", progress=False)


def test_requantizing_is_reported(smollm2_path, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="localllm.quantize"):
        stats = quantize_file(smollm2_path, tmp_path / "q8.gguf", "Q8_0", progress=False)
    assert stats["requantized_from"] == ["Q4_1"]  # token_embd is already Q8_0: copied as is
    assert "requantizing from Q4_1" in caplog.text
    assert stats["tensor_types"] == {"F32": 61, "Q8_0": 211}


def test_cli_reports_one_line(tmp_path):
    from click.testing import CliRunner

    from localllm.cli_tools import quantize_cmd
    src = _tiny_gguf(tmp_path / "tiny.gguf", {"blk.0.ffn_up.weight": np.ones((4, 64), np.float32)})
    bad = CliRunner().invoke(quantize_cmd, [str(src), str(tmp_path / "out.gguf"), "Q9_9"])
    assert bad.exit_code == 1
    assert bad.stderr.startswith("error: unknown quantization type") and bad.stderr.count("\n") == 1
    ok = CliRunner().invoke(quantize_cmd, [str(src), str(tmp_path / "out.gguf"), "q4_1", "--quiet"])
    assert ok.exit_code == 0, ok.stderr
    assert "1 Q4_1" in ok.stderr and _types(tmp_path / "out.gguf") == {"blk.0.ffn_up.weight": "Q4_1"}
