"""The vocabulary as llama.cpp's `llama_vocab::impl::load` reads it from GGUF metadata: token texts
and attributes, special token ids, the add-BOS/EOS defaults, and the end-of-generation set with
llama.cpp's text-based auto-detection (which also promotes the tokens it finds to CONTROL)."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ..errors import GGUFError, UnsupportedModelError, quoted
from .pretokenizers import PRE_TOKENIZERS, UNSUPPORTED_PRE_TOKENIZERS, PreTokenizer

log = logging.getLogger(__name__)
ENV_PRE_TOKENIZER = "LOCALLLM_PRE_TOKENIZER"   # forces a pre-tokenizer family (a file with an unknown name)

# llama_token_attr bits
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# GGUF token_type (0 undefined, 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte)
# -> attribute; any other value is undefined (0), as in llama.cpp.
_TYPE_TO_ATTR = np.array([0, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED, ATTR_UNUSED,
                          ATTR_BYTE, 0], dtype=np.int32)

_BYTE_TEXT = re.compile(r"<0x[0-9A-Fa-f]{2}>")

# Texts llama.cpp recognises when the metadata does not name the token (first found wins here;
# llama.cpp takes whichever its hash map yields first, which only matters for vocabularies holding
# several, and all of them are end-of-generation tokens anyway).
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
              "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
_FIM_TEXTS = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
                "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
                "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
                "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_EOG_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
              "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
              "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
              "<｜end▁of▁sentence｜>", "[e~[")
# gpt-oss: llama.cpp always renders these, whatever the file says.
_ALWAYS_USER_DEFINED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")

# metadata key suffix (tokenizer.ggml.<key>_token_id) -> attribute, in llama.cpp's order: the
# deprecated prefix/suffix/middle keys come last and win.
_SPECIAL_KEYS = (("bos", "bos"), ("eos", "eos"), ("eot", "eot"), ("eom", "eom"), ("unknown", "unk"),
                 ("seperator", "sep"), ("padding", "pad"), ("mask", "mask"), ("fim_pre", "fim_pre"),
                 ("fim_suf", "fim_suf"), ("fim_mid", "fim_mid"), ("fim_pad", "fim_pad"),
                 ("fim_rep", "fim_rep"), ("fim_sep", "fim_sep"), ("prefix", "fim_pre"),
                 ("suffix", "fim_suf"), ("middle", "fim_mid"))


@dataclass
class Vocab:
    """Token texts, attributes and the special-token configuration of one GGUF vocabulary."""

    model: str                      # 'gpt2' (byte-level BPE) or 'llama' (SentencePiece)
    pre_name: str
    pre: Optional[PreTokenizer]     # BPE only
    tokens: list[str]
    token_to_id: dict[str, int]
    attrs: np.ndarray               # int32 llama_token_attr per token
    scores: Optional[np.ndarray]    # float32, SentencePiece merge scores
    merges: list[str]
    special: dict[str, Optional[int]]
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    clean_spaces: bool
    eog_ids: frozenset[int]

    @classmethod
    def from_metadata(cls, md: dict[str, Any]) -> "Vocab":
        model = md.get("tokenizer.ggml.model")
        if model not in ("gpt2", "llama"):
            raise UnsupportedModelError(
                f"unsupported tokenizer model {quoted(model)} (supported: 'gpt2' BPE, 'llama' SentencePiece)")
        pre_name, pre = _pre_tokenizer(md) if model == "gpt2" else ("default", None)
        tokens, token_to_id = _token_texts(md)
        vocab = cls(
            model=model, pre_name=pre_name, pre=pre, tokens=tokens, token_to_id=token_to_id,
            attrs=_token_attrs(md, len(tokens)), scores=_scores(md, len(tokens)),
            merges=list(md.get("tokenizer.ggml.merges") or ()),
            special=_default_special(model, pre),
            add_bos=model == "llama" or bool(pre and pre.add_bos), add_eos=False,
            add_space_prefix=bool(md.get("tokenizer.ggml.add_space_prefix", model == "llama")),
            clean_spaces=bool(pre and pre.clean_spaces), eog_ids=frozenset(),
        )
        _check_byte_tokens(tokens, vocab.attrs)
        if model == "gpt2" and not vocab.merges and pre_name != "kimi-k2":
            raise UnsupportedModelError("BPE vocabulary without tokenizer.ggml.merges")
        vocab._read_special_ids(md)
        vocab._read_add_flags(md)
        vocab._detect_special_by_text()
        vocab._apply_model_quirks(md)
        vocab.eog_ids = frozenset(vocab._end_of_generation())
        return vocab

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def attr(self, token_id: int) -> int:
        return int(self.attrs[token_id])

    def special_token_ids(self) -> list[int]:
        """llama.cpp's cache_special_tokens: control, user-defined and unknown tokens, longest text
        first (ties by id; llama.cpp's unstable sort leaves their order unspecified)."""
        ids = np.flatnonzero(self.attrs & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)).tolist()
        return sorted(ids, key=lambda i: -len(self.tokens[i]))

    def _read_special_ids(self, md: dict[str, Any]) -> None:
        n = self.n_vocab
        for name, value in self.special.items():
            if value is not None and value >= n:
                log.warning("default special token %s = %d out of vocab range, disabling", name, value)
                self.special[name] = None
        for key, name in _SPECIAL_KEYS:
            value = md.get(f"tokenizer.ggml.{key}_token_id")
            if value is None:
                continue
            if not 0 <= int(value) < n:
                log.warning("bad special token tokenizer.ggml.%s_token_id = %s, keeping %s",
                            key, value, self.special[name])
            else:
                self.special[name] = int(value)

    def _read_add_flags(self, md: dict[str, Any]) -> None:
        self.add_bos = bool(md.get("tokenizer.ggml.add_bos_token", self.add_bos))
        self.add_eos = bool(md.get("tokenizer.ggml.add_eos_token", self.add_eos))
        for flag, name in ((self.add_bos, "bos"), (self.add_eos, "eos")):
            if flag and self.special[name] is None:
                raise UnsupportedModelError(
                    f"tokenizer.ggml.add_{name}_token is true, but the vocabulary has no {name.upper()} token")

    def _find_text(self, texts: tuple[str, ...]) -> Optional[int]:
        return next((self.token_to_id[t] for t in texts if t in self.token_to_id), None)

    def _make_control(self, token_id: int) -> None:
        if not self.attrs[token_id] & ATTR_CONTROL:
            log.debug("control-looking token %d %r was not control-type; treating it as control",
                      token_id, self.tokens[token_id])
            self.attrs[token_id] |= ATTR_CONTROL

    def _detect_special_by_text(self) -> None:
        """EOT, EOM and FIM tokens the metadata leaves unnamed, found by text as llama.cpp does."""
        for name, texts in (("eot", _EOT_TEXTS), ("eom", ("<|eom_id|>",)), *_FIM_TEXTS.items()):
            if self.special[name] is None:
                found = self._find_text(texts)
                if found is not None:
                    self.special[name] = found
                    self._make_control(found)

    def _apply_model_quirks(self, md: dict[str, Any]) -> None:
        """Per-model token attributes llama.cpp hard-codes (by token text and model name)."""
        for text in _ALWAYS_USER_DEFINED:
            if text in self.token_to_id:
                self.attrs[self.token_to_id[text]] = ATTR_USER_DEFINED
        name = str(md.get("general.name", "")).lower()
        if "phi-3" in name or "phi3" in name:
            self.attrs[self.special_token_ids()] |= ATTR_RSTRIP
            self._set_flag(("</s>",), ATTR_RSTRIP, True)
            self._set_flag(("<unk>", "<s>", "<|endoftext|>"), ATTR_RSTRIP, False)
        if self.pre_name in ("jina-v2-de", "jina-v2-es", "jina-v2-code"):
            self._set_flag(("<mask>",), ATTR_LSTRIP, True)

    def _set_flag(self, texts: tuple[str, ...], flag: int, value: bool) -> None:
        for text in texts:
            if text in self.token_to_id:
                i = self.token_to_id[text]
                self.attrs[i] = (self.attrs[i] | flag) if value else (self.attrs[i] & ~flag)

    def _end_of_generation(self) -> set[int]:
        """llama.cpp's special_eog_ids."""
        eog = {self.special[k] for k in ("fim_pad", "fim_rep", "fim_sep") if self.special[k] is not None}
        for text in _EOG_TEXTS:
            if text in self.token_to_id:
                eog.add(self.token_to_id[text])
                self._make_control(self.token_to_id[text])
        eog.update(self.special[k] for k in ("eos", "eot", "eom") if self.special[k] is not None)
        texts = {self.tokens[i]: i for i in eog}
        # gpt-oss / solar-open: "<|end|>" ends a message, not the generation.
        if "<|end|>" in texts and (("<|return|>" in texts and "<|call|>" in texts)
                                   or ("<|calls|>" in texts and "<|flush|>" in texts)):
            eog.discard(texts["<|end|>"])
            self.attrs[texts["<|end|>"]] = ATTR_USER_DEFINED
        # Gemma 4 and PLaMo have an ordinary "</s>" (llama.cpp lists it for PaddleOCR).
        if "</s>" in texts and ("<|tool_response>" in texts or "<|plamo:eos|>" in texts):
            eog.discard(texts["</s>"])
            self.attrs[texts["</s>"]] = ATTR_NORMAL
        return eog


