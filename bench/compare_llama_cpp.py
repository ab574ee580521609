"""Decode (tg) and prefill (pp) speed of localllm against llama.cpp on the same GGUF files.

    python bench/compare_llama_cpp.py [--threads 2] [--tg 128] [--pp 512] [--reps 3] [MODEL.gguf ...]

llama.cpp runs through llama-cpp-python in its own virtualenv (LLAMACPP_PYTHON, default
/work/llamacpp-venv/bin/python), localllm through this interpreter; each measurement is a fresh
subprocess, and the two engines alternate rep by rep so that a shared machine's load hits both
alike. Decode: tg single-token evals after a short prompt; prefill: one pp-token eval. Both
report the best rep (the least disturbed one) and print a markdown table with the ratios.
When llama.cpp cannot be run, its columns say so and only localllm is measured."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HOME = Path.home() / ".cache/localllm"
DEFAULT_MODELS = [HOME / "synthetic/smollm2-135m-q4_0.gguf", HOME / "synthetic/smollm2-135m-q8_0.gguf",
                  HOME / "models/smollm2-135m.gguf", HOME / "synthetic/smollm2-135m-f16.gguf",
                  HOME / "models/gemma3-270m.gguf", HOME / "synthetic/llama-1.17b-q4_0.gguf"]
LLAMACPP_PYTHON = os.environ.get("LLAMACPP_PYTHON", "/work/llamacpp-venv/bin/python")

# Both runners print one JSON line: {"decode": tok/s, "prefill": tok/s, ...}. Token ids are
# arbitrary in-vocabulary ids: speed does not depend on them.
LLAMACPP_RUNNER = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, tg, pp, what = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=max(pp, tg + 8) + 16,
            n_batch=max(pp, 8), n_ubatch=max(pp, 8), verbose=False)
ids = [(7 * i + 100) % llm.n_vocab() for i in range(max(pp, tg + 8))]
out = {}
if "decode" in what:
    llm.reset(); llm.eval(ids[:4])
    t = time.perf_counter()
    for i in range(tg):
        llm.eval([ids[4 + i]])
    out["decode"] = tg / (time.perf_counter() - t)
if "prefill" in what:
    llm.reset(); llm.eval(ids[:8])                     # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids[:pp])
    out["prefill"] = pp / (time.perf_counter() - t)
print(json.dumps(out))
"""

LOCALLLM_RUNNER = r"""
import json, sys, time
import numpy as np
path, threads, tg, pp, what = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
t0 = time.perf_counter()
from localllm.models import model_class
from localllm.backend import get_backend
from localllm.gguf_file import GGUFFile
gguf = GGUFFile(path)
cls = model_class(gguf.architecture)
ops = get_backend("cpu", threads=threads)
model = cls(gguf, cls.config(gguf.metadata), ops)
c = model.cfg

def forward(toks, cache):
    out = model.forward(toks, cache)
    cache.tokens.extend(int(t) for t in toks)
    return out

def new_cache(n):
    return ops.new_kv_cache(c.n_layers, n, c.n_kv_heads, c.head_dim_k, c.head_dim_v)
ids = np.array([(7 * i + 100) % c.n_vocab for i in range(max(pp, tg + 8))], dtype=np.int64)
cache = new_cache(max(pp, tg + 8) + 16)
forward(ids[:1], cache)
out = {"first_token_s": time.perf_counter() - t0}
out["path"] = model.step_path
if "decode" in what:
    cache.trim(0); forward(ids[:4], cache)
    t = time.perf_counter()
    for i in range(tg):
        forward(ids[4 + i:5 + i], cache)
    out["decode"] = tg / (time.perf_counter() - t)
if "prefill" in what:
    cache.trim(0); forward(ids[:8], cache)              # warm-up (compiles the T > 1 paths)
    cache.trim(0)
    t = time.perf_counter()
    forward(ids[:pp], cache)
    out["prefill"] = pp / (time.perf_counter() - t)
print(json.dumps(out))
"""


