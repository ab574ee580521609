"""The compiled step (kernels.step through NumbaBackend.compiled_step) against the op-by-op
forward of the same backend: same weights, same Q8_0 activations, same float order per op, so
the logits agree to float32 summation order (in practice bit for bit), for prefill, a prefill of
one token, decode steps, 1 and 2 threads, and every weight encoding the compiled step takes."""
from __future__ import annotations

import numba
import numpy as np
import pytest
from support import assert_close_to_llama_cpp, closeness
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize

from localllm.models import model_class
from localllm.models.llama import Llama
from localllm.models.base import ModelConfig
from localllm.backend.numba_cpu import NumbaBackend
from localllm.gguf_file import GGUFFile, Tensor
from localllm.synthetic import quantize_q4_k, quantize_q6_k

IDS = np.array([1, 504, 3458, 282, 253, 1345, 28, 12, 9000, 77])


def _model(path, backend=None):
    gguf = GGUFFile(path)
    cls = model_class(gguf.architecture)
    return cls(gguf, cls.config(gguf.metadata), backend or NumbaBackend())


def _cache(model, n=32):
    c = model.cfg
    return model.ops.new_kv_cache(c.n_layers, n, c.n_kv_heads, c.head_dim_k, c.head_dim_v)


def _compare(model, ids, threads=(1, 2)):
    """Prefill of ids[:-3], then three decode steps, compiled step vs readable; also a prefill of one."""
    assert model.step_path.startswith("compiled step"), model.step_path
    step, readable = model.compiled_step, model.forward_ops
    saved, typed = numba.get_num_threads(), None
    try:
        for th in threads:
            numba.set_num_threads(min(th, numba.config.NUMBA_NUM_THREADS))
            ca, cb = _cache(model), _cache(model)
            n0 = len(ids) - 3
            want = readable(ids[:n0], ca, all_logits=True)
            got = step(ids[:n0], cb, all_logits=True)
            typed = typed or len(step.step.signatures)   # the dispatcher is shared by models of equal layouts
            np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
            np.testing.assert_array_equal(ca.k[:, :n0], cb.k[:, :n0])
            for tok in ids[n0:]:
                ca.tokens = cb.tokens = list(ids[:ca.offset])
                want = readable(np.array([tok]), ca)
                got = step(np.array([tok]), cb)
                np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
                ca.tokens.append(int(tok))
            one_a, one_b = _cache(model), _cache(model)                  # a prefill of one token
            np.testing.assert_allclose(step(ids[:1], one_b), readable(ids[:1], one_a), atol=1e-3, rtol=0)
        assert len(step.step.signatures) == typed    # typed once: prefill, decode, any thread count
    finally:
        numba.set_num_threads(saved)


def test_step_matches_readable_smollm2(smollm2_path):
    _compare(_model(smollm2_path), IDS)


def test_rescued_chunks_are_idempotent(smollm2_path, monkeypatch):
    """With the rescue threshold at one cycle, a thread that runs out of chunks re-runs every
    chunk its sibling has not marked done, so chunks run on both threads at once: each must store
    the same values whole (a stage that accumulated into shared memory broke this). The logits
    and the cache equal a step without rescue bit for bit."""
    from localllm.kernels import step as ks
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("a rescue needs two threads; Numba has one here")
    model = _model(smollm2_path)
    saved = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        runs = []
        step = model.compiled_step
        for rescue in (ks.RESCUE_CYCLES, 1):
            monkeypatch.setattr(ks, "RESCUE_CYCLES", rescue)
            step._scratch.clear()                                    # scratch made again with this threshold
            step.stats[:] = 0
            cache = _cache(model)
            logits = [step(IDS[:5], cache, all_logits=True)]
            for tok in IDS[5:]:
                cache.tokens = list(IDS[:cache.offset])
                logits.append(step(np.array([tok]), cache))
            runs.append((logits, cache.k.copy(), cache.v.copy()))
        assert step.stats[:, 1].sum() > 0                            # chunks were rescued (run twice)
        (want, wk, wv), (got, gk, gv) = runs
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(gk, wk)
        np.testing.assert_array_equal(gv, wv)
    finally:
        numba.set_num_threads(saved)


