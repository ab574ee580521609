"""Every backend op against the numpy float32 reference, one harness for all backends (as
llama.cpp's test-backend-ops): the same inputs go through `NumpyBackend` and the backend under
test, and the outputs must agree within that backend's stated error budget.

Backends: `cpu` (Numba SIMD, the machine's best ISA), and `opencl` as the device runs it, with
the GPU kernels (gemv + local-memory tiles) and with split-K attention whatever the device, so
PoCL in CI checks the GPUs' code paths too.

Error budgets, relative to the natural scale of each output:
- matmul on cpu: int8 dot products with Q8_0-rounded activations for the r8 types (1e-2 of
  sum |x_j w_j|); float32/float16 rows only change summation order (1e-5).
- matmul on opencl: weights used exactly as stored, or re-encoded exactly, or rounded to float16
  where `runs_as` says so (the reference is rounded the same way); activations float32: 1e-4.
- element-wise ops, norms, rope: 1e-5; attention 1e-4 (float16 KV rounded identically on both
  sides, and the rows written to the cache equal bit for bit; Q8_0 KV on opencl: the same
  budget, the cached rows equal but for a division's last bit moving a rounding tie by one step)."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

from localllm.backend import get_backend
from localllm.backend.numpy_ref import NumpyBackend
from localllm.gguf_file import Tensor
from localllm.kernels.quant import R8_TYPES
from localllm.kv_cache import KVCache, dequantize_q8_0
from localllm.synthetic import quantize_q4_k, quantize_q5_k, quantize_q6_k

from support import needs_opencl

WEIGHT_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q5_K, QT.Q6_K]
K_QUANTS = (QT.Q4_K, QT.Q5_K, QT.Q6_K)
MATMUL_SHAPES = [(1, 37, 96), (3, 67, 256), (4, 8, 32), (5, 45, 160), (37, 70, 288), (2, 19, 768), (9, 45, 768)]  # (T, n, k)
OPENCL_EXACT = {QT.Q4_0, QT.Q4_1, QT.Q8_0, QT.Q5_0, QT.F32, QT.BF16, *K_QUANTS}   # the rest: float16


def _opencl(variant: str):
    be = get_backend("opencl")
    if variant == "gpu-kernels":
        be.dev.tiled = True
    elif variant == "split-k":
        be.dev.att_ns = 4
        be.kernels = be.dev.kernels = be.dev._build()
    return be


BACKENDS = {
    "cpu": lambda: get_backend("cpu"),
    "opencl": lambda: _opencl("device-choice"),
    "opencl-gpu-kernels": lambda: _opencl("gpu-kernels"),
    "opencl-split-k": lambda: _opencl("split-k"),
}


def _params(*names: str) -> list:
    return [pytest.param(n, marks=needs_opencl() if n.startswith("opencl") else ()) for n in names]


@pytest.fixture(scope="module", params=_params("cpu", "opencl"))
def be(request):
    return BACKENDS[request.param]()


@pytest.fixture(scope="module", params=_params("cpu", "opencl", "opencl-gpu-kernels"))
def mm_be(request):
    """Matrix products: the GPU kernels are checked whatever the device."""
    return BACKENDS[request.param]()


@pytest.fixture(scope="module", params=_params("cpu", "opencl", "opencl-split-k"))
def att_be(request):
    """Attention: the GPUs' split-K (4 teams per head) is checked whatever the device."""
    return BACKENDS[request.param]()


@pytest.fixture(scope="module")
def ref() -> NumpyBackend:
    return NumpyBackend()


def _tensor(w: np.ndarray, qtype: QT) -> Tensor:
    """A GGUF-like tensor of w [n, k] (or a vector [k]) encoded as qtype."""
    data = {QT.Q4_K: quantize_q4_k, QT.Q5_K: quantize_q5_k, QT.Q6_K: quantize_q6_k}.get(qtype, lambda a: quantize(a, qtype))(w)
    return Tensor("w", qtype, w.shape, np.ascontiguousarray(data).view(np.uint8).reshape(w.shape[0], -1)
                  if w.ndim == 2 else np.ascontiguousarray(data).view(np.uint8))


def _close(got, want: np.ndarray, scale: np.ndarray | float, rel: float) -> None:
    assert got.shape == want.shape and np.all(np.isfinite(got)), (got.shape, want.shape)
    err = np.abs(got - want) / (np.abs(scale) + 1e-30)
    assert err.max() <= rel, f"max relative error {err.max():.3g} > {rel}"


def _matmul_reference(be, t: Tensor) -> tuple[np.ndarray, float]:
    """The weights as `be` multiplies them, float32 [n, k], and the budget for this type."""
    n, k = t.shape
    wf = dequantize(t.data, t.type).reshape(n, k)
    if be.name == "opencl":
        return (wf if t.type in OPENCL_EXACT else wf.astype(np.float16).astype(np.float32)), 1e-4
    return wf, 1e-2 if t.type in R8_TYPES else 1e-5


MATMUL_CASES = [(q, *shape) for q in WEIGHT_TYPES for shape in MATMUL_SHAPES
                if q not in K_QUANTS or shape[2] % 256 == 0]   # k-quants need rows of 256


@pytest.mark.parametrize("qtype,T,n,k", MATMUL_CASES, ids=lambda v: getattr(v, "name", str(v)))
def test_matmul(mm_be, qtype, T, n, k):
    be = mm_be
    rng = np.random.default_rng(T * 1000 + n + k)
    t = _tensor(rng.standard_normal((n, k)).astype(np.float32), qtype)
    x = rng.standard_normal((T, k)).astype(np.float32)
    wf, budget = _matmul_reference(be, t)
    got = be.to_numpy(be.matmul(be.from_numpy(x), be.upload(t)))
    _close(got, x @ wf.T, np.abs(x) @ np.abs(wf).T, budget)


