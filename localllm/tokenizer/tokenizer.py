"""The public tokenizer: llama.cpp's llama_tokenize / llama_detokenize / llama_token_to_piece over a
GGUF vocabulary (byte-level BPE or SentencePiece)."""
from __future__ import annotations

import re
from typing import Any, Iterable, Optional, Union

from ..errors import LocalLLMError
from .bpe import BPEModel
from .special import SpecialTokenSplitter
from .spm import SPMModel
from .vocab import ATTR_CONTROL, ATTR_UNKNOWN, Vocab

# llama.cpp's clean_up_tokenization_spaces passes, in order: " ?" " !" " ." " ," lose the space;
# " ' " becomes "'"; " 's" " 'm" " 're" " 've" lose the space.
_CLEAN_PASSES = ((re.compile(rb" (?=[?!.,])"), b""), (re.compile(rb" ' "), b"'"),
                 (re.compile(rb" '(?=[sm]|re|ve)"), b"'"))


def clean_spaces(text: bytes) -> bytes:
    """llama.cpp's detokenize clean-up for vocabularies with clean_spaces (e.g. GPT-2, Llama 3)."""
    for pattern, repl in _CLEAN_PASSES:
        text = pattern.sub(repl, text)
    return text


class Tokenizer:
    """Text <-> token ids, token for token as llama.cpp."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self.n_vocab: int = vocab.n_vocab
        self.bos_id: Optional[int] = vocab.special["bos"]
        self.eos_id: Optional[int] = vocab.special["eos"]
        self.eot_id: Optional[int] = vocab.special["eot"]
        self.add_bos: bool = vocab.add_bos
        self.add_eos: bool = vocab.add_eos
        self.add_space_prefix: bool = vocab.add_space_prefix
        self.clean_spaces: bool = vocab.clean_spaces
        self.eog_ids: frozenset[int] = vocab.eog_ids
        self._model: Union[BPEModel, SPMModel] = BPEModel(vocab) if vocab.model == "gpt2" else SPMModel(vocab)
        self._splitter = SpecialTokenSplitter(vocab)
        self._pieces: list[Optional[bytes]] = [None] * vocab.n_vocab

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> "Tokenizer":
        """Build from a GGUF metadata dict (`GGUFFile(path).metadata`)."""
        return cls(Vocab.from_metadata(metadata))

    def encode(self, text: str, add_bos: bool = True, special: bool = True) -> list[int]:
        """Token ids of `text`. add_bos: add BOS (and EOS) where the model's metadata asks for them.
        special: parse control tokens written in the text (user-defined ones are always parsed)."""
        ids = self._model.encode(self._splitter.split(text, special))
        if add_bos and self.add_bos:
            ids.insert(0, self.bos_id)
        if add_bos and self.add_eos:
            ids.append(self.eos_id)
        return ids

    def token_to_piece(self, id: int, special: bool = True) -> bytes:
        """The bytes one token contributes; special=False renders control tokens as nothing."""
        if not 0 <= id < self.n_vocab:
            raise LocalLLMError(f"token id {id} is outside the vocabulary (0..{self.n_vocab - 1})")
        if not special and self.vocab.attr(id) & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        piece = self._pieces[id]
        if piece is None:
            piece = self._pieces[id] = self._model.piece(id)
        return piece

    def decode_bytes(self, ids: Iterable[int], special: bool = True) -> bytes:
        """llama.cpp's detokenize (remove_special=False) as raw bytes."""
        pieces = [self.token_to_piece(i, special) for i in ids]
        # SentencePiece prefixes a space when encoding; the first token gives it back.
        if pieces and self.add_space_prefix and pieces[0].startswith(b" "):
            pieces[0] = pieces[0][1:]
        text = b"".join(pieces)
        return clean_spaces(text) if self.clean_spaces else text

    def decode(self, ids: Iterable[int], special: bool = True) -> str:
        """Text of `ids`; bytes that do not form valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids, special).decode("utf-8", "replace")