def test_step_close_to_llama_cpp(smollm2_path):
    model = _model(smollm2_path)

    def logits(ids):
        cache = _cache(model, len(ids))
        return model.compiled_step(np.asarray(ids), cache, all_logits=True)
    fig = closeness("smollm2-135m-q4_1", logits)
    print(fig)
    assert_close_to_llama_cpp(fig)


# --- every encoding: a tiny random llama -------------------------------------------------------
class _FakeGGUF:
    path = "<synthetic>"

    def __init__(self, tensors):
        self.tensors, self.metadata = tensors, {}


def _tensor(name, qtype, shape, rng):
    data = rng.standard_normal(shape).astype(np.float32) * (0.02 if len(shape) == 2 else 1.0)
    if len(shape) == 1:
        return Tensor(name, QT.F32, shape, (1.0 + 0.1 * data).astype(np.float32).view(np.uint8))
    enc = {QT.Q4_K: quantize_q4_k, QT.Q6_K: quantize_q6_k}.get(qtype, lambda w: quantize(w, qtype))
    return Tensor(name, qtype, shape, np.ascontiguousarray(enc(data).reshape(shape[0], -1)))


@pytest.mark.parametrize("qtype,out_type", [(QT.Q4_0, QT.Q8_0), (QT.Q4_1, QT.Q4_0), (QT.Q5_0, QT.Q5_0),
                                            (QT.Q8_0, QT.Q6_K), (QT.Q4_0, QT.F32), (QT.Q4_K, QT.Q4_K),
                                            (QT.Q6_K, QT.Q6_K), (QT.F16, QT.F16)], ids=lambda t: t.name)
def test_step_every_encoding(qtype, out_type):
    rng = np.random.default_rng(int(qtype) * 7 + int(out_type))
    dim, ffn, H, KV, dh, L, vocab = 256, 512, 4, 2, 64, 2, 300
    cfg = ModelConfig("llama", vocab, 128, dim, L, H, KV, dh, dh, ffn, dh, 10000.0, 1.0, 1e-5)
    shapes = {"token_embd": (vocab, dim), "output": (vocab, dim), "output_norm": (dim,)}
    for i in range(L):
        shapes.update({f"blk.{i}.attn_norm": (dim,), f"blk.{i}.attn_q": (H * dh, dim), f"blk.{i}.attn_k": (KV * dh, dim),
                       f"blk.{i}.attn_v": (KV * dh, dim), f"blk.{i}.attn_output": (dim, H * dh),
                       f"blk.{i}.ffn_norm": (dim,), f"blk.{i}.ffn_gate": (ffn, dim), f"blk.{i}.ffn_up": (ffn, dim),
                       f"blk.{i}.ffn_down": (dim, ffn)})
    types = {"output": out_type, "token_embd": QT.Q8_0}
    tensors = {f"{n}.weight": _tensor(f"{n}.weight", types.get(n, qtype), s, rng) for n, s in shapes.items()}
    model = Llama(_FakeGGUF(tensors), cfg, NumbaBackend())
    _compare(model, np.array([3, 17, 250, 9, 41, 8, 199, 5, 77]))


def test_step_path_says_which_forward_runs_and_why(tmp_path, monkeypatch):
    """The choice is made once, at load, and reported (`localllm info`'s step_path)."""
    import localllm
    from localllm.synthetic import make_random_gguf
    path = make_random_gguf(tmp_path / "m.gguf", n_ctx=64)
    assert localllm.load(path, backend="numpy").info()["step_path"] == "op by op: the numpy backend has no compiled step"
    monkeypatch.setenv("LOCALLLM_COMPILED_STEP", "0")
    assert localllm.load(path, backend="cpu").info()["step_path"] == "op by op: disabled by LOCALLLM_COMPILED_STEP=0"
