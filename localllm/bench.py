"""`localllm bench`: llama-bench's pp/tg measurements plus a memory roofline (DRAM, or a GPU's own).

Decoding reads every weight once per token, so its ceiling is DRAM read bandwidth divided by the
bytes streamed per token (weights + the KV cache read at that depth). We measure the bandwidth with
our own SIMD read kernel, then report how close decode gets and what bounds each phase."""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import LocalLLMError
from .generator import Sequence, Stats

PROBE_BYTES = 1 << 30        # >= 1 GiB: far beyond any cache, so the probe measures DRAM
MEMORY_BOUND = 0.5           # decode at >= half the roofline: bandwidth is what limits it
NOISY_SPREAD = 0.10          # run-to-run standard deviation above this share of the mean: figures are unsteady


def dram_read_gbps(threads: int | None = None, nbytes: int = PROBE_BYTES, repeats: int = 5) -> float:
    """Median read bandwidth of our multi-threaded SIMD read kernel over `nbytes`, in GB/s (the
    median, not the best: a virtual machine's occasional too-fast sweep would inflate the roofline)."""
    import numba

    from .kernels.membw import read_xor_u64
    if threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    a = np.ones(nbytes // 8, dtype=np.uint64)          # [n] written once so every page is resident
    read_xor_u64(a)                                     # compile / warm
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        read_xor_u64(a)
        rates.append(a.nbytes / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def weights_bytes_per_token(llm) -> int:
    """Bytes of weights a decode step reads: every matrix once, one embedding row, and the
    embedding table again when it doubles as the output projection."""
    total = 0
    for name, t in llm.gguf.tensors.items():
        if name == "token_embd.weight":
            tied = "output.weight" not in llm.gguf.tensors
            total += t.n_bytes if tied else t.n_bytes // t.shape[0]
        else:
            total += t.n_bytes
    return total


def kv_bytes_at(llm, depth: int) -> int:
    from .api import kv_bytes_per_token
    return kv_bytes_per_token(llm.model.cfg) * depth


def matmul_flops_per_token(llm) -> int:
    """2 * parameters of every matrix used per token (the embedding lookup is free)."""
    n = sum(t.n_elements for name, t in llm.gguf.tensors.items() if len(t.shape) == 2 and name != "token_embd.weight")
    if "output.weight" not in llm.gguf.tensors:
        n += llm.gguf.tensors["token_embd.weight"].n_elements
    return 2 * n


def _fresh(llm) -> Sequence:
    c = llm.model.cfg
    cache = llm.backend.new_kv_cache(c.n_layers, llm.n_ctx, c.n_kv_heads, c.head_dim_k, c.head_dim_v)
    return Sequence(llm.model, cache)


def time_prompt(llm, n: int, rng: np.random.Generator) -> float:
    """Seconds to evaluate a batch of n random tokens in a fresh context (llama-bench pp)."""
    seq = _fresh(llm)
    ids = rng.integers(0, llm.n_vocab, size=n).tolist()
    t0 = time.perf_counter()
    seq.eval_prompt(ids, Stats())
    return time.perf_counter() - t0


def time_generate(llm, n: int, rng: np.random.Generator, depth: int = 0) -> float:
    """Seconds for n single-token decode steps after `depth` context tokens (llama-bench tg)."""
    seq = _fresh(llm)
    seq.eval_prompt(rng.integers(0, llm.n_vocab, size=max(depth, 1)).tolist(), Stats())
    token = int(rng.integers(0, llm.n_vocab))
    t0 = time.perf_counter()
    for _ in range(n):
        seq.step(token)
    return time.perf_counter() - t0


@dataclass
class BenchResult:
    test: str                  # "pp512" or "tg128"
    threads: int
    tps: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tps)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.tps) if len(self.tps) > 1 else 0.0