@pytest.mark.parametrize("qtype", [QT.Q4_0, QT.Q4_1, QT.Q8_0, *K_QUANTS, QT.F16, QT.F32], ids=lambda t: t.name)
def test_get_rows(be, qtype):
    """Rows come back exactly as the backend holds them."""
    t = _tensor(np.random.default_rng(1).standard_normal((50, 256)).astype(np.float32), qtype)
    ids = np.array([3, 49, 0, 3, 17])
    np.testing.assert_array_equal(be.to_numpy(be.get_rows(be.upload(t), ids)), _matmul_reference(be, t)[0][ids])


@pytest.mark.parametrize("shape", [(1, 576), (7, 3, 64), (2, 1000), (3, 4, 256)])
def test_rms_norm(be, ref, shape):
    rng = np.random.default_rng(len(shape))
    x, w = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape[-1]).astype(np.float32)
    got = be.to_numpy(be.rms_norm(be.from_numpy(x), be.upload(_tensor(w, QT.F32)), 1e-6))
    _close(got, ref.rms_norm(x, w, 1e-6), np.abs(ref.rms_norm(x, np.abs(w), 1e-6)) + 1e-3, 1e-5)


@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("T,heads,d,n_rot", [(1, 9, 64, 64), (5, 3, 96, 64), (3, 2, 256, 256), (5, 3, 64, 32)])
def test_rope(be, ref, neox, T, heads, d, n_rot):
    x = np.random.default_rng(d).standard_normal((T, heads, d)).astype(np.float32)
    pos = 1000 + np.arange(T)
    got = be.to_numpy(be.rope(be.from_numpy(x), pos, n_rot, 10000.0, neox, 0.5))
    _close(got, ref.rope(x, pos, n_rot, 10000.0, neox, 0.5), 1.0, 1e-5)


@pytest.mark.parametrize("op", ["add", "scale", "swiglu", "geglu"])
def test_elementwise(be, ref, op):
    rng = np.random.default_rng(2)
    a, b = (rng.standard_normal((3, 1001)).astype(np.float32) * 4 for _ in range(2))
    args = (a, 0.37) if op == "scale" else (a, b)
    got = getattr(be, op)(*[be.from_numpy(v) if isinstance(v, np.ndarray) else v for v in args])
    scale = np.abs(a) * (0.37 if op == "scale" else np.abs(b)) + np.abs(a) + 1e-3  # GLUs cancel near 0
    _close(be.to_numpy(got), getattr(ref, op)(*args), scale, 1e-5)


def _cache_rows(cache, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A layer's first n K and V rows as stored (float16), or Q8_0 ones dequantized."""
    if not isinstance(cache, KVCache):
        return cache.layer_numpy(layer, n)
    if cache.kv_type == "q8_0":
        return tuple(dequantize_q8_0(cache.arrays[p][layer, :n], cache.arrays[p + "_d"][layer, :n]) for p in "kv")
    return cache.k[layer, :n], cache.v[layer, :n]


ATTENTION_CASES = [(9, 3, 64, 64, 0), (4, 1, 256, 256, 5), (2, 2, 40, 40, 0), (8, 8, 128, 128, 3), (8, 2, 32, 16, 40),
                   (4, 4, 8, 24, 0)]


@pytest.mark.parametrize("H,KV,dk,dv,window", ATTENTION_CASES)
def test_attention(att_be, ref, H, KV, dk, dv, window):
    _check_attention(att_be, ref, H, KV, dk, dv, window, "f16")


@pytest.mark.parametrize("H,KV,dk,dv,window", [c for c in ATTENTION_CASES if c[2] % 32 == c[3] % 32 == 0])
@pytest.mark.parametrize("variant", _params("opencl", "opencl-split-k"))
def test_attention_q8_0_cache(variant, ref, H, KV, dk, dv, window):
    _check_attention(BACKENDS[variant](), ref, H, KV, dk, dv, window, "q8_0")


def _check_attention(be, ref, H: int, KV: int, dk: int, dv: int, window: int, kv_type: str) -> None:
    """Calls of 7, 3, 250 and 1 rows through one cache (a prefill, small verifies, a long chunk
    that spans many tiles and split-K teams, a decode step) against the reference's cache."""
    rng = np.random.default_rng(H * dk + dv)
    layer = 1
    caches = be.new_kv_cache(2, 272, KV, dk, dv, kv_type), KVCache(2, 272, KV, dk, dv, kv_type)
    for pos0, T in ((0, 7), (7, 3), (10, 250), (260, 1)):
        q, k, v = (rng.standard_normal(s).astype(np.float32) for s in ((T, H, dk), (T, KV, dk), (T, KV, dv)))
        got = be.attention(be.from_numpy(q), be.from_numpy(k), be.from_numpy(v), caches[0], layer, pos0,
                           dk ** -0.5, window)
        want = ref.attention(q, k, v, caches[1], layer, pos0, dk ** -0.5, window)
        _close(be.to_numpy(got), want, 1.0, 1e-4)
        for c in caches:
            c.tokens.extend(range(T))
    for got, want in zip(_cache_rows(caches[0], layer, 261), _cache_rows(caches[1], layer, 261)):
        if kv_type == "f16":
            np.testing.assert_array_equal(got, want)
        else:
            assert np.mean(got == want) > 0.999
            np.testing.assert_allclose(got, want, rtol=0, atol=np.abs(want).max() / 127)