def run(python: str, runner: str, model: Path, threads: int, tg: int, pp: int, what: str,
        timeout: float = 900, env: dict | None = None) -> dict | str:
    """One measurement in a fresh process: its JSON, or why there is none (str)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(env or {}))
    try:
        p = subprocess.run([python, "-c", runner, str(model), str(threads), str(tg), str(pp), what],
                           capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return f"exit {p.returncode}: {(p.stderr or p.stdout).strip().splitlines()[-1:] or ''}"
    return json.loads(lines[-1])


def llamacpp_status() -> str | None:
    """None if llama-cpp-python imports in LLAMACPP_PYTHON, else why not."""
    if not Path(LLAMACPP_PYTHON).exists():
        return f"llama.cpp ABSENT: no interpreter at {LLAMACPP_PYTHON} (set LLAMACPP_PYTHON)"
    p = subprocess.run([LLAMACPP_PYTHON, "-c", "import llama_cpp"], capture_output=True, text=True)
    if p.returncode:
        return f"llama.cpp ABSENT: `import llama_cpp` fails in {LLAMACPP_PYTHON}: {p.stderr.strip().splitlines()[-1:]}"
    return None


def ensure_models(models: list[Path]) -> list[Path]:
    """Make the SmolLM2 Q4_0 / Q8_0 / F16 files from the Q4_1 original when they are missing."""
    have = []
    for m in models:
        if not m.exists() and m.name.startswith("smollm2-135m-"):
            src = HOME / "models/smollm2-135m.gguf"
            qtype = m.stem.rsplit("-", 1)[-1].upper()
            try:
                from localllm.quantize import quantize_file
                m.parent.mkdir(parents=True, exist_ok=True)
                print(f"making {m} ({qtype}) from {src} ...", file=sys.stderr)
                quantize_file(src, m, qtype, progress=False)
            except Exception as e:  # noqa: BLE001 - a missing input is reported, not fatal
                print(f"skipping {m}: {type(e).__name__}: {e}", file=sys.stderr)
        if m.exists():
            have.append(m)
        else:
            print(f"skipping {m}: missing", file=sys.stderr)
    return have


def best(results: list, key: str) -> float | None:
    vals = [r[key] for r in results if isinstance(r, dict) and key in r]
    return max(vals) if vals else None


def fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}×"


def startup(args) -> None:
    """Cold: a fresh NUMBA_CACHE_DIR (every kernel compiles); warm: the same directory again."""
    import tempfile
    models = [m.expanduser() for m in args.models] or [HOME / "models/smollm2-135m.gguf"]
    print("| model | cold s (empty Numba cache) | warm s | warm s (again) |\n|---|---|---|---|")
    for m in models:
        with tempfile.TemporaryDirectory() as d:
            times = [run(sys.executable, LOCALLLM_RUNNER, m, args.threads, 0, 0, "", env={"NUMBA_CACHE_DIR": d})
                     for _ in range(3)]
        cells = [f"{t['first_token_s']:.2f}" if isinstance(t, dict) else t for t in times]
        print(f"| {m.name} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--what", default="decode,prefill", help="decode, prefill or both (comma-separated)")
    ap.add_argument("--startup", action="store_true",
                    help="only time load + first token of localllm: cold (empty Numba cache) and warm")
    args = ap.parse_args()
    if not args.what or not set(args.what.split(",")) <= {"decode", "prefill"}:
        ap.error(f"--what: expected decode, prefill or decode,prefill, not {args.what!r}")
    if args.startup:
        startup(args)
        return
    models = ensure_models([m.expanduser() for m in args.models] or DEFAULT_MODELS)
    absent = llamacpp_status()
    if absent:
        print(f"**{absent}** — localllm alone is measured.\n")
    rows = []
    for m in models:
        ours, theirs = [], []
        for rep in range(args.reps):
            if not absent:
                theirs.append(run(LLAMACPP_PYTHON, LLAMACPP_RUNNER, m, args.threads, args.tg, args.pp, args.what))
            ours.append(run(sys.executable, LOCALLLM_RUNNER, m, args.threads, args.tg, args.pp, args.what))
            print(f"{m.name} rep {rep}: localllm {ours[-1]}" + ("" if absent else f" | llama.cpp {theirs[-1]}"),
                  file=sys.stderr)
        rows.append((m, ours, theirs))
    lc = "llama.cpp" if not absent else "llama.cpp (absent)"
    print(f"threads {args.threads}, tg{args.tg} / pp{args.pp}, best of {args.reps} alternating reps\n")
    print(f"| model | localllm tg tok/s | {lc} tg tok/s | tg ratio | localllm pp tok/s | {lc} pp tok/s | pp ratio |"
          f" localllm path |")
    print("|---|---|---|---|---|---|---|---|")
    for m, ours, theirs in rows:
        od, td, op, tp = best(ours, "decode"), best(theirs, "decode"), best(ours, "prefill"), best(theirs, "prefill")
        path = next((r["path"] for r in ours if isinstance(r, dict) and "path" in r), str(ours[-1]) if ours else "")
        print(f"| {m.name} | {fmt(od)} | {fmt(td)} | {ratio(od, td)} | {fmt(op)} | {fmt(tp)} | {ratio(op, tp)} | {path} |")
    errs = [(m.name, r) for m, ours, theirs in rows for r in ours + theirs if isinstance(r, str)]
    for name, e in errs:
        print(f"\n{name}: a run failed: {e}")


if __name__ == "__main__":
    main()
