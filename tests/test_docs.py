"""The contributor guides point at files and names that exist: every `path` and `path:name` in
ARCHITECTURE.md and CONTRIBUTING.md (a guide that names a moved file misleads the next reader)."""
from __future__ import annotations

import re

import pytest

from support import REPO

GUIDES = ["ARCHITECTURE.md", "CONTRIBUTING.md"]
# `models/llama.py`, `kernels/ops.py:attention`, `localllm/backend/base.py:Backend`
REFERENCE = re.compile(r"`((?:localllm|models|kernels|tests|bench|docs)/[\w/<>.-]*?)(?::([\w.]+))?`")


def _references(guide: str) -> list[tuple[str, str | None]]:
    return [(path, name) for path, name in REFERENCE.findall((REPO / guide).read_text())
            if "<" not in path and "*" not in path]


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_paths_and_names_exist(guide):
    refs = _references(guide)
    assert len(refs) > 10
    missing = []
    for path, name in refs:
        f = REPO / path
        if not f.exists():
            missing.append(path)
        elif name:
            last = name.split(".")[-1]
            if not re.search(rf"^\s*(def|class)\s+{last}\b|^\s*{last}\s*[:=]", f.read_text(), re.M):
                missing.append(f"{path}:{name}")
    assert not missing, f"{guide} names what does not exist: {missing}"
