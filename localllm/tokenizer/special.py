"""llama.cpp's tokenizer_st_partition: cut special tokens written in the text out of it.

llama.cpp takes the special tokens longest first and, for each, splits every remaining text
fragment at its non-overlapping occurrences. Doing that literally costs one substring search of
the whole text per special token (6,400 for Gemma 3), so we first find which special tokens occur
at all: one regex pass reports, at every position, the longest special token starting there, and
any occurring token is a substring of one of those. Only the occurring tokens are then cut, in
llama.cpp's order, which gives llama.cpp's result.

With parse_special=False, control and unknown tokens stay plain text but user-defined tokens are
still cut out (as Hugging Face tokenizers do, and llama.cpp follows).
"""
from __future__ import annotations

import re
from typing import Union

from .vocab import ATTR_CONTROL, ATTR_LSTRIP, ATTR_RSTRIP, ATTR_UNKNOWN, Vocab

Fragment = Union[str, int]  # raw text, or a special token id
_C_SPACE = " \t\n\v\f\r"     # C isspace(), what llama.cpp strips next to LSTRIP/RSTRIP tokens


class SpecialTokenSplitter:
    """Splits text into raw-text fragments and special token ids."""

    def __init__(self, vocab: Vocab) -> None:
        self._texts = vocab.tokens
        ordered = vocab.special_token_ids()
        plain = [i for i in ordered if not vocab.attr(i) & (ATTR_CONTROL | ATTR_UNKNOWN)]
        self._candidates = {True: ordered, False: plain}
        self._rank = {tid: r for r, tid in enumerate(ordered)}
        strip = {i: vocab.attr(i) & (ATTR_LSTRIP | ATTR_RSTRIP) for i in ordered}
        self._strip = {i: flags for i, flags in strip.items() if flags}
        self._scanners: dict[bool, re.Pattern[str]] = {}
        self._contained: dict[tuple[bool, str], list[int]] = {}

    def split(self, text: str, parse_special: bool) -> list[Fragment]:
        if not text:
            return []
        fragments: list[Fragment] = [text]
        if not self._candidates[parse_special]:
            return fragments
        for tid in sorted(self._occurring(text, parse_special), key=self._rank.__getitem__):
            fragments = self._cut_all(fragments, tid)
        return fragments

    def _occurring(self, text: str, parse_special: bool) -> set[int]:
        """Ids of the candidate special tokens that occur in `text`."""
        found: set[int] = set()
        for longest in set(self._scanner(parse_special).findall(text)):
            key = (parse_special, longest)
            if key not in self._contained:
                self._contained[key] = [i for i in self._candidates[parse_special] if self._texts[i] in longest]
            found.update(self._contained[key])
        return found

    def _scanner(self, parse_special: bool) -> re.Pattern[str]:
        """A zero-width regex capturing, at each position, the longest candidate starting there."""
        if parse_special not in self._scanners:
            trie = _trie_regex(self._texts[i] for i in self._candidates[parse_special])
            self._scanners[parse_special] = re.compile(f"(?=({trie}))", re.DOTALL)
        return self._scanners[parse_special]

    def _cut_all(self, fragments: list[Fragment], tid: int) -> list[Fragment]:
        token = self._texts[tid]
        out: list[Fragment] = []
        for frag in fragments:
            if isinstance(frag, int) or token not in frag:
                out.append(frag)
            else:
                out.extend(self._cut(frag, token, tid))
        return out

    def _cut(self, text: str, token: str, tid: int) -> list[Fragment]:
        """Split one fragment at the token's occurrences, left to right like llama.cpp's find loop."""
        strip = self._strip.get(tid, 0)
        out: list[Fragment] = []
        start = 0
        while (match := text.find(token, start)) >= 0:
            left = text[start:match]
            if strip & ATTR_LSTRIP:
                left = left.rstrip(_C_SPACE)
            if left:
                out.append(left)
            out.append(tid)
            start = match + len(token)
            if strip & ATTR_RSTRIP:
                while start < len(text) and text[start] in _C_SPACE:
                    start += 1
        if start < len(text):
            out.append(text[start:])
        return out


def _trie_regex(words) -> str:
    """A regex matching the longest of `words` at a position, with shared prefixes factored out
    so the engine rejects a position after a character or two instead of trying every word."""
    root: dict = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _node_regex(root)


def _node_regex(node: dict) -> str:
    prefix = ""
    while len(node) == 1 and "" not in node:  # walk single-child chains without recursing
        (ch, node), = node.items()
        prefix += re.escape(ch)
    branches = [re.escape(ch) + _node_regex(child) for ch, child in sorted(node.items()) if ch]
    if not branches:
        return prefix
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    # A word ending here is the fallback: the greedy `?` tries the longer words first.
    return prefix + (f"(?:{body})?" if "" in node else body)
