"""SentencePiece (`tokenizer.ggml.model` = 'llama'), as llama.cpp's llm_tokenizer_spm_session."""
from __future__ import annotations

from functools import cached_property
from typing import Optional

import numpy as np
import regex

from ..errors import LocalLLMError
from .merge import encode_words, merge_symbols
from .special import Fragment
from .vocab import ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab

SPACE = "\u2581"  # '▁', SentencePiece's escaped space


class SPMModel:
    """Bigram merging by token score over the whole fragment, with byte fallback.

    llama.cpp merges across a fragment as a whole; we cut it into words first so each word's
    result can be cached. A cut before '▁' is exact whenever no vocabulary token has the
    preceding character directly before a '▁' (no merge can then cross it): merges never
    interact across such a cut, and the queue order within each side stays the same.
    """

    def __init__(self, vocab: Vocab) -> None:
        if vocab.scores is None:
            raise LocalLLMError("SentencePiece vocabulary without tokenizer.ggml.scores")
        self._vocab = vocab
        # Merge priority per token: the negated score, clamped so a -inf score stays mergeable.
        self._priority = np.minimum(-vocab.scores.astype(np.float64), 1e308).tolist()
        self._cache: dict[str, tuple[int, ...]] = {}

    @cached_property
    def _words(self) -> regex.Pattern:
        """Matches one cache-able word: from one safe cut to the next."""
        glued = {t[k - 1] for t in self._vocab.tokens if SPACE in t[1:] for k in range(1, len(t)) if t[k] == SPACE}
        if not glued:
            return regex.compile(f"(?s).[^{SPACE}]*")
        chars = "".join(regex.escape(c) for c in sorted(glued))
        return regex.compile(f"(?s).(?:[^{SPACE}]|(?<=[{chars}]){SPACE})*")

    @cached_property
    def _byte_ids(self) -> list[Optional[int]]:
        """llama.cpp's byte_to_token: '<0xNN>', else the byte itself as a one-character token."""
        token_to_id = self._vocab.token_to_id
        ids: list[Optional[int]] = []
        for b in range(256):
            tid = token_to_id.get(f"<0x{b:02X}>")
            ids.append(tid if tid is not None or b >= 0x80 else token_to_id.get(chr(b)))
        return ids

    def encode(self, fragments: list[Fragment]) -> list[int]:
        """Fragments to ids; a text fragment at the start or after a special token gets the
        space prefix when the vocabulary asks for it (llama.cpp's is_prev_special rule)."""
        out: list[int] = []
        prev_special = True
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self._vocab.add_space_prefix and prev_special:
                frag = " " + frag
            self._encode_text(frag.replace(" ", SPACE), out)
            prev_special = False
        return out

    def _encode_text(self, text: str, out: list[int]) -> None:
        encode_words(self._words.findall(text), self._cache, self._encode_word, out)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        token_to_id, priorities = self._vocab.token_to_id, self._priority

        def priority(a: str, b: str) -> Optional[float]:
            tid = token_to_id.get(a + b)
            return None if tid is None else priorities[tid]

        ids: list[int] = []
        for sym in merge_symbols(list(word), priority):
            tid = token_to_id.get(sym)
            if tid is not None:
                ids.append(tid)
            else:  # a character no token covers: its UTF-8 bytes as byte tokens
                ids.extend(self._byte_token(b) for b in sym.encode("utf-8", "surrogatepass"))
        return tuple(ids)

    def _byte_token(self, byte: int) -> int:
        tid = self._byte_ids[byte]
        if tid is None:
            raise LocalLLMError(f"the vocabulary has no byte-fallback token <0x{byte:02X}>")
        return tid

    def piece(self, token_id: int) -> bytes:
        """llama.cpp's token_to_piece for a SentencePiece vocabulary (special=True)."""
        text, attr = self._vocab.tokens[token_id], self._vocab.attr(token_id)
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if attr & ATTR_NORMAL:
            return text.replace(SPACE, " ").encode("utf-8")
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""
