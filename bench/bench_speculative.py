"""Speculative decoding speed-ups, greedy, measured alternately in one run:

  * draft model: SmolLM2-135M F16 as target, its Q4_0 as draft, on a code-writing prompt (as
    `load(draft=)` runs it by default: prompt lookup where the context repeats, the draft
    elsewhere; and the draft alone);
  * prompt lookup: the same target on a "rewrite this code with one change" prompt.

    python bench/bench_speculative.py [--tokens 128] [--rounds 5] [--draft-k K --draft-p-min P --draft-vocab N]
    python bench/bench_speculative.py --steps     # what a draft step and a T-token verify cost
    python bench/bench_speculative.py --coverage smollm2-135m gemma3-270m   # ids a cut draft head keeps

The F16 and Q4_0 files are made once from the catalog's Q4_1 file with `localllm quantize`
(into $LOCALLLM_HOME/synthetic/)."""
from __future__ import annotations

import argparse
import time

import numpy as np

import localllm
from localllm.catalog import models_home, pull
from localllm.quantize import quantize_file

CODE_PROMPT = ("<|im_start|>user\nWrite a Python function that checks whether a string is a palindrome, "
               "ignoring case and punctuation, with a docstring and three doctests.<|im_end|>\n<|im_start|>assistant\n")
SOURCE = '''def moving_average(values, window):
    """Return the moving averages of `values` over `window` items."""
    if window <= 0:
        raise ValueError("window must be positive")
    out = []
    total = 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        if i >= window - 1:
            out.append(total / window)
    return out
'''
REWRITE_PROMPT = ("<|im_start|>user\nRewrite this code, renaming the function to `rolling_mean`; change nothing "
                  f"else.\n\n```python\n{SOURCE}```<|im_end|>\n<|im_start|>assistant\n```python\n")


def variant(kind: str):
    path = models_home() / "synthetic" / f"smollm2-135m-{kind.lower()}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        quantize_file(pull("smollm2-135m", progress=False), path, kind, progress=False)
    return path


def timed(llm, prompt: str, n: int) -> tuple[float, str, dict]:
    llm.reset()
    t0 = time.perf_counter()
    text = "".join(llm.generate(prompt, max_tokens=n, temperature=0))
    s = llm.last_stats
    return s["generated_tokens"] / (time.perf_counter() - t0 - s["prompt_ms"] / 1e3), text, s


def forward_ms(runs: list[tuple[str, object, int]], prompt: str, rounds: int = 25) -> dict[tuple[str, int], float]:
    """Median time of one T-token forward after `prompt` for each (name, llm, T) of `runs` (a
    draft step: T = 1; a verify: 1 + k). Every round takes them all in turn, as speculation
    alternates the two models (so the draft finds the caches full of the target's weights),
    and so that the machine's drifting memory speed moves all of them alike."""
    from localllm.generator import Stats
    bases = {}
    for _, llm, _ in runs:
        seq = llm._sequence()
        seq.eval_prompt(llm.tokenize(prompt), Stats())
        bases[id(llm)] = seq.cache.offset
    times: dict[tuple[str, int], list[float]] = {(name, T): [] for name, _, T in runs}
    for _ in range(rounds + 1):                            # the first round warms up
        for name, llm, T in runs:
            seq, ids = llm._sequence(), np.arange(100, 100 + T)
            seq.cache.trim(bases[id(llm)])
            t0 = time.perf_counter()
            seq.model.forward(ids, seq.cache, all_logits=True)
            times[name, T].append(time.perf_counter() - t0)
            seq.cache.tokens.extend(ids.tolist())
    return {key: float(np.median(t[1:])) * 1e3 for key, t in times.items()}


def step_costs(target, draft, threads: int, spec_kw: dict) -> None:
    kw = dict(n_ctx=2048, threads=threads, prefix_cache_bytes=0)
    spec = localllm.load(target, draft=draft, **kw, **spec_kw)   # the draft as speculation runs it (head cut)
    runs = [("target F16", spec, T) for T in (1, 2, 3, 4, 5)] + [("draft Q4_0", spec.draft, T) for T in (1, 2)]
    ms = forward_ms(runs, CODE_PROMPT)
    print("| model | tokens per forward | ms (median) | target steps |")
    print("| --- | --- | --- | --- |")
    for (name, T), t in ms.items():
        print(f"| {name} | {T} | {t:.2f} | {t / ms['target F16', 1]:.2f} |")


