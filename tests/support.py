"""What the tests share: where reference data lives, the closeness figures against llama.cpp, and
the skip markers. Nothing here needs `../shared`: llama.cpp's model outputs ship in tests/data,
its tokenizer vocabularies and chat templates come from llama-cpp-python's sdist on PyPI, fetched
once into the cache and checked against a pinned sha256."""
from __future__ import annotations

import json
import tarfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
REFERENCE = DATA / "reference"       # llama.cpp's outputs for the catalog models (see its README)

# llama.cpp's own test data (models/ggml-vocab-*.gguf{,.inp,.out}, models/templates/*.jinja) as
# vendored in this llama-cpp-python release, the one the reference outputs were made with.
LLAMA_CPP_SDIST = ("llama-cpp-python", "0.3.36", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")
_SDIST_MODELS = "vendor/llama.cpp/models/"


def _wanted(member: str) -> bool:
    name = member.split(_SDIST_MODELS, 1)[-1]
    return name.startswith("ggml-vocab-") or (name.startswith("templates/") and name.endswith(".jinja"))


@lru_cache(maxsize=None)
def llama_cpp_models() -> Path:
    """llama.cpp's `models/` folder (vocabularies, test vectors, templates), extracted once from the
    pinned sdist into the cache; skips the calling test only when the network is unreachable."""
    from localllm.catalog import NetworkUnavailable, models_home
    from localllm.catalog.fetch import fetch_release_file

    project, version, sha256 = LLAMA_CPP_SDIST
    out = models_home() / "pypi" / f"{project}-{version}-models"
    done = out / ".complete"
    if done.is_file():
        return out
    try:
        sdist = fetch_release_file(project, version, sha256, progress=False)
    except NetworkUnavailable as e:
        pytest.skip(f"llama.cpp's test data ({project} {version} sdist) not cached and the network is unavailable: {e}")
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and _SDIST_MODELS in m.name and _wanted(m.name)]
        for m in members:
            m.name = m.name.split(_SDIST_MODELS, 1)[1]
        tar.extractall(out, members=members, filter="data")
    done.write_text(json.dumps(sorted(m.name for m in members)))
    return out


def load_reference(key: str) -> tuple[dict, dict[str, np.ndarray]]:
    """`<key>.json` (cases) and `<key>.npz` (top-10 logits per position) from tests/data/reference."""
    with open(REFERENCE / f"{key}.json") as f:
        cases = json.load(f)
    return cases, dict(np.load(REFERENCE / f"{key}.npz"))


def closeness(key: str, logits_fn) -> dict[str, float]:
    """The three figures of tests/data/reference/README.md ("How close is close") over all
    positions of all cases: top-1 agreement, real flips, mean |Δ| at llama.cpp's top token.
    `logits_fn(ids)` returns teacher-forced logits [len(ids), n_vocab]."""
    return figures(*load_reference(key), logits_fn)


def figures(cases: dict, npz: dict[str, np.ndarray], logits_fn) -> dict[str, float]:
    """closeness's figures for `cases` (the `<key>.json` layout) against `npz` (top-10 per position)."""
    agree = flips = n = 0
    dsum = 0.0
    for i, case in enumerate(cases["cases"]):
        ids = case["prompt_tokens"] + case["greedy_tokens"]
        logits = logits_fn(ids)
        ref_ids, ref_logits = npz[f"top10_ids_{i}"], npz[f"top10_logits_{i}"]   # [n, 10]
        pick = logits.argmax(-1)
        same = pick == ref_ids[:, 0]
        agree += int(same.sum())
        n += len(ids)
        for p in np.flatnonzero(~same):
            row = list(ref_ids[p])
            if pick[p] not in row or ref_logits[p, 0] - ref_logits[p, row.index(pick[p])] >= 1.0:
                flips += 1
        dsum += float(np.abs(logits[np.arange(len(ids)), ref_ids[:, 0]] - ref_logits[:, 0]).sum())
    return {"top1": agree / n, "real_flips": flips, "mean_abs_diff": dsum / n, "positions": n}


def assert_close_to_llama_cpp(fig: dict[str, float]) -> None:
    """The bar every issue uses: top-1 >= 0.95, at most 2 real flips, mean |Δ| <= 0.3."""
    assert fig["top1"] >= 0.95, fig
    assert fig["real_flips"] <= 2, fig
    assert fig["mean_abs_diff"] <= 0.3, fig


@lru_cache(maxsize=None)
def opencl_missing() -> str:
    """Why OpenCL tests cannot run here, or '' when a platform with a device exists."""
    try:
        from localllm.backend.opencl import OpenCLError, list_devices
    except ImportError:
        return "pyopencl is not installed (pip install 'pyopencl[pocl]')"
    try:
        return "" if list_devices() else "no OpenCL device"
    except OpenCLError as e:
        return f"no OpenCL platform: {e}"


def needs_opencl() -> pytest.MarkDecorator:
    """Skip marker for tests that need an OpenCL device, saying why there is none."""
    why = opencl_missing()
    return pytest.mark.skipif(bool(why), reason=why or "an OpenCL device exists")
