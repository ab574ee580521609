"""Tokenizer: token-exact with llama.cpp on its own test vectors and on the reference prompts."""
from __future__ import annotations

import json
import logging
import random
import time
from functools import lru_cache
from pathlib import Path

import pytest

from localllm.errors import LocalLLMError, UnsupportedModelError
from localllm.gguf_file import GGUFFile
from localllm.tokenizer import PRE_TOKENIZERS, StreamDecoder, Tokenizer
from localllm.tokenizer.merge import _merge_with_queue, merge_symbols
from localllm.tokenizer.pretokenizers import PreSplitter
from localllm.tokenizer.tokenizer import clean_spaces

from support import REFERENCE, llama_cpp_models

# llama.cpp's tokenizer test vectors (test-tokenizer-0), from its sdist: models/ggml-vocab-NAME.gguf
# with NAME.gguf.inp / .out
VOCABS = ["command-r", "deepseek-coder", "deepseek-llm", "falcon", "gpt-2", "llama-bpe", "llama-spm", "mpt", "phi-3",
          "qwen2", "qwen35", "refact", "starcoder"]
# the vocabularies with test vectors whose tokenizer model is not BPE or SentencePiece: refused, named
REFUSED_VOCABS = {"bert-bge": "'bert'", "gemma-4": "'gemma4'"}
BPE_VOCABS = [v for v in VOCABS if v != "llama-spm"]
SEPARATOR = "\n__ggml_vocab_test__\n"


def vocab_path(name: str) -> Path:
    return llama_cpp_models() / f"ggml-vocab-{name}.gguf"


@lru_cache(maxsize=None)
def metadata(path: str) -> dict:
    return GGUFFile(path).metadata


@lru_cache(maxsize=None)
def vocab_tokenizer(name: str) -> Tokenizer:
    return Tokenizer.from_metadata(metadata(str(vocab_path(name))))


def read_vectors(name: str) -> list[tuple[str, list[int]]]:
    """test-tokenizer-0's format: inputs joined by SEPARATOR (which also ends the file), one line
    of space-separated ids per input in the .out file."""
    base = vocab_path(name)
    raw = (base.parent / (base.name + ".inp")).read_bytes().decode("utf-8")
    inputs, pos = [], 0
    while pos < len(raw):
        nxt = raw.find(SEPARATOR, pos)
        if nxt < 0:
            inputs.append(raw[pos:])
            break
        inputs.append(raw[pos:nxt])
        pos = nxt + len(SEPARATOR)
    lines = (base.parent / (base.name + ".out")).read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    assert len(inputs) == len(lines), f"{name}: {len(inputs)} inputs, {len(lines)} outputs"
    return [(text, [int(t) for t in line.split()]) for text, line in zip(inputs, lines)]


@pytest.mark.parametrize("name", sorted(REFUSED_VOCABS))
def test_llama_cpp_vocab_of_another_tokenizer_model_is_refused(name: str) -> None:
    with pytest.raises(UnsupportedModelError, match=f"unsupported tokenizer model {REFUSED_VOCABS[name]}"):
        vocab_tokenizer(name)


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vocab_vectors(name: str) -> None:
    vectors = read_vectors(name)
    tok = vocab_tokenizer(name)
    wrong = [text for text, expected in vectors if tok.encode(text, add_bos=False, special=False) != expected]
    assert len(vectors) > 20 and not wrong, f"{len(wrong)} of {len(vectors)} differ: {wrong[:5]!r}"


# --- the real models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path) -> Tokenizer:
    return Tokenizer.from_metadata(metadata(str(smollm2_path)))


@pytest.fixture(scope="module")
def gemma3(gemma3_path: Path) -> Tokenizer:
    return Tokenizer.from_metadata(metadata(str(gemma3_path)))


REFERENCE_MODELS = [("smollm2", "smollm2-135m-q4_1"), ("gemma3", "gemma3-270m-q4_k_m")]


def reference_cases(key: str) -> list[dict]:
    with open(REFERENCE / f"{key}.json") as f:
        return json.load(f)["cases"]


