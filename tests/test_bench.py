"""`localllm bench`: its JSON keys and roofline arithmetic, and the DRAM probe's kernel."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from localllm.kernels.membw import read_xor_u64, read_xor_u64_plain
from localllm.models import make_random_gguf


def test_read_kernel_matches_plain_twin():
    a = np.random.default_rng(0).integers(0, 2**63, size=100_003, dtype=np.uint64)
    assert read_xor_u64(a) == read_xor_u64_plain(a)
    assert read_xor_u64(a[:0]) == 0


def _bench_json(tmp_path, *extra: str) -> dict:
    model = make_random_gguf(tmp_path / "m.gguf", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128,
                             tensor_type="Q4_0", output_type="Q8_0", n_ctx=128)
    r = subprocess.run([sys.executable, "-m", "localllm.cli", "bench", str(model), "-p", "16", "-n", "8", "-t", "1",
                        "-r", "2", "--json", *extra], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_bench_json_keys(tmp_path):
    d = _bench_json(tmp_path)
    assert d["memory_probe"] == "DRAM read"
    for key in ("prompt_tps", "gen_tps", "dram_read_gbps", "weights_bytes_per_token", "gen_gbps",
                "gen_roofline_fraction", "prompt_gflops"):
        assert key in d and d[key] > 0, key
    tg = next(x for x in d["results"] if x["test"] == "tg8")
    assert abs(tg["gbps"] - tg["bytes_per_token"] * tg["tps"] / 1e9) < 1e-6 * tg["gbps"] + 1e-9
    assert set(d["verdict"]) == {"decode", "prefill"}


def test_bench_on_opencl_holds_decode_against_the_device_memory(tmp_path):
    """A GPU's roofline is its own memory: the OpenCL backend's copy kernel, not the host's DRAM."""
    d = _bench_json(tmp_path, "--backend", "opencl")
    assert d["memory_probe"] == "device copy kernel" and d["dram_read_gbps"] > 0 and d["gen_tps"] > 0
