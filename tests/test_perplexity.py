"""Perplexity against llama-perplexity's figures (tests/data/reference/README.md: the GPL-3 text, -c 128)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import localllm
from localllm.perplexity import PerplexityError, perplexity

from support import DATA

GPL3 = DATA / "GPL-3"   # a verbatim copy of /usr/share/common-licenses/GPL-3, the text llama-perplexity read

# llama-perplexity -c 128 -b 128 on the GPL-3 text: PPL and its ± figure
LLAMA_CPP = {"smollm2_path": (24.2139, 1.19), "gemma3_path": (18.4456, 0.88)}


@pytest.fixture(scope="module")
def gpl3() -> str:
    return GPL3.read_text()


@pytest.mark.parametrize("fixture", list(LLAMA_CPP))
def test_gpl3_perplexity_matches_llama_cpp(request, gpl3, fixture):
    llm = localllm.load(request.getfixturevalue(fixture), n_ctx=128)
    try:
        r = perplexity(llm, gpl3, n_ctx=128, progress=False)
    finally:
        llm.close()
    ppl, stderr = LLAMA_CPP[fixture]
    print(fixture, r)
    assert r["n_tokens_scored"] == r["n_chunks"] * 63  # positions 64..126 of each chunk
    assert abs(r["ppl"] / ppl - 1) < 0.01, r
    assert abs(r["ppl_stderr"] / stderr - 1) < 0.05, r


def test_too_short_text_is_refused(smollm2_path):
    llm = localllm.load(smollm2_path, n_ctx=128)
    try:
        with pytest.raises(PerplexityError, match="needs at least 256"):
            perplexity(llm, "far too short", n_ctx=128, progress=False)
        with pytest.raises(PerplexityError, match="between 4 and"):
            perplexity(llm, "x" * 10000, n_ctx=4096, progress=False)
    finally:
        llm.close()


class _FakeLLM:
    """Logits that put probability 1/2 on token 0 and spread the rest: the expected NLL of every
    scored position is known, and the calls show how the text was chunked."""

    n_ctx, n_vocab = 64, 8

    def __init__(self) -> None:
        self.tokenizer = SimpleNamespace(add_bos=True, add_eos=False, bos_id=7)
        self.calls: list[list[int]] = []

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        assert special is False  # llama-perplexity does not parse special tokens in the text
        return [7] + [int(c) for c in text]

    def logits(self, ids: list[int]) -> np.ndarray:
        self.calls.append(list(ids))
        row = np.full(self.n_vocab, np.log(1 / 14), np.float32)
        row[0] = np.log(1 / 2)
        return np.tile(row, (len(ids), 1))


def test_chunking_and_scored_positions():
    llm = _FakeLLM()
    text = "".join(str(i % 2) for i in range(16 * 4 + 10))  # 75 tokens with BOS -> 4 chunks of 16
    r = perplexity(llm, text, n_ctx=16, progress=False)
    assert [c[0] for c in llm.calls] == [7, 7, 7, 7]  # every chunk starts with BOS
    assert [len(c) for c in llm.calls] == [16] * 4
    assert r["n_chunks"] == 4 and r["n_tokens_scored"] == 4 * 7  # positions 8..14 predict 9..15
    tokens = llm.tokenize(text, special=False)
    targets = [t for i in range(4) for t in tokens[i * 16 + 9:(i + 1) * 16]]
    nll = np.where(np.array(targets) == 0, np.log(2), np.log(14))
    assert r["nll_mean"] == pytest.approx(nll.mean(), rel=1e-6)
    assert r["ppl_stderr"] == pytest.approx(nll.std() / np.sqrt(len(nll) - 1) * r["ppl"], rel=1e-6)


def test_cli_error_is_one_line(smollm2_path, tmp_path):
    from click.testing import CliRunner

    from localllm.cli_tools import perplexity_cmd
    short = tmp_path / "short.txt"
    short.write_text("Only a few words.")
    r = CliRunner().invoke(perplexity_cmd, [str(smollm2_path), str(short), "-c", "128", "--json"])
    assert r.exit_code == 1
    assert r.stderr.startswith("error: the text is") and r.stderr.count("\n") == 1
