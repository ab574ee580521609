"""Shared fixtures: the real models, fetched once into the cache. Plain helpers (reference data,
closeness figures, skip markers) live in support.py."""
from __future__ import annotations

from pathlib import Path

import pytest


def _model(name: str) -> Path:
    """Fetch a catalog model once (into $LOCALLLM_HOME or ~/.cache/localllm); skip only when the
    network is truly unreachable."""
    from localllm.catalog import NetworkUnavailable, pull

    try:
        return pull(name, progress=False)
    except NetworkUnavailable as e:
        pytest.skip(f"{name} not cached and the network is unavailable: {e}")


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    return _model("smollm2-135m")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    return _model("gemma3-270m")


@pytest.fixture(scope="session")
def qwen25_coder_path() -> Path:
    return _model("qwen2.5-coder-0.5b")


@pytest.fixture(scope="session")
def smollm2_requantized(smollm2_path, tmp_path_factory) -> dict[str, Path]:
    """SmolLM2 Q8_0 / Q4_0 made as the references were: F32 dequantization, then quantize."""
    from localllm.quantize import quantize_file
    out = tmp_path_factory.mktemp("requant")
    f32 = quantize_file(smollm2_path, out / "f32.gguf", "F32", progress=False)["dst"]
    return {t: quantize_file(f32, out / f"{t}.gguf", t.upper(), progress=False)["dst"] for t in ("q8_0", "q4_0")}
