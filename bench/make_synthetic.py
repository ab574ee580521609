"""Write random-weight llama GGUF files for benchmarks into <models_home>/synthetic/.

The default shape is the llama-shaped 1.17B of the reference speed table (dim 2048, 22 layers,
32 heads, 4 KV heads, ffn 5632, vocab 49152, untied output), with SmolLM2's tokenizer copied in
(same 49152-token vocabulary) so prompts tokenize as for a real model.

    python bench/make_synthetic.py                 # 1.17B Q4_0 and Q8_0
    python bench/make_synthetic.py --types Q4_K --layers 4
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from localllm.gguf_file import GGUFFile
from localllm.catalog import models_home, pull
from localllm.synthetic import build_bpe_vocab, make_random_gguf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["Q4_0", "Q8_0"], help="tensor types, one file each")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--tokenizer-from", default="smollm2-135m",
                    help="GGUF path or catalog name whose tokenizer is copied ('none': build a tiny one)")
    ap.add_argument("--out-dir", type=Path, default=None, help="default: <models_home>/synthetic")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    tokenizer = None if args.tokenizer_from == "none" else _gguf(args.tokenizer_from)
    out_dir = args.out_dir or models_home() / "synthetic"
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = len(GGUFFile(tokenizer).metadata["tokenizer.ggml.tokens"] if tokenizer else build_bpe_vocab()[0])
    n_params = _n_params(args, vocab)
    for ttype in args.types:
        path = out_dir / f"llama-{n_params / 1e9:.2f}b-{ttype.lower()}.gguf"
        t0 = time.perf_counter()
        make_random_gguf(path, dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                         ffn=args.ffn, n_ctx=args.ctx, tensor_type=ttype, seed=args.seed, tokenizer_from=tokenizer)
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t0:.1f} s")


def _gguf(name_or_path: str) -> Path:
    path = Path(name_or_path)
    return path if path.is_file() else pull(name_or_path)


def _n_params(args: argparse.Namespace, vocab: int) -> int:
    """Parameter count for the file name (assumes head_dim = dim / heads, untied output)."""
    kv = args.dim // args.heads * args.kv_heads
    per_layer = 2 * args.dim * args.dim + 2 * args.dim * kv + 3 * args.dim * args.ffn + 2 * args.dim
    return args.layers * per_layer + 2 * vocab * args.dim + args.dim


if __name__ == "__main__":
    main()
