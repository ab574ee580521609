"""llama.cpp's teacher-forced logits on random-weight GGUFs of every architecture in models/, for
the CI closeness tests (tests/test_architectures.py), which then need no llama.cpp.

    python bench/llama_cpp_reference.py [--out tests/data/arch_reference] [--only NAME ...]

Each case (CASES) is a file from localllm.synthetic.make_random_gguf with fixed arguments and
seed, and a fixed token sequence. llama.cpp runs through llama-cpp-python in its own virtualenv
(LLAMACPP_PYTHON, default /work/llamacpp-venv/bin/python): the whole sequence evaluated in one
batch with logits_all, on 2 threads. Written: `cases.json` (per case the generator arguments, the
weights' sha256, the tokens, n_ctx) and `<case>.npz` (top10_ids_0 / top10_logits_0 [n, 10]: the ten
largest logits at every position, the layout of ../shared/reference)."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from localllm.gguf_file import GGUFFile  # noqa: E402
from localllm.synthetic import make_random_gguf  # noqa: E402

LLAMACPP_PYTHON = os.environ.get("LLAMACPP_PYTHON", "/work/llamacpp-venv/bin/python")
N_TOKENS, N_CTX, SEED = 96, 256, 7
# Shapes every encoding accepts (Q4_K needs rows of 256); output_std 0.5 gives logits ~2-5 apart at
# the top, so the top-1 is a decision, not a near-tie (tied heads take less: the embedding table
# is the head; Q4_K, whose activations llama.cpp rounds to 8 bits, takes more); the per-case arguments exercise each
# architecture's differences (partial rotary, windows shorter than the sequence, small caps).
BASE = dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, output_std=0.5, seed=SEED)
CASES: dict[str, dict] = {
    "llama31-q8_0": dict(arch="llama", tensor_type="Q8_0", rope_freqs=True, rope_base=500000.0),
    "llama-yarn-q8_0": dict(arch="llama", tensor_type="Q8_0",
                            rope_scaling={"type": "yarn", "factor": 4.0, "original_context_length": 16}),
    "llama-linear-q4_k": dict(arch="llama", tensor_type="Q4_K", output_std=0.8,
                              rope_scaling={"type": "linear", "factor": 2.0}),
    "qwen2-q8_0": dict(arch="qwen2", tensor_type="Q8_0", rope_base=1000000.0),
    "qwen2-q4_0": dict(arch="qwen2", tensor_type="Q4_0", tied=True, rope_base=1000000.0, output_std=0.15),
    "qwen3-q4_k": dict(arch="qwen3", tensor_type="Q4_K", n_heads=8, head_dim=64, rope_base=1000000.0,
                         output_std=0.8),
    "qwen3-f16": dict(arch="qwen3", tensor_type="F16", head_dim=128, rope_base=1000000.0),
    "phi3-long-q8_0": dict(arch="phi3", tensor_type="Q8_0", n_kv_heads=4, n_rot=48,
                           rope_scaling={"original_context_length": 64, "attn_factor": 1.19}),
    "phi3-short-q4_k": dict(arch="phi3", tensor_type="Q4_K", n_kv_heads=4, n_rot=48, output_std=0.8,
                            rope_scaling={"original_context_length": 4096, "attn_factor": 1.19}),
    "gemma2-q8_0": dict(arch="gemma2", tensor_type="Q8_0", sliding_window=8, softcap=(0.5, 5.0), output_std=0.1),
    "gemma2-f16": dict(arch="gemma2", tensor_type="F16", sliding_window=16, softcap=(50.0, 30.0), output_std=0.1),
    "gemma3-q8_0": dict(arch="gemma3", tensor_type="Q8_0", n_layers=6, sliding_window=8),
}

RUNNER = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
path, n_ctx, tokens, out = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
llm = Llama(model_path=path, n_ctx=n_ctx, n_batch=len(tokens), n_ubatch=len(tokens), n_threads=2,
            n_threads_batch=2, logits_all=True, verbose=False)
llm.eval(tokens)
np.save(out, np.asarray(llm.scores[:len(tokens)], dtype=np.float32))
"""


def case_tokens(vocab: int, seed: int = SEED) -> list[int]:
    """The case's token ids: uniform over the vocabulary past the three specials."""
    return [int(t) for t in np.random.default_rng(seed).integers(3, vocab, N_TOKENS)]


def make_case(name: str, directory: Path) -> Path:
    """The case's GGUF under directory (the generator is deterministic)."""
    return make_random_gguf(directory / f"{name}.gguf", **BASE | CASES[name])


def weights_sha256(path: Path) -> str:
    """sha256 over the tensors' names and bytes: what the logits depend on (metadata order may
    vary with gguf-py's version; the weights may not)."""
    g = GGUFFile(path)
    h = hashlib.sha256()
    for name in sorted(g.tensors):
        h.update(name.encode() + g.tensors[name].data.tobytes())
    return h.hexdigest()


def llama_cpp_logits(path: Path, tokens: list[int]) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "logits.npy"
        subprocess.run([LLAMACPP_PYTHON, "-c", RUNNER, str(path), str(N_CTX), json.dumps(tokens), str(out)],
                       check=True)
        return np.load(out)


def top10(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :10].astype(np.int32)
    return ids, np.take_along_axis(logits, ids, -1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "tests/data/arch_reference")
    ap.add_argument("--only", nargs="*", help="case names (default: all)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    index_path = args.out / "cases.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CASES:
            path = make_case(name, Path(tmp))
            vocab = len(GGUFFile(path).metadata["tokenizer.ggml.tokens"])
            tokens = case_tokens(vocab)
            try:
                logits = llama_cpp_logits(path, tokens)
            except subprocess.CalledProcessError:
                print(f"{name}: llama.cpp failed (its error is above); skipped", flush=True)
                continue
            ids, vals = top10(logits)
            np.savez_compressed(args.out / f"{name}.npz", top10_ids_0=ids, top10_logits_0=vals)
            index[name] = {"generator": BASE | CASES[name], "weights_sha256": weights_sha256(path), "tokens": tokens,
                           "n_ctx": N_CTX}
            gap = float(np.mean(vals[:, 0] - vals[:, 1]))
            print(f"{name}: {len(tokens)} positions, mean top-1 margin {gap:.2f}", flush=True)
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
