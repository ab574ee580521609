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
    from localllm.models import NetworkUnavailable, pull

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


def load_reference(key: str) -> tuple[dict, dict[str, np.ndarray]]:
    """`<key>.json` (cases) and `<key>.npz` (top-10 logits per position) from shared/reference."""
    with open(REFERENCE / f"{key}.json") as f:
        cases = json.load(f)
    return cases, dict(np.load(REFERENCE / f"{key}.npz"))
