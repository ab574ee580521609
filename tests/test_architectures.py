"""Every architecture of models/ against llama.cpp: random-weight GGUFs from the project's
generator (bench/llama_cpp_reference.py's cases: each architecture's differences, Q8_0 / Q4_0 /
Q4_K / F16), teacher-forced on the numpy, cpu and opencl backends, compared with llama.cpp's
top-10 logits stored in tests/data/arch_reference (so no llama.cpp is needed here). Also: the
OpenCL decode replay of each architecture equals its op-by-op forward, the compiled CPU step
declines what it cannot compute, and an unknown rope scaling type is refused."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from support import REPO, assert_close_to_llama_cpp, figures, opencl_missing
from localllm.backend import get_backend
from localllm.errors import UnsupportedModelError
from localllm.gguf_file import GGUFFile
from localllm.models import model_class
from localllm.synthetic import make_random_gguf

sys.path.insert(0, str(REPO / "bench"))
from llama_cpp_reference import make_case, weights_sha256  # noqa: E402

DATA = Path(__file__).parent / "data" / "arch_reference"
INDEX = json.loads((DATA / "cases.json").read_text())


@pytest.fixture(scope="module")
def case_files(tmp_path_factory) -> dict[str, Path]:
    """Each case's GGUF, generated again and checked against the weights llama.cpp saw."""
    out, files = tmp_path_factory.mktemp("arch"), {}
    for name, case in INDEX.items():
        path = make_case(name, out)
        assert weights_sha256(path) == case["weights_sha256"], \
            f"{name}: the generator's weights changed; rerun bench/llama_cpp_reference.py"
        files[name] = path
    return files


_BACKENDS: dict[str, object] = {}


def backend(name: str):
    """One backend per name for the module (OpenCL builds its kernels once)."""
    if name not in _BACKENDS:
        if name == "opencl" and opencl_missing():
            pytest.skip(opencl_missing())
        _BACKENDS[name] = get_backend(name)
    return _BACKENDS[name]


def load(path: Path, be):
    gguf = GGUFFile(path)
    cls = model_class(gguf.architecture)
    return cls(gguf, cls.config(gguf.metadata), be)


@pytest.mark.parametrize("be_name", ["numpy", "cpu", "opencl"])
@pytest.mark.parametrize("case", sorted(INDEX))
def test_close_to_llama_cpp(case_files, case, be_name):
    be, ref = backend(be_name), INDEX[case]
    model = load(case_files[case], be)
    c = model.cfg
    cache = be.new_kv_cache(c.n_layers, ref["n_ctx"], c.n_kv_heads, c.head_dim_k, c.head_dim_v)
    logits = model.forward(np.array(ref["tokens"]), cache, all_logits=True)
    fig = figures({"cases": [{"prompt_tokens": ref["tokens"], "greedy_tokens": []}]},
                  dict(np.load(DATA / f"{case}.npz")), lambda ids: logits)
    print(f"{case} {be_name}: top-1 {fig['top1']:.3f}, real flips {fig['real_flips']}, "
          f"mean |d| {fig['mean_abs_diff']:.3f}")
    assert_close_to_llama_cpp(fig)


# one case per architecture: decode token by token, replayed and op by op
REPLAY_CASES = ["llama31-q8_0", "llama-yarn-q8_0", "qwen2-q8_0", "qwen3-f16", "phi3-long-q8_0", "gemma2-q8_0",
                "gemma3-q8_0"]


@pytest.mark.parametrize("case", REPLAY_CASES)
def test_opencl_replay_equals_op_by_op(case_files, case):
    be = backend("opencl")
    model, tokens = load(case_files[case], be), INDEX[case]["tokens"][:12]
    c = model.cfg
    out = {}
    for replay in (False, True):
        be.replay = replay
        cache = be.new_kv_cache(c.n_layers, INDEX[case]["n_ctx"], c.n_kv_heads, c.head_dim_k, c.head_dim_v)
        model.forward(np.array(tokens[:4]), cache)
        cache.tokens.extend(tokens[:4])
        steps = []
        for t in tokens[4:]:
            steps.append(model.forward(np.array([t]), cache)[0])
            cache.tokens.append(t)
        out[replay] = np.array(steps)
    be.replay = True
    np.testing.assert_array_equal(out[True], out[False])


def test_compiled_cpu_step_declines_what_it_lacks(case_files, tmp_path):
    """Plain llama runs the compiled step; rope factors (Llama 3.1), biases, QK-norm... run op by
    op, and step_path names the feature."""
    be = backend("cpu")
    plain = load(make_random_gguf(tmp_path / "plain.gguf", dim=128, seed=1), be)
    assert plain.compiled_step is not None and plain.step_path.startswith("compiled step")
    for case, feature in (("llama31-q8_0", "rope_factors"), ("qwen2-q8_0", "biases")):
        model = load(case_files[case], be)
        assert model.compiled_step is None and feature in model.step_path, model.step_path


def test_unknown_rope_scaling_is_refused(tmp_path):
    path = make_random_gguf(tmp_path / "m.gguf", rope_scaling={"type": "dynamic-ntk"})
    with pytest.raises(UnsupportedModelError, match="rope scaling type 'dynamic-ntk' is not supported"):
        model_class("llama").config(GGUFFile(path).metadata)


@pytest.mark.parametrize("stop", ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"])
def test_family_stop_tokens_end_the_turn(tmp_path, stop):
    """Qwen's, Llama 3's, Gemma's and Phi-3's end-of-turn tokens are end-of-generation ids (a chat
    turn stops there) even where the file's EOS is another token."""
    from localllm.tokenizer import Tokenizer
    md = dict(GGUFFile(make_random_gguf(tmp_path / "m.gguf", vocab=700)).metadata)
    tokens = list(md["tokenizer.ggml.tokens"])
    if stop not in tokens:                          # the generator's vocabulary has <|im_end|> already
        tokens[tokens.index("<|reserved_0|>")] = stop
    md["tokenizer.ggml.tokens"] = tokens
    tok = Tokenizer.from_metadata(md)
    assert tok.vocab.token_to_id[stop] in tok.eog_ids