def run_bench(llm, prompts: list[int], gens: list[int], threads: list[int], repetitions: int = 3,
              progress: bool = True) -> dict[str, Any]:
    """Every (threads, test) combination, `repetitions` times after one warm-up; plus the roofline."""
    import numba
    from tqdm import tqdm

    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]       # the 1-minute average: mostly other processes, before ours starts
    jobs = [(t, "pp", n) for t in threads for n in prompts if n > 0] + [(t, "tg", n) for t in threads for n in gens if n > 0]
    results: list[BenchResult] = []
    bar = tqdm(total=len(jobs) * (repetitions + 1), disable=not progress, desc="bench", unit="run", leave=False)
    for t, kind, n in jobs:
        numba.set_num_threads(min(t, numba.config.NUMBA_NUM_THREADS))
        res = BenchResult(f"{kind}{n}", t)
        for rep in range(repetitions + 1):
            dt = time_prompt(llm, n, rng) if kind == "pp" else time_generate(llm, n, rng)
            if rep:                      # the first run warms caches and JIT
                res.tps.append(n / dt)
            bar.update()
        results.append(res)
    bar.close()
    out = summarize(llm, results, *roofline_bandwidth(llm, max(threads)))
    out["machine"] = {"load_avg_before": load_before, "cores": os.cpu_count() or 1}
    out["verdict"] = verdicts(out)
    return out


def roofline_bandwidth(llm, threads: int) -> tuple[float, str]:
    """(GB/s, probe name) that decode is held against: a GPU's own memory through the backend's
    copy kernel, else the host DRAM read probe."""
    device = llm.backend.copy_bandwidth()
    if device is not None:
        return device / 1e9, "device copy kernel"
    return dram_read_gbps(threads), "DRAM read"


