"""The `localllm` command as users run it (subprocesses, real entry point)."""
from __future__ import annotations

import json
import subprocess
import sys

CLI = [sys.executable, "-m", "localllm.cli"]


def run(*args: str, stdin: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def test_raw_completion_paris(smollm2_path):
    r = run("run", str(smollm2_path), "-p", "The capital of France is", "-n", "8", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(" Paris."), r.stdout
    assert "tok/s" in r.stderr  # timings go to stderr, only the completion to stdout


def test_chat_with_piped_stdin(smollm2_path):
    r = run("run", str(smollm2_path), "-n", "16", "--temp", "0", stdin="What is 2+2?\n/set temp 0\nAnd 3+3?\n")
    assert r.returncode == 0, r.stderr
    replies = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(replies) >= 2
    assert "tok/s" in r.stderr and "temperature = 0.0" in r.stderr


def test_info_json(smollm2_path):
    r = run("info", str(smollm2_path), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["architecture"] == "llama" and d["n_vocab"] == 49152
    assert d["n_ctx"] == 8192 and d["kv_budget_bytes"] > 0


def test_tokenize_ids(smollm2_path):
    r = run("tokenize", str(smollm2_path), "The capital of France is", "--ids")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["504", "3575", "282", "4649", "314"]


def test_list_shows_catalog():
    r = run("list")
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m" in r.stdout and "gemma3-270m" in r.stdout


def test_loading_does_not_copy_weights(smollm2_path):
    """Weights stay in the memory map: loading a 94 MiB file grows RSS far less than its size.
    (The reference backend; the SIMD backend repacks Q4/Q5/Q8 weights, which copies them.)"""
    code = (
        "import resource, localllm, sys\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize()\n"
        "import localllm.api\n"
        "before = rss(); llm = localllm.load(sys.argv[1], backend='numpy'); after = rss()\n"
        "print(after - before)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(smollm2_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    grown = int(r.stdout)
    assert grown < 0.4 * smollm2_path.stat().st_size, grown


def test_info_without_model_lists_supported_architectures():
    r = run("info", "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["supported_architectures"]) >= {"llama", "qwen2", "qwen3", "phi3", "gemma2",
                                                                   "gemma3"}
