"""Decode and prefill speed of the OpenCL backend on one device, against that device's own
memory-bandwidth roofline.

Reports: decode tok/s, prefill tok/s, kernel launches per decoded token, the bandwidth the
backend's copy kernel reaches (bytes read + written per second), and the fraction of it decode
reaches (device bytes of the weights read per token x tok/s / bandwidth); on NVIDIA's OpenCL
also a decode step's host enqueue time against its GPU time (which of the two sets the pace).

    python bench/bench_opencl.py MODEL.gguf -n 128 -p 512 --device 0
    python bench/bench_opencl.py --synthetic Q4_0 --json     # llama-shaped 1.17B, random weights
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

# llama-shaped 1.17B of shared/reference's speed table (bench/make_synthetic.py's default shape)
SYNTHETIC = dict(dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, ffn=5632, vocab=49152, n_ctx=2048)


def synthetic_model(qtype: str, out_dir: Path) -> Path:
    from localllm.synthetic import make_random_gguf
    return make_random_gguf(out_dir / f"synthetic-1.17b-{qtype.lower()}.gguf", tensor_type=qtype, **SYNTHETIC)


def weight_bytes_per_token(model) -> int:
    """Device bytes of every matrix a decode step multiplies (the embedding table only when tied)."""
    from localllm.backend.opencl.weights import DeviceWeight

    tied = model.w("output") is None
    return sum(w.nbytes for name, w in model.weights.items()
               if isinstance(w, DeviceWeight) and (name != "token_embd.weight" or tied))


def _cache(model, n_ctx: int):
    c = model.cfg
    return model.ops.new_kv_cache(c.n_layers, n_ctx, c.n_kv_heads, c.head_dim_k, c.head_dim_v)


def bench_prefill(model, p: int, reps: int) -> float:
    """Prefill tok/s: forward of p tokens (one chunk) on a fresh cache, best of reps."""
    ids = np.random.default_rng(0).integers(0, model.cfg.n_vocab, p)
    best = float("inf")
    for _ in range(reps + 1):                       # the first run compiles/warms the kernels
        cache = _cache(model, p + 1)
        t0 = time.perf_counter()
        model.forward(ids, cache)                   # returns host logits: the queue has drained
        best = min(best, time.perf_counter() - t0)
    return p / best


def bench_decode(model, n: int) -> tuple[float, float, float]:
    """(tok/s, kernel launches per token, host writes per token) over n single-token steps."""
    be, cache = model.ops, _cache(model, n + 9)
    for t in range(8):                              # warm-up steps, also fill a short context
        model.forward(np.array([t + 1]), cache)
        cache.tokens.append(t + 1)
    launches, writes = be.launches, be.writes
    t0 = time.perf_counter()
    for t in range(n):
        model.forward(np.array([(t * 7919) % model.cfg.n_vocab]), cache)
        cache.tokens.append(t)
    dt = time.perf_counter() - t0
    return n / dt, (be.launches - launches) / n, (be.writes - writes) / n


# NVIDIA only (inline PTX): a kernel that keeps the GPU busy while the host enqueues, and one that
# writes the GPU's clock, so that a step's kernels run back to back and their time can be read.
STEP_PROBE = """
__kernel void spin(__global float *a, int n)
{ float s = a[0]; for (int i = 0; i < n; i++) s = s * 0.999f + 1.0f; if (s == 12345.0f) a[1] = s; }
__kernel void stamp(__global ulong *t, int i)
{ ulong v; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(v)); t[i] = v; }
"""


def step_split(model, reps: int = 5) -> tuple[float, float]:
    """(host us, GPU us) of one replayed decode step: the time its launches take to enqueue, and
    the time the GPU takes to run them back to back (NVIDIA's OpenCL only). A step is host-bound
    when the first exceeds the second."""
    import ctypes
    import pyopencl as cl
    from localllm.backend.opencl import replay
    be, cache = model.ops, _cache(model, 16)
    for t in range(3):                              # records, then replays
        model.forward(np.array([t + 1]), cache)
        cache.tokens.append(t + 1)
    plan = next(iter(be._plans[cache].values()))
    prg = cl.Program(be.dev.ctx, STEP_PROBE).build()
    buf = cl.Buffer(be.dev.ctx, cl.mem_flags.READ_WRITE, 64)
    spin, t0k, t1k = cl.Kernel(prg, "spin"), cl.Kernel(prg, "stamp"), cl.Kernel(prg, "stamp")
    spin.set_args(buf, np.int32(3_000_000))
    t0k.set_args(buf, np.int32(0))
    t1k.set_args(buf, np.int32(1))
    one = (ctypes.c_size_t * 1)(1)

    def raw(k):
        return (ctypes.c_void_p(be.queue.int_ptr), ctypes.c_void_p(k.int_ptr), ctypes.c_uint(1), None, one, one,
                ctypes.c_uint(0), None, None)
    enqueue, steps, host, gpu = replay._ENQUEUE[0], plan._raw, [], []
    for _ in range(reps):
        be.queue.finish()
        for args in (raw(spin), raw(t0k)):
            enqueue(*args)
        t = time.perf_counter()
        for args in steps:
            enqueue(*args)
        host.append(time.perf_counter() - t)
        enqueue(*raw(t1k))
        stamps = np.empty(2, np.uint64)
        cl.enqueue_copy(be.queue, stamps, buf, is_blocking=True)
        gpu.append((int(stamps[1]) - int(stamps[0])) / 1e9)
    return 1e6 * min(host), 1e6 * min(gpu)


def run(path: Path, n: int, p: int, reps: int) -> dict:
    import localllm

    llm = localllm.load(path, backend="opencl", n_ctx=max(n, p) + 16)
    model, be = llm.model, llm.backend
    bandwidth = be.copy_bandwidth()
    prefill_tps = bench_prefill(model, p, reps)
    decode_tps, launches, writes = bench_decode(model, n)
    wbytes = weight_bytes_per_token(model)
    host_us, gpu_us = step_split(model) if "NVIDIA" in be.dev.dev.platform.name else (None, None)
    return {"step_host_us": host_us, "step_gpu_us": gpu_us,"model": path.name, "device": be.dev.name, "decode_tok_s": decode_tps, "prefill_tok_s": prefill_tps,
            "launches_per_token": launches, "writes_per_token": writes, "weight_bytes_per_token": wbytes,
            "copy_bandwidth_gb_s": bandwidth / 1e9, "decode_gb_s": wbytes * decode_tps / 1e9,
            "roofline_fraction": wbytes * decode_tps / bandwidth, "n": n, "p": p}


def table(r: dict) -> str:
    rows = [("device", r["device"]), ("model", r["model"]),
            (f"decode tok/s (n={r['n']})", f"{r['decode_tok_s']:.1f}"),
            (f"prefill tok/s (p={r['p']})", f"{r['prefill_tok_s']:.1f}"),
            ("kernel launches / token", f"{r['launches_per_token']:.0f}"),
            ("host writes / token", f"{r['writes_per_token']:.0f}"),
            ("weight bytes / token", f"{r['weight_bytes_per_token'] / 2**20:.1f} MiB"),
            ("copy-kernel bandwidth", f"{r['copy_bandwidth_gb_s']:.1f} GB/s"),
            ("decode weight traffic", f"{r['decode_gb_s']:.1f} GB/s"),
            ("fraction of roofline", f"{100 * r['roofline_fraction']:.1f}%")]
    if r["step_gpu_us"] is not None:
        rows += [("step: host enqueue / GPU", f"{r['step_host_us']:.0f} / {r['step_gpu_us']:.0f} us")]
    return "\n".join(["| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", type=Path, help="GGUF path (or use --synthetic)")
    ap.add_argument("--synthetic", metavar="TYPE", help="build the random-weight llama-shaped 1.17B as TYPE (Q4_0, Q8_0)")
    ap.add_argument("-n", type=int, default=128, help="decode steps")
    ap.add_argument("-p", type=int, default=512, help="prefill tokens")
    ap.add_argument("--reps", type=int, default=2, help="prefill repetitions (best is kept)")
    ap.add_argument("--device", help="OpenCL device: index or name substring (sets $LOCALLLM_OPENCL_DEVICE)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a markdown table")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device is not None:
        os.environ["LOCALLLM_OPENCL_DEVICE"] = args.device
    if (args.model is None) == (args.synthetic is None):
        ap.error("give a model path or --synthetic TYPE")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or synthetic_model(args.synthetic, Path(tmp))
        result = run(path, args.n, args.p, args.reps)
    print(json.dumps(result, indent=2) if args.json else table(result))


if __name__ == "__main__":
    main()
