"""`localllm bench`: its JSON keys and roofline arithmetic, and the DRAM probe's kernel."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from localllm.kernels.membw import read_xor_u64, read_xor_u64_plain
from localllm.synthetic import make_random_gguf

from support import needs_opencl


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
    assert {"decode", "prefill"} <= set(d["verdict"]) <= {"decode", "prefill", "machine"}  # machine: if busy


@needs_opencl()
def test_bench_on_opencl_holds_decode_against_the_device_memory(tmp_path):
    """A GPU's roofline is its own memory: the OpenCL backend's copy kernel, not the host's DRAM."""
    d = _bench_json(tmp_path, "--backend", "opencl")
    assert d["memory_probe"] == "device copy kernel" and d["dram_read_gbps"] > 0 and d["gen_tps"] > 0


@needs_opencl()
def test_roofline_is_the_device_copy_kernel_on_opencl_and_host_dram_otherwise(tmp_path, monkeypatch):
    """The probe decode is held against: the backend's own copy kernel where it has one (a GPU's
    memory), the host DRAM probe otherwise; never the host figure under the device's name."""
    import localllm
    import localllm.bench as bench
    model = make_random_gguf(tmp_path / "m.gguf", dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn=128,
                             tensor_type="Q4_0", output_type="Q8_0", n_ctx=128)
    monkeypatch.setattr(bench, "dram_read_gbps", lambda threads: 7.0)
    gpu = localllm.load(model, backend="opencl", n_ctx=32)
    monkeypatch.setattr(gpu.backend, "copy_bandwidth", lambda: 123e9)
    assert bench.roofline_bandwidth(gpu, 2) == (123.0, "device copy kernel")
    assert bench.roofline_bandwidth(localllm.load(model, backend="cpu", n_ctx=32), 2) == (7.0, "DRAM read")