@pytest.mark.parametrize("fixture,key", REFERENCE_MODELS)
def test_reference_prompts_encode(fixture: str, key: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(fixture)
    for case in reference_cases(key):
        assert tok.encode(case["prompt"], add_bos=True, special=True) == case["prompt_tokens"], case["prompt"][:60]


@pytest.mark.parametrize("fixture,key", REFERENCE_MODELS)
def test_reference_decode(fixture: str, key: str, request: pytest.FixtureRequest) -> None:
    """decode(prompt + greedy) gives back the prompt and the greedy text; with special=True the
    BOS token is rendered as its text (Gemma's '<bos>'), with special=False control tokens vanish."""
    tok = request.getfixturevalue(fixture)
    bos = tok.token_to_piece(tok.bos_id).decode() if tok.add_bos else ""
    for case in reference_cases(key):
        ids = case["prompt_tokens"] + case["greedy_tokens"]
        assert tok.decode(ids, special=True) == bos + case["prompt"] + case["greedy_text"]
        assert tok.decode(case["greedy_tokens"], special=False) == case["greedy_text"]
        if "<|im_start|>" not in case["prompt"] or fixture == "gemma3":  # real control tokens drop out
            assert tok.decode(ids, special=False) == case["prompt"] + case["greedy_text"]


def test_smollm2_special_tokens(smollm2: Tokenizer) -> None:
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.add_bos, smollm2.add_eos) == (1, 2, False, False)
    # <|endoftext|>, <|im_end|> (EOS) and <reponame> (llama.cpp's FIM repo token) end generation
    assert smollm2.eog_ids == frozenset({0, 2, 4})
    text = "<|im_start|>user"
    assert smollm2.encode(text, special=True)[0] == 1
    assert 1 not in smollm2.encode(text, special=False)
    assert smollm2.decode(smollm2.encode(text, special=False)) == text
    assert smollm2.decode([1, 4093], special=False) == "user"
    assert smollm2.token_to_piece(1) == b"<|im_start|>" and smollm2.token_to_piece(1, special=False) == b""


def test_gemma3_special_tokens(gemma3: Tokenizer) -> None:
    assert (gemma3.bos_id, gemma3.eos_id, gemma3.add_bos, gemma3.add_eos) == (2, 1, True, False)
    assert not gemma3.add_space_prefix  # the file says so; llama.cpp's SPM default would be True
    assert {1, 106} <= gemma3.eog_ids  # <eos>, <end_of_turn>
    turn = "<start_of_turn>user\nHi<end_of_turn>"
    parsed = gemma3.encode(turn, add_bos=False, special=True)
    assert parsed[0] == gemma3.vocab.token_to_id["<start_of_turn>"] and parsed[-1] == 106
    plain = gemma3.encode(turn, add_bos=False, special=False)
    assert 106 not in plain and gemma3.decode(plain) == turn
    # user-defined tokens ("\n\n", runs of spaces) are cut out even with special=False
    assert gemma3.encode("a\n\nb", add_bos=False, special=False)[1] == gemma3.vocab.token_to_id["\n\n"]


def test_gemma3_builds_fast(gemma3_path: Path) -> None:
    md = metadata(str(gemma3_path))
    start = time.perf_counter()
    Tokenizer.from_metadata(md)
    assert time.perf_counter() - start < 1.0


# --- detokenization ----------------------------------------------------------------------------

STREAM_TEXTS = [
    "Emoji 🚀🔥 and flags 🇫🇷, ZWJ 👩‍💻 and 😶‍🌫️.",
    "中文测试：机器学习。日本語のテキスト。한국어 문장.",
    "Mixed: Привет, мир! مرحبا بالعالم 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ 𓀀 done",
    "Rare CJK 𠜎𠜱𠝹𠱓 and ancient 𐌰𐌱𐌲 scripts",
]


