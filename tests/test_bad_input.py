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
