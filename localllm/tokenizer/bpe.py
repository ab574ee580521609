"""Byte-level BPE (`tokenizer.ggml.model` = 'gpt2'), as llama.cpp's llm_tokenizer_bpe_session."""
from __future__ import annotations

from functools import cached_property

from .merge import encode_words, merge_symbols
from .pretokenizers import PreSplitter
from .special import Fragment
from .vocab import ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED, Vocab



def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table (llama.cpp's unicode_byte_to_utf8_map)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {ch: b for b, ch in enumerate(BYTE_TO_CHAR)}
# str.translate table taking a latin-1 decoded byte string to its byte-level form
_LATIN1_TO_BYTE_CHARS = {b: ch for b, ch in enumerate(BYTE_TO_CHAR)}


class BPEModel:
    """Encodes raw-text fragments with merge ranks; caches the ids of every pre-token it meets."""

    def __init__(self, vocab: Vocab) -> None:
        assert vocab.pre is not None
        self._vocab = vocab
        self._splitter = PreSplitter(vocab.pre.regexes)
        self._ignore_merges = vocab.pre.ignore_merges
        self._cache: dict[str, tuple[int, ...]] = {}

    @cached_property
    def _ranks(self) -> dict[str, int]:
        """'left right' -> merge rank; a duplicated merge keeps its first rank, as in llama.cpp."""
        merges = self._vocab.merges
        return dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))

    def encode(self, fragments: list[Fragment]) -> list[int]:
        out: list[int] = []
        for frag in fragments:
            if isinstance(frag, int):
                out.append(frag)
            else:
                self._encode_text(frag, out)
        return out

    def _encode_text(self, text: str, out: list[int]) -> None:
        encode_words(self._splitter.split(text), self._cache, self._encode_word, out)

    def _encode_word(self, word: str) -> tuple[int, ...]:
        encoded = word.encode("utf-8", "surrogatepass").decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)
        token_to_id = self._vocab.token_to_id
        if self._ignore_merges and encoded in token_to_id:
            return (token_to_id[encoded],)
        ranks = self._ranks
        symbols = merge_symbols(list(encoded), lambda a, b: ranks.get(f"{a} {b}"))
        ids: list[int] = []
        for sym in symbols:
            tid = token_to_id.get(sym)
            if tid is not None:
                ids.append(tid)
            else:
                # llama.cpp looks each UTF-8 byte of the symbol up as a one-byte token; only ASCII
                # bytes can name one (GGUF token texts are UTF-8), the rest are dropped.
                ids.extend(token_to_id[chr(b)] for b in sym.encode("utf-8") if b < 0x80 and chr(b) in token_to_id)
        return tuple(ids)

    def piece(self, token_id: int) -> bytes:
        """llama.cpp's token_to_piece for a BPE vocabulary (special=True)."""
        text, attr = self._vocab.tokens[token_id], self._vocab.attr(token_id)
        if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED):
            return text.encode("utf-8")
        if attr & ATTR_NORMAL:
            return _decode_byte_level(text)
        if attr & ATTR_BYTE:
            return bytes([int(text[3:5], 16)])
        return b""


def _decode_byte_level(text: str) -> bytes:
    out = bytearray()
    for ch in text:
        b = CHAR_TO_BYTE.get(ch)
        if b is not None:
            out.append(b)
        else:  # llama.cpp's llama_decode_text marker for a character outside the byte table
            out += b"[UNK_BYTE_0x" + ch.encode("utf-8").hex().encode() + text.encode("utf-8") + b"]"
    return bytes(out)
