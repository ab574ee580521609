"""Shared fixtures: the reference directory and the real models (fetched once into the cache)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO.parent / "shared" / "reference"


def _model(name: str) -> Path:
    """Fetch a catalog model once (into $LOCALLLM_HOME or ~/.cache/localllm); skip only when the
    network is truly unreachable."""
    from localllm.catalog import NetworkUnavailable, pull

    try:
        return pull(name, progress=False)
    except NetworkUnavailable as e:
        pytest.skip(f"{name} not cached and the network is unavailable: {e}")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.fail(f"reference outputs missing: {REFERENCE} (shared/ must sit beside the checkout)")
    return REFERENCE


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _model("gemma3-270m")


@pytest.fixture(scope="session")
def smollm2_requantized(smollm2_path, tmp_path_factory) -> dict[str, Path]:
    """SmolLM2 Q8_0 / Q4_0 made as the references were: F32 dequantization, then quantize."""
    from localllm.quantize import quantize_file
    out = tmp_path_factory.mktemp("requant")
    f32 = quantize_file(smollm2_path, out / "f32.gguf", "F32", progress=False)["dst"]
    return {t: quantize_file(f32, out / f"{t}.gguf", t.upper(), progress=False)["dst"] for t in ("q8_0", "q4_0")}


def load_reference(key: str) -> tuple[dict, dict[str, np.ndarray]]:
    """`<key>.json` (cases) and `<key>.npz` (top-10 logits per position) from shared/reference."""
    with open(REFERENCE / f"{key}.json") as f:
        cases = json.load(f)
    return cases, dict(np.load(REFERENCE / f"{key}.npz"))


def closeness(key: str, logits_fn) -> dict[str, float]:
    """The three figures of shared/reference/README.md ("How close is close") over all positions of
    all cases: top-1 agreement, real flips, mean |Δ| at llama.cpp's top token. `logits_fn(ids)`
    returns teacher-forced logits [len(ids), n_vocab]."""
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
