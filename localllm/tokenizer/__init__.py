"""Tokenizers for GGUF vocabularies, token-exact with llama.cpp: byte-level BPE ('gpt2', with the
pre-tokenizer named by `tokenizer.ggml.pre`) and SentencePiece ('llama')."""
from .pretokenizers import PRE_TOKENIZERS, PreTokenizer
from .stream import StreamDecoder
from .tokenizer import Tokenizer

__all__ = ["PRE_TOKENIZERS", "PreTokenizer", "StreamDecoder", "Tokenizer"]
