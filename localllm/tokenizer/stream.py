"""Incremental detokenization for streaming: emits only complete UTF-8 text."""
from __future__ import annotations

import codecs

from .tokenizer import Tokenizer, clean_spaces

# A space followed by one of these may still be removed by clean_spaces (see _stable_prefix).
_CLEAN_TRIGGERS = b"?!.,' "


class StreamDecoder:
    """Feed token ids one at a time; the concatenation of everything feed() and flush() return
    equals `tokenizer.decode(ids, special)`, and no returned string ends inside a character."""

    def __init__(self, tokenizer: Tokenizer, special: bool = False) -> None:
        self._tokenizer = tokenizer
        self._special = special
        self._first = True
        self._held = b""  # bytes clean_spaces may still change, for vocabularies that use it
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, id: int) -> str:
        piece = self._tokenizer.token_to_piece(id, self._special)
        if self._first:
            self._first = False
            if self._tokenizer.add_space_prefix and piece.startswith(b" "):
                piece = piece[1:]
        if not self._tokenizer.clean_spaces:
            return self._utf8.decode(piece)
        self._held += piece
        cut = _stable_prefix(self._held)
        ready, self._held = self._held[:cut], self._held[cut:]
        return self._utf8.decode(clean_spaces(ready)) if ready else ""

    def flush(self) -> str:
        """The rest; an unfinished UTF-8 sequence comes out as U+FFFD."""
        held, self._held = self._held, b""
        ready = clean_spaces(held) if self._tokenizer.clean_spaces else held
        return self._utf8.decode(ready, final=True)


def _stable_prefix(data: bytes) -> int:
    """Length of the longest prefix clean_spaces can clean on its own, whatever bytes come next.

    Every clean-up removes a space that is followed by one of ?!., or an apostrophe, looking at
    most three bytes past the space. A prefix is safe when each space among its last three bytes
    is already followed by a byte that rules this out: then no clean-up spans the cut.
    """
    cut = len(data)
    while cut > 0 and not all(_inert_space(data, q) for q in range(max(cut - 3, 0), cut)):
        cut -= 1
    return cut


def _inert_space(data: bytes, pos: int) -> bool:
    """True unless data[pos] is a space that a later clean-up could still remove."""
    return data[pos] != 0x20 or (pos + 1 < len(data) and data[pos + 1] not in _CLEAN_TRIGGERS)
