"""Serving throughput: aggregate decode tok/s and time to first token with 1, 2, 4, 8 concurrent
streaming clients (each its own prompt, greedy, a fixed number of tokens) against `localllm serve`
started as a separate process (as clients would meet it), or any OpenAI-compatible server given by
--url (e.g. llama.cpp's llama-server).

    python bench/bench_serve.py [--model smollm2-135m] [--streams 1,2,4,8] [--tokens 64] [--parallel 8]
    python bench/bench_serve.py --url http://127.0.0.1:8081      # another server

Aggregate tok/s = all streamed tokens / wall time from the first request to the last reply."""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import threading
import time

import httpx

TOPICS = ["the sea", "a city at night", "mountains", "a library", "the first snow", "a train journey",
          "an old clock", "a garden in spring", "the moon", "a market", "a lighthouse", "rain"]


def one_stream(url: str, model: str, topic: str, tokens: int, out: list) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": f"Write a short story about {topic}."}],
            "max_tokens": tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, n = None, 0
    with httpx.Client(timeout=600) as http, http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                n = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and first is None:
                first = time.perf_counter() - t0
    out.append((first or 0.0, n, time.perf_counter() - t0))


def run(url: str, model: str, streams: int, tokens: int) -> dict:
    results: list = []
    threads = [threading.Thread(target=one_stream, args=(url, model, TOPICS[i % len(TOPICS)], tokens, results))
               for i in range(streams)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    total = sum(n for _, n, _ in results)
    return {"streams": streams, "tokens": total, "wall_s": wall, "aggregate_tps": total / wall,
            "ttft_median_s": statistics.median(f for f, _, _ in results),
            "ttft_max_s": max(f for f, _, _ in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="catalog name or .gguf path (in-process server)")
    ap.add_argument("--url", default=None, help="benchmark this running server instead")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--backend", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    server, url = None, args.url
    if url is None:
        cmd = [sys.executable, "-m", "localllm.cli", "serve", args.model, "--port", "0", "--ctx", "1024",
               "--parallel", str(args.parallel), "--backend", args.backend]
        server = subprocess.Popen(cmd + (["--threads", str(args.threads)] if args.threads else []),
                                  stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline()
        if "http://" not in line:
            raise SystemExit(f"the server did not start: {line!r}")
        url = line[line.index("http://"):].split()[0]
    try:
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        run(url, model, 1, 8)                                  # warm-up (compilation, caches)
        print(f"{'streams':>7} {'tokens':>6} {'wall s':>7} {'agg tok/s':>9} {'TTFT med s':>10} {'TTFT max s':>10}")
        for n in (int(s) for s in args.streams.split(",")):
            r = run(url, model, n, args.tokens)
            print(f"{r['streams']:>7} {r['tokens']:>6} {r['wall_s']:>7.2f} {r['aggregate_tps']:>9.1f} "
                  f"{r['ttft_median_s']:>10.2f} {r['ttft_max_s']:>10.2f}", flush=True)
        steps = [line for line in httpx.get(url + "/metrics").text.splitlines() if line.startswith("localllm_step")]
        if steps:
            print("server steps:", "; ".join(steps))
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
