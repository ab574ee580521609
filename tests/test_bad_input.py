"""Bad input gets one clear line and a non-zero exit (CLI) or a LocalLLMError (API): never a
traceback, a hang or a crash."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import localllm
from localllm.synthetic import make_random_gguf


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return make_random_gguf(tmp_path_factory.mktemp("bad") / "good.gguf", dim=64, n_layers=1, n_heads=4,
                            n_kv_heads=2, ffn=128, tensor_type="Q4_0", output_type="Q4_0", n_ctx=32)


def patched(src: Path, dst: Path, old: bytes, new: bytes, count: int = 1) -> Path:
    data = src.read_bytes()
    assert data.count(old) >= 1, old
    dst.write_bytes(data.replace(old, new, count))
    return dst


def _tensor_type_patch(src: Path, dst: Path, name: bytes, new_type: int) -> Path:
    """Rewrite the type id in one tensor's info record (name, n_dims, dims..., type, offset)."""
    data = bytearray(src.read_bytes())
    i = data.index(name) + len(name)
    n_dims = int.from_bytes(data[i:i + 4], "little")
    t = i + 4 + 8 * n_dims
    data[t:t + 4] = new_type.to_bytes(4, "little")
    dst.write_bytes(bytes(data))
    return dst


def cases(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    text = tmp / "notes.gguf"
    text.write_text("hello, I am not a model\n" * 10)
    trunc = tmp / "trunc.gguf"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    header_cut = tmp / "cut.gguf"
    header_cut.write_bytes(good.read_bytes()[:200])
    return {
        "not a gguf": (text, "not a GGUF"),
        "truncated data": (trunc, "past the end"),
        "truncated header": (header_cut, "truncated"),
        "missing file": (tmp / "nope.gguf", "no such file"),
        "unknown architecture": (patched(good, tmp / "arch.gguf", b"\x05\x00\x00\x00\x00\x00\x00\x00llama",
                                         b"\x05\x00\x00\x00\x00\x00\x00\x00zorro"), "unknown architecture 'zorro'"),
        "missing tensor": (patched(good, tmp / "miss.gguf", b"blk.0.ffn_up.weight", b"blk.0.ffn_xx.weight"),
                           "missing tensor 'blk.0.ffn_up.weight'"),
        "unsupported type": (_tensor_type_patch(good, tmp / "type.gguf", b"blk.0.ffn_up.weight", 20),
                             "IQ4_NL"),
    }


def _error_lines(stderr: str) -> list[str]:
    """stderr less the first-run notice ("localllm: compiling kernels…", on a cold kernel cache)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("localllm: ")]


@pytest.mark.parametrize("case", ["not a gguf", "truncated data", "truncated header", "missing file",
                                  "unknown architecture", "missing tensor", "unsupported type"])
def test_bad_file_api_and_cli(good, tmp_path, case):
    path, message = cases(good, tmp_path)[case]
    with pytest.raises(localllm.LocalLLMError, match=message):
        localllm.load(path)
    r = subprocess.run([sys.executable, "-m", "localllm.cli", "run", str(path), "-p", "hi", "-n", "1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert r.stdout == ""
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_prompt_longer_than_context(good):
    llm = localllm.load(good, n_ctx=32)
    with pytest.raises(localllm.ContextOverflowError, match="context holds 32"):
        list(llm.generate(list(range(40)), max_tokens=1))
    r = subprocess.run([sys.executable, "-m", "localllm.cli", "run", str(good), "-c", "32", "-p", "word " * 60,
                        "-n", "4"], capture_output=True, text=True, timeout=120)
    lines = _error_lines(r.stderr)
    assert r.returncode != 0 and len(lines) == 1 and "context holds 32" in lines[0], r.stderr


def test_bad_arguments_are_one_line(good):
    with pytest.raises(localllm.LocalLLMError, match="unknown backend"):
        localllm.load(good, backend="quantum")
    with pytest.raises(localllm.LocalLLMError, match="n_ctx must be at least 1"):
        localllm.load(good, n_ctx=0)


# --- hostile metadata and tensor tables (issue 15's reproducers), built with bench/fuzz_gguf.py's codec

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import fuzz_gguf as fz  # noqa: E402

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def good_doc(good) -> "fz.Doc":
    return fz.parse(good.read_bytes())


def _n_vocab(doc) -> int:
    return len(next(v for k, _, v in doc.kv if k == "tokenizer.ggml.tokens")[1])


def _dims(doc, name: str) -> list[int]:
    return next(t[1] for t in doc.tensors if t[0] == name)


HOSTILE_KV = {  # key -> (GGUF type, value, text the error must contain)
    "alignment-string": ("general.alignment", fz.STRING, "32", "general.alignment is str"),
    "alignment-nan": ("general.alignment", fz.F32, NAN, "general.alignment is float"),
    "alignment-inf": ("general.alignment", fz.F64, INF, "general.alignment is float"),
    "alignment-array": ("general.alignment", fz.ARRAY, (fz.U32, [32]), "general.alignment is an array"),
    "alignment-not-power-of-2": ("general.alignment", fz.U32, 48, "general.alignment 48"),
    "bos-string": ("tokenizer.ggml.bos_token_id", fz.STRING, "1", "bos_token_id is str"),
    "bos-inf": ("tokenizer.ggml.bos_token_id", fz.F32, INF, "bos_token_id is float"),
    "eos-array": ("tokenizer.ggml.eos_token_id", fz.ARRAY, (fz.U32, [1, 2]), "eos_token_id is an array"),
    "tokens-ints": ("tokenizer.ggml.tokens", fz.ARRAY, (fz.I32, [1, 2, 3]), "tokens is an array of int32"),
    "scores-string": ("tokenizer.ggml.scores", fz.STRING, "0.5", "scores is str"),
    "token-type-scalar": ("tokenizer.ggml.token_type", fz.I32, 1, "token_type is int"),
    "merges-scalar": ("tokenizer.ggml.merges", fz.U32, 7, "merges is int"),
    "merges-nested": ("tokenizer.ggml.merges", fz.ARRAY, (fz.ARRAY, [(fz.STRING, ["a b"])]), "merges is an array of arrays"),
    "pre-array": ("tokenizer.ggml.pre", fz.ARRAY, (fz.STRING, ["gpt2"]), "pre is an array of strings"),
    "model-array": ("tokenizer.ggml.model", fz.ARRAY, (fz.STRING, ["gpt2"]), "model is an array of strings"),
    "nested-2000": ("general.deep", fz.ARRAY, fz.nested(2000), "'general.deep' nests arrays deeper than"),
    "block-count-huge": ("llama.block_count", fz.U32, 2**32 - 1, "llama.block_count = 4294967295 is out of range"),
    "head-count-kv-huge": ("llama.attention.head_count_kv", fz.U32, 2**31, "head_count_kv = 2147483648 is out of range"),
    "rope-dims-huge": ("llama.rope.dimension_count", fz.U64, 2**40, "rope.dimension_count = 1099511627776 is out of range"),
    "key-length-negative": ("llama.attention.key_length", fz.I32, -16, "key_length = -16 is out of range"),
    "embedding-length-mismatch": ("llama.embedding_length", fz.U32, 96, "has shape"),
    "ffn-length-string": ("llama.feed_forward_length", fz.STRING, "128", "feed_forward_length is str"),
    "context-length-inf": ("llama.context_length", fz.F32, INF, "context_length is float"),
    "freq-base-string": ("llama.rope.freq_base", fz.STRING, "1e4", "freq_base is str"),
    "freq-base-nan": ("llama.rope.freq_base", fz.F32, NAN, "freq_base is float"),
    "norm-eps-zero": ("llama.attention.layer_norm_rms_epsilon", fz.F32, 0.0, "layer_norm_rms_epsilon = 0.0 is out of range"),
    "long-architecture": ("general.architecture", fz.STRING, "x" * 100_000, "unknown architecture"),
    "vocab-size-mismatch": ("llama.vocab_size", fz.U32, 7, "vocab_size = 7 but tokenizer.ggml.tokens holds"),
}


def _assert_one_line_refusal(path: Path, needle: str) -> None:
    with pytest.raises(localllm.LocalLLMError) as e:
        localllm.load(path, backend="numpy")
    message = str(e.value)
    assert needle in message and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("case", list(HOSTILE_KV))
def test_hostile_metadata_is_one_line_error(good_doc, tmp_path, case):
    key, vtype, value, needle = HOSTILE_KV[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(fz.serialize(fz.with_kv(good_doc, key, vtype, value)))
    _assert_one_line_refusal(path, needle)


def _tensor_cases(doc) -> dict[str, tuple["fz.Doc", str]]:
    n_vocab, emb = _n_vocab(doc), _dims(doc, "token_embd.weight")
    return {
        "dims-wrap-2": (fz.with_tensor(doc, "blk.0.ffn_up.weight", dims=[32, 2**64 - 1]), "past the end"),
        "dims-wrap-3": (fz.with_tensor(doc, "blk.0.ffn_up.weight", dims=[32, 3, 2**62 + 1]), "past the end"),
        "attn-q-1d": (fz.with_tensor(doc, "blk.0.attn_q.weight", dims=[64]), "'blk.0.attn_q.weight' has shape (64,)"),
        "norm-2d": (fz.with_tensor(doc, "blk.0.attn_norm.weight", dims=[32, 2]), "'blk.0.attn_norm.weight' has shape (2, 32)"),
        "embedding-short": (fz.with_tensor(doc, "token_embd.weight", dims=[emb[0], n_vocab - 1]),
                            f"'token_embd.weight' has shape ({n_vocab - 1}, 64)"),
        "long-name": (fz.with_tensor(fz.with_tensor(doc, "blk.0.ffn_up.weight", dims=[1, 1, 1, 1, 1]), "blk.0.ffn_up.weight"),
                      "has 5 dimensions"),
    }


@pytest.mark.parametrize("case", ["dims-wrap-2", "dims-wrap-3", "attn-q-1d", "norm-2d", "embedding-short", "long-name"])
def test_hostile_tensor_table_is_one_line_error(good_doc, tmp_path, case):
    doc, needle = _tensor_cases(good_doc)[case]
    if case == "long-name":  # a 100 kB tensor name is cut in the message
        doc.tensors = [["x" * 100_000 if t[0] == "blk.0.ffn_up.weight" else t[0]] + t[1:] for t in doc.tensors]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(fz.serialize(doc))
    _assert_one_line_refusal(path, needle)


def test_byte_token_must_name_its_byte(good_doc, tmp_path):
    types = list(next(v for k, _, v in good_doc.kv if k == "tokenizer.ggml.token_type")[1])
    types[100] = 6  # BYTE, on an ordinary token
    path = tmp_path / "byte.gguf"
    path.write_bytes(fz.serialize(fz.with_kv(good_doc, "tokenizer.ggml.token_type", fz.ARRAY, (fz.I32, types))))
    _assert_one_line_refusal(path, "token 100 is typed BYTE")


# --- token ids at the public entries, on every backend

def _backends() -> list[str]:
    names = ["numpy", "cpu"]
    try:
        from localllm.backend.opencl import list_devices
        if list_devices():
            names.append("opencl")
    except Exception:  # noqa: BLE001 - no pyopencl or no platform: the opencl case is left out
        pass
    return names


@pytest.mark.parametrize("backend", _backends())
def test_out_of_vocabulary_ids_are_refused(good, backend):
    llm = localllm.load(good, backend=backend, n_ctx=32)
    n = llm.n_vocab
    for bad in ([n], [-1], [1, 2, n + 10**6], [True], [1.5]):
        with pytest.raises(localllm.LocalLLMError, match="token id|integer"):
            llm.logits(bad)
        with pytest.raises(localllm.LocalLLMError, match="token id|integer"):
            llm.generate(bad, max_tokens=1)
    with pytest.raises(localllm.LocalLLMError, match="outside the vocabulary"):
        llm.detokenize([10**9])
    assert llm.logits([n - 1, 0]).shape == (2, n)  # the edges are in range


def test_out_of_vocabulary_ids_are_refused_with_a_draft(good):
    llm = localllm.load(good, backend="numpy", n_ctx=32, draft=good)
    with pytest.raises(localllm.LocalLLMError, match="outside the vocabulary"):
        list(llm.generate([llm.n_vocab], max_tokens=2))


# --- interrupted writes: kill -9 mid-write keeps the old file, and the next write sweeps the debris

_HANG_ON_RENAME = """
import os, sys, time
import localllm
from localllm.quantize import quantize_file

def hang(*a, **k):
    print("written", flush=True)
    time.sleep(600)

src, dst, what = sys.argv[1:4]
if what == "session":
    llm = localllm.load(src, backend="numpy", n_ctx=32)
    llm.logits([1, 2, 3, 4, 5])
    os.replace = hang
    llm.save_state(dst)
else:
    os.replace = hang
    quantize_file(src, dst, "Q8_0", progress=False)
"""


def _kill_mid_write(src: Path, dst: Path, what: str) -> None:
    """Run a writer that stops after writing its temporary file, before the rename; kill -9 it there."""
    p = subprocess.Popen([sys.executable, "-c", _HANG_ON_RENAME, str(src), str(dst), what],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "written"
    finally:
        p.kill()
        p.wait(timeout=30)
    assert p.returncode == -9


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_kill_during_save_state_keeps_the_old_file_and_next_save_cleans(good, tmp_path):
    llm = localllm.load(good, backend="numpy", n_ctx=32)
    llm.logits([1, 2, 3])
    session = tmp_path / "chat.session"
    llm.save_state(session, extra={"turn": 1})
    before = session.read_bytes()
    _kill_mid_write(good, session, "session")
    assert _debris(tmp_path) != [] and session.read_bytes() == before
    assert llm.load_state(session) == {"turn": 1}
    llm.save_state(session, extra={"turn": 2})
    assert _debris(tmp_path) == [] and llm.load_state(session) == {"turn": 2}


def test_kill_during_quantize_keeps_the_old_file_and_next_run_cleans(good, tmp_path):
    from localllm.quantize import quantize_file
    out = tmp_path / "q8.gguf"
    out.write_bytes(b"previous")
    _kill_mid_write(good, out, "quantize")
    assert _debris(tmp_path) != [] and out.read_bytes() == b"previous"
    quantize_file(good, out, "Q8_0", progress=False)
    assert _debris(tmp_path) == [] and localllm.load(out, backend="numpy", vocab_only=True).n_vocab > 0


def test_failed_write_leaves_no_temporary_file(good, tmp_path, monkeypatch):
    llm = localllm.load(good, backend="numpy", n_ctx=32)
    llm.logits([1, 2, 3])
    monkeypatch.setattr("numpy.savez", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        llm.save_state(tmp_path / "s.session")
    assert list(tmp_path.iterdir()) == []


def test_live_writers_temporary_files_are_kept(tmp_path):
    from localllm.atomic import remove_stale
    dst = tmp_path / "x.bin"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".x.bin.tmp-{live.pid}").write_bytes(b"in progress")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        (tmp_path / f".x.bin.tmp-{dead.stdout.strip()}").write_bytes(b"debris")
        assert [p.name for p in remove_stale(dst)] == [f".x.bin.tmp-{dead.stdout.strip()}"]
        assert _debris(tmp_path) == [f".x.bin.tmp-{live.pid}"]
    finally:
        live.kill()
        live.wait()


def test_kv_cache_beyond_available_memory_is_refused_before_allocating(good, monkeypatch):
    with pytest.raises(localllm.LocalLLMError, match=r"n_ctx=1,000,000,000,000 needs .* GiB of KV cache, more than"):
        localllm.load(good, backend="numpy", n_ctx=10**12)
    monkeypatch.setenv("LOCALLLM_KV_BUDGET", "lots")
    with pytest.raises(localllm.LocalLLMError, match=r"LOCALLLM_KV_BUDGET must be an integer"):
        localllm.load(good, backend="numpy")


def test_keys_named_after_a_long_architecture_are_cut(good_doc, tmp_path):
    arch = "x" * 5000
    doc = fz.with_kv(fz.with_kv(good_doc, "general.architecture", fz.STRING, arch), f"{arch}.vocab_size", fz.F32, -1.0)
    path = tmp_path / "arch-key.gguf"
    path.write_bytes(fz.serialize(doc))
    _assert_one_line_refusal(path, "chars) is float -1.0, expected an integer")