def stream(tok: Tokenizer, ids: list[int], special: bool = False) -> list[str]:
    dec = StreamDecoder(tok, special=special)
    return [dec.feed(i) for i in ids] + [dec.flush()]


@pytest.mark.parametrize("fixture", ["smollm2", "gemma3"])
def test_stream_decoder_matches_decode(fixture: str, request: pytest.FixtureRequest) -> None:
    tok = request.getfixturevalue(fixture)
    for text in STREAM_TEXTS:
        ids = tok.encode(text, add_bos=False)
        chunks = stream(tok, ids)
        assert "".join(chunks) == tok.decode(ids, special=False) == text
        assert all("\ufffd" not in chunk for chunk in chunks)


def complete_prefix(data: bytes) -> str:
    """The longest prefix of `data` that is whole UTF-8 characters."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    raise AssertionError(f"invalid UTF-8: {data!r}")


@pytest.mark.parametrize("fixture", ["smollm2", "gemma3"])
def test_stream_decoder_holds_partial_characters(fixture: str, request: pytest.FixtureRequest) -> None:
    """Characters split over several tokens come out whole, with the token that completes them."""
    tok = request.getfixturevalue(fixture)
    text = "𠜎🦙 ꙮ𓀀"  # rare enough that both vocabularies split them into byte tokens
    ids = tok.encode(text, add_bos=False)
    assert any(not complete_prefix(tok.token_to_piece(i)) for i in ids), "no token holds a partial character"
    seen, expected = b"", []
    for i in ids:
        before = complete_prefix(seen)
        seen += tok.token_to_piece(i)
        expected.append(complete_prefix(seen)[len(before):])
    assert stream(tok, ids) == expected + [""]


def test_stream_decoder_flush_replaces_incomplete(smollm2: Tokenizer) -> None:
    ids = smollm2.encode("🦙", add_bos=False)
    dec = StreamDecoder(smollm2)
    assert "".join(dec.feed(i) for i in ids[:-1]) == ""
    assert dec.flush() == "\ufffd"


def test_spm_leading_space_rule() -> None:
    tok = vocab_tokenizer("llama-spm")
    ids = tok.encode("Hello world", add_bos=True)
    assert ids[0] == tok.bos_id and tok.decode(ids[1:]) == "Hello world"
    assert tok.token_to_piece(ids[1]) == b" Hello"  # the piece keeps its space, decode drops it
    # llama.cpp strips the space from the first token only, and here that is BOS (rendered empty)
    assert tok.decode(ids, special=False) == " Hello world"
    assert "".join(stream(tok, ids[1:])) == "Hello world"


@pytest.mark.parametrize("name", BPE_VOCABS)
def test_bpe_round_trip(name: str) -> None:
    """decode(encode(text)) == text, up to llama.cpp's clean_up_tokenization_spaces where the
    vocabulary enables it (GPT-2, Llama 3, Falcon...: ' ,' becomes ',')."""
    tok = vocab_tokenizer(name)
    rng = random.Random(0)
    alphabet = "abcXYZ 019\n\t,.!?'\"(){}<>é漢字Ж🙂\u00a0\u3000-_/\\#@"
    texts = STREAM_TEXTS + ["  leading and trailing  ", "tabs\tand\nnewlines\r\n", "it's 're 've 'll", "x ' y ."]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(200)]
    for text in texts:
        expected = clean_spaces(text.encode()).decode() if tok.clean_spaces else text
        assert tok.decode(tok.encode(text, add_bos=False, special=False)) == expected, repr(text)


@pytest.mark.parametrize("name", VOCABS)
def test_stream_matches_decode_with_clean_spaces(name: str) -> None:
    tok = vocab_tokenizer(name)
    rng = random.Random(1)
    for _ in range(100):
        parts = ["a", "b", " ", "'", "s", "re", ".", ",", "?", " ' ", "é", "🙂"]
        text = "".join(rng.choice(parts) for _ in range(30))
        ids = tok.encode(text, add_bos=False)
        assert "".join(stream(tok, ids)) == tok.decode(ids, special=False), repr(text)


def test_clean_spaces_like_llama_cpp() -> None:
    assert clean_spaces(b"Hello , world ! It 's a ' quoted ' thing they 're here . I 'll") == \
        b"Hello, world! It's a'quoted'thing they're here. I 'll"


def test_token_to_piece_bytes() -> None:
    spm = vocab_tokenizer("llama-spm")
    assert spm.token_to_piece(spm.vocab.token_to_id["<0x0A>"]) == b"\n"
    gpt2 = vocab_tokenizer("gpt-2")
    assert gpt2.token_to_piece(gpt2.vocab.token_to_id["\u0120Hello"]) == b" Hello"
    with pytest.raises(LocalLLMError):
        gpt2.token_to_piece(gpt2.n_vocab)


# --- construction ------------------------------------------------------------------------------

def test_unknown_tokenizer_model_is_rejected() -> None:
    md = dict(metadata(str(vocab_path("gpt-2"))), **{"tokenizer.ggml.model": "bert"})
    with pytest.raises(UnsupportedModelError) as err:
        Tokenizer.from_metadata(md)
    assert "\n" not in str(err.value)


def test_missing_pre_falls_back_to_default(caplog: pytest.LogCaptureFixture) -> None:
    md = dict(metadata(str(vocab_path("gpt-2"))))
    del md["tokenizer.ggml.pre"]
    with caplog.at_level(logging.WARNING):
        tok = Tokenizer.from_metadata(md)
    assert "default" in caplog.text
    assert tok.decode(tok.encode("Hello world 12345")) == "Hello world 12345"


@pytest.mark.parametrize("pre", ["no-such-pre", "gemma4"])
def test_unknown_pre_is_refused_unless_forced(pre, monkeypatch) -> None:
    """As llama.cpp: an unknown (or here unsupported) family is an error naming it, never a silent
    fallback; LOCALLLM_PRE_TOKENIZER forces a family."""
    md = dict(metadata(str(vocab_path("llama-bpe"))), **{"tokenizer.ggml.pre": pre})
    with pytest.raises(UnsupportedModelError, match=f"pre-tokenizer '{pre}'") as err:
        Tokenizer.from_metadata(md)
    assert "\n" not in str(err.value)
    monkeypatch.setenv("LOCALLLM_PRE_TOKENIZER", "llama-bpe")
    assert Tokenizer.from_metadata(md).encode("Hello, y'all!", add_bos=False) == [9906, 11, 379, 65948, 0]


def test_bpe_defaults_from_llama_cpp() -> None:
    assert vocab_tokenizer("llama-bpe").add_bos  # llama3 pre-tokenizer: add BOS unless told otherwise
    assert not vocab_tokenizer("gpt-2").add_bos
    assert vocab_tokenizer("deepseek-coder").add_bos  # from metadata
    assert vocab_tokenizer("llama-bpe").encode("Hi")[0] == 128000
    assert vocab_tokenizer("llama-bpe").eog_ids >= {128001, 128009}  # <|end_of_text|>, <|eot_id|>


# llama.cpp (llama-cpp-python 0.3.36) on PRE_TOKENIZER_TEXT with the llama-bpe vocabulary, its
# tokenizer.ggml.pre set to each name: one family per entry, pinned so the table stays llama.cpp's.
PRE_TOKENIZER_TEXT = ("Hello, y'all! I'M 3333333 $12.50 ~~ 我想在apple工作1314151天～ カタカナ 한국어 Ελλάδα "
                      "naïve cafe\u0301 🚀🇫🇷 <sentinel:3> IMGIMGABZ\n\n\t  end  ")
PRE_TOKENIZER_IDS = {
    "default": [
        9906, 11, 379, 6, 543, 0, 358, 6, 44, 220, 8765, 8765, 18, 220, 3, 717, 13, 1135, 220, 5940, 106026,
        101067, 19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452, 104008,
        32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 220, 27,
        25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "llama-bpe": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 106026, 101067,
        19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452, 104008, 32179,
        118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366, 25526,
        30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "deepseek-llm": [
        9906, 11, 379, 6, 543, 0, 358, 6, 44, 220, 1644, 1644, 8765, 400, 717, 13, 1135, 78877, 220, 37046,
        101067, 19000, 23182, 102301, 1032, 975, 9690, 36827, 21909, 220, 71493, 47307, 71493, 96452, 220,
        112699, 32179, 118681, 4415, 38672, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229,
        115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 198, 198, 3762, 842, 256
    ],
    "deepseek-coder": [
        9906, 11, 379, 6, 543, 0, 358, 6, 44, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 220, 37046, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 220,
        71493, 47307, 71493, 96452, 220, 112699, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222,
        9468, 229, 104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 198, 198,
        3762, 842, 256
    ],
    "deepseek-v3": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 220, 37046,
        101067, 19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 220, 71493, 47307, 71493, 96452,
        104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115,
        366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "falcon": [
        9906, 11, 379, 6, 543, 0, 358, 6, 44, 220, 8765, 8765, 18, 220, 3, 717, 13, 1135, 220, 5940, 106026,
        101067, 19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452, 104008,
        32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 220, 27,
        25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "starcoder": [
        9906, 11, 379, 6, 543, 0, 358, 6, 44, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "gpt-2": [
        9906, 11, 379, 6, 543, 0, 358, 6, 44, 220, 1644, 1644, 8765, 400, 717, 13, 1135, 78877, 106026,
        101067, 19000, 23182, 102301, 1032, 975, 9690, 36827, 21909, 106555, 47307, 71493, 96452, 104008,
        32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366,
        25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "qwen2": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "stablelm2": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "bloom": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 1644, 1644, 8765, 400, 717, 13, 1135, 78877, 106026,
        101067, 19000, 23182, 102301, 1032, 975, 9690, 36827, 21909, 106555, 47307, 71493, 96452, 104008,
        32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366,
        25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "viking": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "chatglm-bpe": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 106026, 101067,
        19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452, 104008, 32179,
        118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366, 25526,
        30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "tekken": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "chameleon": [
        9906, 11, 379, 6, 543, 0, 358, 6, 44, 220, 18, 18, 18, 18, 18, 18, 18, 220, 3, 16, 17, 13, 20, 15,
        220, 93, 93, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 220, 27, 25526, 30808, 25, 18, 29, 220, 31446, 31446, 1905, 57, 198, 198, 197,
        256, 408, 256
    ],
    "gpt-4o": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 106026, 101067,
        19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452, 104008, 32179,
        118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366, 25526,
        30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "superbpe": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 8765, 8765, 400, 717, 13, 1135, 78877, 106026, 101067,
        19000, 23182, 102301, 16, 16104, 9690, 36827, 21909, 106555, 47307, 71493, 96452, 104008, 32179,
        118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366, 25526,
        30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 8860, 408, 256
    ],
    "seed-coder": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "bailingmoe": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "kimi-k2": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 220, 37046,
        101067, 19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452, 104008,
        32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366,
        25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "jais-2": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 106026, 101067,
        19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452, 104008, 32179,
        118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366, 25526,
        30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "smollm": [
        9906, 11, 379, 6, 543, 0, 358, 6, 44, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229,
        104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "dbrx": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 106026, 101067,
        19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452, 104008, 32179,
        118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229, 115, 366, 25526,
        30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "qwen35": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468,
        229, 104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842,
        256
    ],
    "laguna": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468,
        229, 104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842,
        256
    ],
    "tiny_aya": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 8765, 8765, 400, 717, 13, 1135, 78877, 106026,
        101067, 19000, 23182, 102301, 16, 16104, 9690, 36827, 21909, 106555, 47307, 71493, 96452,
        104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229,
        115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "exaone-moe": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468,
        229, 104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842,
        256
    ],
    "granite-embed-multi-97m": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 106026,
        101067, 19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452,
        104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229,
        115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "minicpm5": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 8765, 8765, 18, 400, 717, 13, 1135, 78877, 106026,
        101067, 19000, 23182, 102301, 9263, 18136, 16, 36827, 21909, 106555, 47307, 71493, 96452,
        104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468, 229, 104, 9468, 229,
        115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842, 256
    ],
    "spark2_5": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 220, 37046, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 220,
        71493, 47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222,
        9468, 229, 104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 198, 198,
        3762, 842, 256
    ],
    "youtu": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 220, 37046, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 220,
        71493, 47307, 71493, 96452, 220, 112699, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248,
        222, 9468, 229, 104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271,
        3762, 842, 256
    ],
    "ufakzeka": [
        9906, 11, 379, 65948, 0, 358, 28703, 220, 18, 18, 18, 18, 18, 18, 18, 400, 16, 17, 13, 20, 15,
        78877, 106026, 101067, 19000, 23182, 102301, 16, 18, 16, 19, 16, 20, 16, 36827, 21909, 106555,
        47307, 71493, 96452, 104008, 32179, 118681, 95980, 588, 42030, 54939, 11410, 248, 222, 9468,
        229, 104, 9468, 229, 115, 366, 25526, 30808, 25, 18, 29, 44683, 31446, 1905, 57, 271, 3762, 842,
        256
    ],
}


@pytest.mark.parametrize("pre", sorted(PRE_TOKENIZER_IDS))
def test_pre_tokenizer_families_match_llama_cpp(pre: str) -> None:
    md = dict(metadata(str(vocab_path("llama-bpe"))), **{"tokenizer.ggml.pre": pre})
    ids = Tokenizer.from_metadata(md).encode(PRE_TOKENIZER_TEXT, add_bos=False, special=False)
    assert ids == PRE_TOKENIZER_IDS[pre]


def test_unicode_categories_are_llama_cpps(smollm2: Tokenizer) -> None:
    """U+142CA is a letter since Unicode 16 (the `regex` module's data) but unassigned in llama.cpp's
    Unicode 15.1 table, so llama.cpp groups it with the apostrophe as punctuation (ids from llama.cpp)."""
    ids = smollm2.encode("i\U000142ca'so6e", add_bos=False, special=False)
    assert ids == [89, 187, 238, 229, 228, 23, 559, 38, 85]


@pytest.mark.parametrize("name", sorted(PRE_TOKENIZERS))
def test_every_pre_tokenizer_splits_losslessly(name: str) -> None:
    text = "Hello, y'all! 3333333 我想在apple工作1314151天～ Привет  \n\n\t 🚀 <sentinel:12> IMGIMGABZ"
    assert "".join(PreSplitter(PRE_TOKENIZERS[name].regexes).split(text)) == text


def test_pre_tokenizer_splits() -> None:
    llama3 = PreSplitter(PRE_TOKENIZERS["llama3"].regexes)
    assert llama3.split("3333333 I'M here") == ["333", "333", "3", " I", "'M", " here"]
    superbpe = PreSplitter(PRE_TOKENIZERS["superbpe"].regexes)
    assert superbpe.split("1234567") == ["1", "234", "567"]
    smollm = PreSplitter(PRE_TOKENIZERS["smollm"].regexes)
    assert smollm.split("a 123  b") == ["a", " ", "1", "2", "3", " ", " b"]


def test_merge_queue_matches_scan() -> None:
    """The long-word path (priority queue) merges in the same order as the plain scan, ties
    going to the leftmost pair."""
    rng = random.Random(2)
    for _ in range(300):
        pairs = {(rng.choice("abc"), rng.choice("abc")): rng.choice([1.0, 2.0, 3.0]) for _ in range(5)}

        def priority(a: str, b: str):
            if len(a) + len(b) > 6 or (a[-1], b[0]) not in pairs:
                return None
            return pairs[a[-1], b[0]] + len(a) + len(b)

        word = [rng.choice("abc") for _ in range(rng.randint(2, 40))]
        assert _merge_with_queue(list(word), priority) == merge_symbols(list(word), priority)