COVERAGE_PROMPTS = ["Write a Python function that checks whether a string is a palindrome.",
                    "Explain why the sky is blue in three sentences.",
                    "Translate to French: the cat sleeps on the warm windowsill."]


def vocab_coverage(models: list[str]) -> None:
    """What share of the tokens of a model's generated text (greedy, 96 tokens per chat prompt,
    the text tokenized again) lies within its first N token ids: how much a draft head cut to N
    ids (draft_vocab) can still propose."""
    cuts = (4096, 8192, 16384, 32768, 65536)
    print("| model | tokenizer | vocabulary | tokens | " + " | ".join(f"ids < {n}" for n in cuts) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in cuts) + " |")
    for name in models:
        llm = localllm.load(name, n_ctx=1024)
        ids: list[int] = []
        for p in COVERAGE_PROMPTS:
            text = "".join(llm.generate(llm.chat_tokens([{"role": "user", "content": p}]), max_tokens=96, temperature=0))
            ids += llm.tokenize(text, add_bos=False)
        a = np.array(ids)
        print(f"| {name} | {llm.gguf.metadata.get('tokenizer.ggml.model')} | {llm.n_vocab} | {len(a)} | "
              + " | ".join(f"{(a < n).mean():.1%}" for n in cuts) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", action="store_true", help="only time one forward of each size")
    ap.add_argument("--draft-k", type=int, default=None, help="as localllm.load's draft_k (default: its default)")
    ap.add_argument("--draft-p-min", type=float, default=None)
    ap.add_argument("--draft-vocab", type=int, default=None)
    ap.add_argument("--coverage", nargs="+", metavar="MODEL", help="only: generated tokens within the first N ids")
    args = ap.parse_args()
    if args.coverage:
        return vocab_coverage(args.coverage)
    spec_kw = {k: v for k, v in (("draft_k", args.draft_k), ("draft_p_min", args.draft_p_min),
                                 ("draft_vocab", args.draft_vocab)) if v is not None}
    target, draft = variant("F16"), variant("Q4_0")
    if args.steps:
        return step_costs(target, draft, args.threads, spec_kw)
    kw = dict(n_ctx=2048, threads=args.threads, prefix_cache_bytes=0)
    runs = {"plain": localllm.load(target, **kw), "draft Q4_0": localllm.load(target, draft=draft, **kw, **spec_kw),
            "draft Q4_0, no lookup": localllm.load(target, draft=draft, lookup=False, **kw, **spec_kw),
            "lookup": localllm.load(target, lookup=True, **kw)}
    cases = [("code (draft model)", CODE_PROMPT, ["plain", "draft Q4_0", "draft Q4_0, no lookup"]),
             ("rewrite (prompt lookup)", REWRITE_PROMPT, ["plain", "lookup"])]
    print("| prompt | mode | tok/s (median) | speed-up (median of rounds) | per round | acceptance | same text as plain |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, prompt, modes in cases:
        for mode in modes:                       # warm-up: JIT, caches
            timed(runs[mode], prompt, 8)
        tps: dict[str, list[float]] = {m: [] for m in modes}
        last: dict[str, tuple[str, dict]] = {}
        for _ in range(args.rounds):             # alternate: this machine's memory bandwidth drifts by tens of
            for mode in modes:                   # percent between runs, so each round's ratio is what counts
                r = timed(runs[mode], prompt, args.tokens)
                tps[mode].append(r[0])
                last[mode] = r[1:]
        base_text = last["plain"][0]
        for mode in modes:
            text, s = last[mode]
            ratios = np.array(tps[mode]) / np.array(tps["plain"])
            rounds = " ".join(f"{r:.2f}" for r in ratios) if mode != "plain" else " ".join(f"{t:.0f}" for t in tps[mode])
            acc = (f"{s['draft_accepted']}/{s['draft_proposed']} ({s['draft_accepted'] / max(s['draft_proposed'], 1):.0%})"
                   if "draft_proposed" in s else "")
            print(f"| {name} | {mode} | {np.median(tps[mode]):.1f} | {np.median(ratios):.2f}x | {rounds} | {acc} | "
                  f"{text == base_text} |")


if __name__ == "__main__":
    main()
