"""Tokenizer throughput: MB/s encoding ~1 MB of English and ~1 MB of mixed-script text, plus the
time to build each tokenizer from its GGUF metadata. Prints a markdown table.

    python bench/bench_tokenizer.py [--models smollm2-135m gemma3-270m] [--mb 1.0]
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from localllm.gguf_file import GGUFFile
from localllm.tokenizer import Tokenizer

GPL3 = Path("/usr/share/common-licenses/GPL-3")
MODELS_DIR = Path.home() / ".cache" / "localllm" / "models"

_SNIPPETS = [
    "The quick brown fox jumps over the lazy dog while the committee debates the budget.",
    "机器学习模型需要大量的数据来训练，然后才能做出准确的预测。",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "الذكاء الاصطناعي يغير طريقة عملنا وتواصلنا مع العالم من حولنا.",
    "日本語のテキストも少し混ぜておきます。東京は大きな都市です。",
    "Emoji time: 🚀🔥✨ 👩‍💻 🇫🇷 😶‍🌫️ done!",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "    for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product\n",
    "Ελληνικά: Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "한국어 문장도 포함합니다. 오늘 날씨가 정말 좋네요!",
]


def english_text(n_bytes: int) -> str:
    base = GPL3.read_text(encoding="utf-8") if GPL3.exists() else " ".join(_SNIPPETS[:1] * 100)
    return (base * (n_bytes // len(base.encode()) + 1))[:n_bytes]


def mixed_text(n_bytes: int, seed: int = 0) -> str:
    """English, CJK, Cyrillic, Arabic, Greek, Korean, emoji and code, reshuffled so that words and
    word runs keep changing (the tokenizers cache per word; a repetitive text would flatter them)."""
    rng = random.Random(seed)
    parts, size = [], 0
    while size < n_bytes:
        words = rng.choice(_SNIPPETS).split(" ")
        rng.shuffle(words)
        if len(words) == 1:  # scripts written without spaces: reshuffle the characters instead
            words = ["".join(rng.sample(words[0], len(words[0])))]
        s = " ".join(words) + f" {rng.randint(0, 10**rng.randint(1, 6))}" + rng.choice([" ", "\n", "  ", "\n\n"])
        parts.append(s)
        size += len(s.encode())
    return "".join(parts)


def measure(tok: Tokenizer, text: str) -> tuple[float, int]:
    """Best of two encodes with the tokenizer's caches already warm: (seconds, number of tokens)."""
    best, n = float("inf"), 0
    for _ in range(2):
        t0 = time.perf_counter()
        n = len(tok.encode(text, add_bos=False, special=True))
        best = min(best, time.perf_counter() - t0)
    return best, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--mb", type=float, default=1.0, help="size of each text in MB")
    args = ap.parse_args()
    n_bytes = int(args.mb * 1_000_000)
    texts = {"English (GPL-3)": english_text(n_bytes), "mixed scripts": mixed_text(n_bytes)}

    print("| model | text | MB | build s | first pass MB/s | warm MB/s | tokens |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        metadata = GGUFFile(MODELS_DIR / f"{name}.gguf").metadata
        t0 = time.perf_counter()
        Tokenizer.from_metadata(metadata)
        build = time.perf_counter() - t0
        for label, text in texts.items():
            tok = Tokenizer.from_metadata(metadata)  # cold caches for the first pass
            mb = len(text.encode()) / 1e6
            t0 = time.perf_counter()
            tok.encode(text, add_bos=False, special=True)
            cold = time.perf_counter() - t0
            warm, n_tokens = measure(tok, text)
            print(f"| {name} | {label} | {mb:.2f} | {build:.3f} | {mb / cold:.2f} | {mb / warm:.2f} | {n_tokens} |")


if __name__ == "__main__":
    main()
