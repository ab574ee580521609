"""The Numba kernels against the numpy reference (gguf dequantize + float32 math), on every
instruction-set path this machine can run (the portable one always), then the NumbaBackend on the
real models against llama.cpp's logits. The backend's ops against the reference, on every
backend, are in test_backend_ops.py.

Error budgets. The r8 matmul's only approximation is rounding activations to Q8_0 (weights are
re-encoded exactly), so per output |y - x @ w.T| <= sum_j |w_j| * d_x(j) / 2 with d_x the
activation's block scale; we assert that bound (plus float32 summation slack of 1e-4 of
sum_j |x_j w_j|). Against the same quantized activations computed in float64, every path must
agree to 1e-5 relative. Float kernels: 1e-5 relative to the reference (2e-3 for float16 inputs)."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

from localllm.backend.numba_cpu import NumbaBackend
from localllm.gguf_file import Tensor
from localllm.kernels import ops
from localllm.kernels.isa import AVX2, PORTABLE, VNNI, available_isas
from localllm.kernels.qmatmul import mul_r8
from localllm.kernels.quant import QK, dequantize_r8, quantize_q8_0, repack_r8
from localllm.synthetic import quantize_q4_k, quantize_q6_k

from support import assert_close_to_llama_cpp, closeness

R8_TYPES = [QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q6_K]
ISAS = [PORTABLE, AVX2, VNNI]
SHAPES = [(1, 37, 96), (2, 24, 256), (5, 8, 32), (3, 67, 256), (6, 40, 512), (9, 16, 544)]   # (T, rows, cols): odd rows, k % 256 != 0


def test_isa_can_be_forced(monkeypatch):
    """$LOCALLLM_ISA picks a slower path (to benchmark AVX2 on an AVX-512 machine); one this CPU
    lacks is a clear error."""
    from localllm.backend.numba_cpu import NumbaBackend
    from localllm.errors import LocalLLMError
    monkeypatch.setenv("LOCALLLM_ISA", PORTABLE)
    assert NumbaBackend().isa == PORTABLE
    monkeypatch.setenv("LOCALLLM_ISA", "sse9")
    with pytest.raises(LocalLLMError, match="LOCALLLM_ISA='sse9': this CPU can run portable"):
        NumbaBackend()


def _isa(isa: str) -> str:
    if isa not in available_isas():
        pytest.skip(f"this CPU cannot run the {isa} path")
    return isa


def _encode(w: np.ndarray, qtype: QT) -> np.ndarray:
    """float32 [n, k] -> raw GGUF rows uint8 [n, row_bytes]."""
    if qtype == QT.Q4_K:
        return quantize_q4_k(w).reshape(w.shape[0], -1)
    if qtype == QT.Q6_K:
        return quantize_q6_k(w).reshape(w.shape[0], -1)
    return quantize(w, qtype).reshape(w.shape[0], -1)


def _tensor(qtype: QT, n: int, k: int, seed: int = 0) -> Tensor:
    w = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    return Tensor("w", qtype, (n, k), np.ascontiguousarray(_encode(w, qtype)))


def _quantized(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    T, k = x.shape
    q, d, s = np.empty((T, k), np.int8), np.empty((T, k // QK), np.float32), np.empty((T, k // QK), np.float32)
    quantize_q8_0(x, q, d, s)
    return q, d, s


# --- quantization and layout -----------------------------------------------------------------
@pytest.mark.parametrize("qtype", R8_TYPES, ids=lambda t: t.name)
def test_repack_is_exact(qtype):
    t = _tensor(qtype, 37, 256)
    ref = dequantize(t.data, qtype).reshape(t.shape)
    rows = np.array([0, 5, 8, 36, 17])
    np.testing.assert_array_equal(dequantize_r8(repack_r8(t.data, qtype), rows), ref[rows])


def test_quantize_q8_0_matches_ggml():
    """d = fp16(amax/127); q = round-half-even(x * 127/amax), as ggml's AVX quantize_row_q8_0."""
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    x[1, :32] = 0.0                                                        # an all-zero block
    q, d, s = _quantized(x)
    blocks = x.reshape(3, -1, QK)
    amax = np.abs(blocks).max(-1)
    np.testing.assert_array_equal(d, (amax / 127).astype(np.float16).astype(np.float32))
    inv = np.divide(np.float32(127), amax, out=np.zeros_like(amax), where=amax > 0)
    np.testing.assert_array_equal(q.reshape(3, -1, QK), np.rint(blocks * inv[..., None]))
    np.testing.assert_allclose(s, 0.5 * d * q.reshape(3, -1, QK).sum(-1, dtype=np.float32), rtol=1e-6)


# --- quantized matmul -----------------------------------------------------------------------
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("qtype", R8_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("T,n,k", SHAPES)
def test_mul_r8(qtype, isa, T, n, k):
    if qtype in (QT.Q4_K, QT.Q6_K) and k % 256:
        k = 256 * max(1, k // 256)
    t = _tensor(qtype, n, k, seed=n + k)
    w = dequantize(t.data, qtype).reshape(n, k)                              # [n, k] float32
    x = np.random.default_rng(T).standard_normal((T, k)).astype(np.float32) * 3
    q, d, s = _quantized(x)
    y = mul_r8(repack_r8(t.data, qtype), q, d, s, _isa(isa))[:, :n]       # [T, n]
    # the same Q8_0 activations, multiplied in float64
    xq = (q.reshape(T, -1, QK) * d[..., None]).reshape(T, k).astype(np.float64)
    assert np.all(np.abs(y - xq @ w.T.astype(np.float64)) <= 1e-5 * (np.abs(xq) @ np.abs(w.T)))
    # against float32 activations: the Q8_0 rounding bound
    budget = (np.repeat(d, QK, axis=1) / 2) @ np.abs(w.T) + 1e-4 * np.abs(x) @ np.abs(w.T)
    assert np.all(np.abs(y - x @ w.T) <= budget)


def test_mul_r8_rows_beyond_padding_are_zero():
    t = _tensor(QT.Q4_0, 13, 64)
    y = mul_r8(repack_r8(t.data, QT.Q4_0), *_quantized(np.ones((2, 64), np.float32)), available_isas()[-1])
    assert y.shape == (2, 16) and np.all(y[:, 13:] == 0)


# --- float kernels --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("T,n,k", [(1, 45, 70), (2, 45, 70), (3, 45, 70), (5, 64, 576), (6, 40, 96), (7, 64, 576),
                                   (9, 13, 10), (4, 8, 32), (13, 24, 48)])
