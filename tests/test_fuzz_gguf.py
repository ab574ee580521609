"""The GGUF fuzzer in CI: a fixed seed, a bounded number of mutated files, each loaded and run in a
forked child under time and memory limits. Every case must load and run or end in a LocalLLMError.
The long run is `python bench/fuzz_gguf.py --cases 100000`."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
import fuzz_gguf as fz  # noqa: E402

CI_CASES, CI_SEED = 300, 20260415


def test_fuzzed_files_only_load_or_raise_local_llm_error():
    res = fz.fuzz(CI_CASES, CI_SEED, workers=2)
    counts = res["counts"]
    assert res["failures"] == [], res["failures"][:3]
    assert sum(counts.values()) == CI_CASES
    assert counts["ok"] > 0 and counts["refused"] > 0, counts   # both outcomes are exercised


@pytest.mark.parametrize("behaviour, kind", [("segfault", "crash"), ("raise", "error"), ("oom", "error")])
def test_the_harness_reports_what_it_looks_for(tmp_path, monkeypatch, behaviour, kind):
    def bad(path: str, backend: str) -> None:
        if behaviour == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if behaviour == "raise":
            raise ValueError("not a LocalLLMError")
        bytearray(8 << 30)   # past the child's memory limit: MemoryError

    monkeypatch.setattr(fz, "_exercise", bad)
    assert fz.run_case(b"GGUF", str(tmp_path), "numpy", "t")[0] == kind
    assert list(tmp_path.iterdir()) == []