def _pre_tokenizer(md: dict[str, Any]) -> tuple[str, PreTokenizer]:
    """The family `tokenizer.ggml.pre` names, or the one $LOCALLLM_PRE_TOKENIZER forces. A name
    llama.cpp does not know is refused, as llama.cpp does ("unknown pre-tokenizer type"): a
    fallback would tokenize wrongly without a word."""
    forced = os.environ.get(ENV_PRE_TOKENIZER)
    name = forced or md.get("tokenizer.ggml.pre")
    if not name:
        log.warning("GGUF has no tokenizer.ggml.pre; using the 'default' pre-tokenizer (as llama.cpp does)")
        return "default", PRE_TOKENIZERS["default"]
    if name in UNSUPPORTED_PRE_TOKENIZERS:
        raise UnsupportedModelError(f"pre-tokenizer {name!r} is not supported: {UNSUPPORTED_PRE_TOKENIZERS[name]}")
    if name not in PRE_TOKENIZERS:
        shown = str(name) if len(str(name)) <= 64 else f"{str(name)[:64]}..."
        how = f"{ENV_PRE_TOKENIZER} names" if forced else "the GGUF's tokenizer.ggml.pre names"
        raise UnsupportedModelError(f"unknown pre-tokenizer {shown!r} ({how} it); set {ENV_PRE_TOKENIZER} to a "
                                    f"known family (e.g. llama3, qwen2, gpt-2) to tokenize as that family")
    if forced:
        log.warning("pre-tokenizer forced to %r by %s (the file says %r)", name, ENV_PRE_TOKENIZER,
                    md.get("tokenizer.ggml.pre"))
    return str(name), PRE_TOKENIZERS[name]