def summarize(llm, results: list[BenchResult], dram_gbps: float, probe: str = "DRAM read") -> dict[str, Any]:
    """dram_gbps: the bandwidth decode is held against, measured by `probe` (named in the output)."""
    wbytes = weights_bytes_per_token(llm)
    flops = matmul_flops_per_token(llm)
    rows = []
    for r in results:
        row = {"test": r.test, "threads": r.threads, "tps": r.mean, "tps_sd": r.sd}
        if r.test.startswith("tg"):
            n = int(r.test[2:])
            per_token = wbytes + kv_bytes_at(llm, n // 2)          # average depth over the run
            gbps = per_token * r.mean / 1e9
            row.update(bytes_per_token=per_token, gbps=gbps, roofline_fraction=gbps / dram_gbps,
                       roofline_tps=dram_gbps * 1e9 / per_token)
        else:
            row.update(gflops=flops * r.mean / 1e9)
        rows.append(row)
    out: dict[str, Any] = {"model": str(llm.path), "backend": llm.backend.name, "dram_read_gbps": dram_gbps,
                           "memory_probe": probe,
                           "weights_bytes_per_token": wbytes, "kv_bytes_per_token": kv_bytes_at(llm, 1),
                           "flops_per_token": flops, "results": rows}
    pp = [r for r in rows if r["test"].startswith("pp")]
    tg = [r for r in rows if r["test"].startswith("tg")]
    if pp:
        best = max(pp, key=lambda r: r["tps"])
        out.update(prompt_tps=best["tps"], prompt_gflops=best["gflops"])
    if tg:
        best = max(tg, key=lambda r: r["tps"])
        out.update(gen_tps=best["tps"], gen_gbps=best["gbps"], gen_roofline_fraction=best["roofline_fraction"])
    out["verdict"] = verdicts(out)
    return out


def machine_note(s: dict[str, Any]) -> str | None:
    """Why the figures may understate the machine: other processes were running (the load average
    before we started, against the cores), or runs disagreed with each other."""
    notes = []
    m = s.get("machine")
    if m and m["load_avg_before"] >= max(1.0, 0.5 * m["cores"]):
        notes.append(f"load average {m['load_avg_before']:.1f} on {m['cores']} cores before the runs")
    spread = max((r["tps_sd"] / r["tps"] for r in s["results"] if r["tps"] > 0), default=0.0)
    if spread > NOISY_SPREAD:
        notes.append(f"run-to-run spread up to {spread:.0%}")
    if not notes:
        return None
    return f"busy or unsteady machine ({'; '.join(notes)}): figures are likely low and noisy; rerun on an idle machine"


def verdicts(s: dict[str, Any]) -> dict[str, str]:
    """One line per phase: what bounds it; and a line on the machine where it was busy."""
    v = {}
    busy = machine_note(s)
    if "gen_tps" in s:
        f = s["gen_roofline_fraction"]
        v["decode"] = (f"memory-bound: {f:.0%} of the memory roofline" if f >= MEMORY_BOUND else
                       f"overhead-bound: only {f:.0%} of the memory roofline; per-token fixed costs dominate"
                       + (" (or other processes took the cores: see machine)" if busy else ""))
    if "prompt_tps" in s:
        ratio = s["prompt_tps"] / s["gen_tps"] if s.get("gen_tps") else float("inf")
        v["prefill"] = (f"compute-bound: {s['prompt_gflops']:.0f} GFLOP/s, weights reused across the batch "
                        f"({ratio:.1f}x decode speed)" if ratio >= 2 else
                        f"overhead-bound: batching gains only {ratio:.1f}x over decode")
    if busy:
        v["machine"] = busy
    return v


def markdown(s: dict[str, Any]) -> str:
    lines = [f"model: {s['model']} | backend: {s['backend']} | {s['memory_probe']}: {s['dram_read_gbps']:.1f} GB/s | "
             f"weights/token: {s['weights_bytes_per_token'] / 2**20:.1f} MiB", "",
             "| test | threads | tok/s | GB/s | roofline | GFLOP/s |", "| --- | --- | --- | --- | --- | --- |"]
    for r in s["results"]:
        gb = f"{r['gbps']:.1f}" if "gbps" in r else ""
        roof = f"{r['roofline_fraction']:.0%} of {r['roofline_tps']:.0f} tok/s" if "gbps" in r else ""
        gf = f"{r['gflops']:.1f}" if "gflops" in r else ""
        lines.append(f"| {r['test']} | {r['threads']} | {r['tps']:.1f} ± {r['tps_sd']:.1f} | {gb} | {roof} | {gf} |")
    lines += [""] + [f"{phase}: {text}" for phase, text in s["verdict"].items()]
    return "\n".join(lines)


def depth_sweep(llm, depths: list[int], n: int = 16) -> list[dict[str, float]]:
    """Decode tok/s at several context depths (for the plot)."""
    rng = np.random.default_rng(1)
    return [{"depth": d, "tps": n / time_generate(llm, n, rng, depth=d)} for d in depths]


def require_matplotlib() -> None:
    """Raise the install hint now if --plot cannot work (checked before measuring)."""
    try:
        import matplotlib
    except ImportError:
        raise LocalLLMError("--plot needs matplotlib: pip install 'localllm[plot]'") from None
    matplotlib.use("Agg")


def plot(s: dict[str, Any], sweep: list[dict[str, float]], path: str) -> None:
    """Decode tok/s against context depth, with the bandwidth ceiling at each depth."""
    require_matplotlib()
    import matplotlib.pyplot as plt
    depths = [p["depth"] for p in sweep]
    ceiling = [s["dram_read_gbps"] * 1e9 / (s["weights_bytes_per_token"] + s["kv_bytes_per_token"] * d) for d in depths]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(depths, ceiling, "k--", label=f"roofline ({s['memory_probe']}, {s['dram_read_gbps']:.0f} GB/s)")
    ax.plot(depths, [p["tps"] for p in sweep], "o-", label="localllm decode")
    ax.set_xlabel("context depth (tokens)")
    ax.set_ylabel("tokens / s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{s['model'].split('/')[-1]} ({s['backend']})")
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as e:
        raise LocalLLMError(f"cannot write the plot to {path}: {e.strerror}") from None