def test_mul_dense(dtype, T, n, k):
    """d8 matmul vs numpy on odd shapes: rows not a multiple of 8, columns not of 16, T around the
    4-row tile; float32 accumulation in another order: error budget 1e-4 relative + absolute."""
    rng = np.random.default_rng(2)
    w, x = rng.standard_normal((n, k)).astype(dtype), rng.standard_normal((T, k)).astype(np.float32)
    p = ops.interleave_d8(w.view(np.uint16) if dtype == np.float16 else w)
    y = np.full((T, p.shape[0] * ops.D8), np.nan, np.float32)
    ops.mul_dense(p, x, y)
    np.testing.assert_allclose(y[:, :n], x @ w.astype(np.float32).T, rtol=1e-4, atol=1e-4)
    assert np.all(y[:, n:] == 0)                                   # padding rows


@pytest.mark.parametrize("T", [2, 3, 4, 5, 6, 7])
def test_mul_dense_rows_equal_single_rows(T):
    """Each row of a T-row product equals the one-row product bit for bit (same summation order
    in every tile shape): what lets a speculative verify reproduce plain decoding exactly."""
    rng = np.random.default_rng(3)
    w, x = rng.standard_normal((40, 96)).astype(np.float16), rng.standard_normal((T, 96)).astype(np.float32)
    p = ops.interleave_d8(w.view(np.uint16))
    y = np.zeros((T, 40), np.float32)
    ops.mul_dense(p, x, y)
    for t in range(T):
        y1 = np.zeros((1, 40), np.float32)
        ops.mul_dense(p, np.ascontiguousarray(x[t:t + 1]), y1)
        np.testing.assert_array_equal(y[t], y1[0])


def test_d8_rows_round_trip():
    w = np.random.default_rng(3).standard_normal((21, 37)).astype(np.float32)
    rows = np.array([0, 7, 8, 20, 3])
    np.testing.assert_array_equal(ops.deinterleave_d8(ops.interleave_d8(w), rows, 37), w[rows])


def test_exp_f32x16():
    """The attention's vector exp against numpy's float64 exp: within 1.5 float32 ulp on
    [-87.3, 0], exactly 1 at 0, and 0 below -87.3 (the padded rows of a tile)."""
    from numba import njit
    from localllm.kernels.simd import exp_f32x16, load_f32x16, store_f32x16

    @njit
    def run(x, y):
        for i in range(0, x.shape[0], 16):
            store_f32x16(y, i, exp_f32x16(load_f32x16(x, i)))
    x = np.concatenate([-np.linspace(0, 87.29, 40000), [0.0, -1e-8, -87.4, -100.0, -1e30, -0.5]]).astype(np.float32)
    x = np.concatenate([x, np.zeros(-len(x) % 16, np.float32)])
    y = np.empty_like(x)
    run(x, y)
    live = x >= np.float32(-87.29)
    want = np.exp(x[live].astype(np.float64))
    assert (np.abs(y[live] - want) / want).max() < 1.5 * 2.0 ** -23
    assert y[x == 0].min() == 1.0 and not y[~live].any()


# --- models ---------------------------------------------------------------------------------
def _model(path):
    from localllm.models import model_class
    from localllm.gguf_file import GGUFFile

    gguf = GGUFFile(path)
    cls = model_class(gguf.architecture)
    return cls(gguf, cls.config(gguf.metadata), NumbaBackend())


def _logits_fn(model):
    c = model.cfg

    def logits(ids):
        cache = model.ops.new_kv_cache(c.n_layers, len(ids), c.n_kv_heads, c.head_dim_k, c.head_dim_v)
        return model.forward(np.asarray(ids), cache, all_logits=True)
    return logits


@pytest.mark.parametrize("key,fixture", [("smollm2-135m-q4_1", "smollm2_path"), ("gemma3-270m-q4_k_m", "gemma3_path")])
def test_model_close_to_llama_cpp(request, key, fixture):
    fig = closeness(key, _logits_fn(_model(request.getfixturevalue(fixture))))
    print(key, fig)
    assert_close_to_llama_cpp(fig)


def test_prefill_equals_decode(smollm2_path):
    """T tokens in one forward give the logits of T single-token forwards: every kernel treats
    activation rows independently, so they agree to float32 rounding."""
    model = _model(smollm2_path)
    c, ids = model.cfg, np.array([1, 504, 3458, 282, 253, 1345, 28, 12, 9000, 77])
    cache = model.ops.new_kv_cache(c.n_layers, 16, c.n_kv_heads, c.head_dim_k, c.head_dim_v)
    prefill = model.forward(ids, cache, all_logits=True)
    cache = model.ops.new_kv_cache(c.n_layers, 16, c.n_kv_heads, c.head_dim_k, c.head_dim_v)
    steps = []
    for tok in ids:
        steps.append(model.forward(np.array([tok]), cache)[0])
        cache.tokens.append(int(tok))
    np.testing.assert_allclose(np.stack(steps), prefill, atol=1e-3, rtol=0)