def _token_texts(md: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    tokens = md.get("tokenizer.ggml.tokens")
    if not tokens:
        raise UnsupportedModelError("GGUF has no tokenizer.ggml.tokens")
    tokens = list(tokens)
    if "" in tokens:  # llama.cpp renames empty tokens so they stay unique
        tokens = [t or f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
    token_to_id = dict(zip(tokens, range(len(tokens))))
    if len(token_to_id) != len(tokens):
        seen: set[str] = set()
        dup = next(t for t in tokens if t in seen or seen.add(t))
        raise UnsupportedModelError(f"duplicate token in vocabulary: {quoted(dup)}")
    return tokens, token_to_id


def _token_attrs(md: dict[str, Any], n: int) -> np.ndarray:
    types = md.get("tokenizer.ggml.token_type")
    if types is None:
        return np.full(n, ATTR_NORMAL, dtype=np.int32)
    types = np.asarray(types, dtype=np.int64)[:n]
    if len(types) < n:
        raise UnsupportedModelError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
    return _TYPE_TO_ATTR[np.where((types >= 0) & (types < 7), types, 7)]


def _check_byte_tokens(tokens: list[str], attrs: np.ndarray) -> None:
    """A BYTE-typed token renders as the byte its text names, so the text must be `<0xNN>`."""
    for i in np.flatnonzero(attrs & ATTR_BYTE):
        if not _BYTE_TEXT.fullmatch(tokens[i]):
            raise GGUFError(f"token {i} is typed BYTE but its text {quoted(tokens[i], 40)} is not <0xNN>")


def _scores(md: dict[str, Any], n: int) -> Optional[np.ndarray]:
    scores = md.get("tokenizer.ggml.scores")
    if scores is None:
        return None
    scores = np.asarray(scores, dtype=np.float32)
    if len(scores) < n:
        raise UnsupportedModelError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
    return scores


def _default_special(model: str, pre: Optional[PreTokenizer]) -> dict[str, Optional[int]]:
    """llama.cpp's defaults before the metadata is read (BPE's 11 is GPT-NeoX's '<|endoftext|>')."""
    special: dict[str, Optional[int]] = dict.fromkeys(
        ("bos", "eos", "eot", "eom", "unk", "sep", "pad", "mask",
         "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep"))
    if model == "llama":
        special.update(bos=1, eos=2, unk=0)
    else:
        special.update(bos=11 if pre is None or pre.has_bos else None, eos=11)
    return special
