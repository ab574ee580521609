"""What interleaving costs: two streams on one LLM advanced token by token in turn (each switch
parks one stream's K/V and restores the other's) against the same two run one after the other.

    python bench/bench_interleaved_streams.py [--model smollm2-135m] [--words 40] [--tokens 32] [--runs 2]

Prints the wall time of each run, alternating serial and interleaved, and whether the texts agree."""
from __future__ import annotations

import argparse
import itertools
import time

import localllm


def serial(llm, prompts: list[list[int]], n: int) -> list[str]:
    return ["".join(llm.generate(p, max_tokens=n, temperature=0)) for p in prompts]


def interleaved(llm, prompts: list[list[int]], n: int) -> list[str]:
    streams = [llm.generate(p, max_tokens=n, temperature=0) for p in prompts]
    outs = [""] * len(prompts)
    for pieces in itertools.zip_longest(*streams, fillvalue=""):
        outs = [o + piece for o, piece in zip(outs, pieces)]
    return outs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--words", type=int, default=40, help="repeats of a 10-word sentence per prompt")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    llm = localllm.load(args.model, n_ctx=2048, prefix_cache_bytes=0)
    sentence = "Once upon a time in a small village there lived "
    prompts = [llm.tokenize(f"Story {i}. " + sentence * args.words) for i in range(2)]
    print(f"{args.model}: prompts of {len(prompts[0])} tokens, {args.tokens} generated each")
    reference = serial(llm, prompts, args.tokens)            # warm-up
    for _ in range(args.runs):
        for name, fn in (("serial", serial), ("interleaved", interleaved)):
            t0 = time.perf_counter()
            same = fn(llm, prompts, args.tokens) == reference
            print(f"{name:<12} {time.perf_counter() - t0:6.2f} s   same texts: {same}")


if __name__ == "__main__":
    main()
