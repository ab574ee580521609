"""Reconcile the `regex` module's Unicode categories with llama.cpp's.

The pre-tokenizer expressions use \\p{L}, \\p{N}, \\p{P}, \\p{S} and \\p{M}. llama.cpp answers those
from its own table (Unicode 15.1, `unicode_data.RUNS`); the installed `regex` module carries a newer
Unicode where some code points have since been assigned (CJK extensions, new scripts and emoji).
Spelling llama.cpp's classes out as explicit ranges would make `regex` ten times slower, so we do
what llama.cpp itself does with its "collapsed" text: the few code points the two disagree on are
replaced, one for one, by a stand-in of llama.cpp's category before an expression using
categories runs; piece lengths are unchanged, so the original text is cut at the same places.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

import numpy as np
import regex

from .unicode_data import RUNS

_N_CODEPOINTS = 0x110000
_CLASSES = "OLNPSM"  # index = class code; O is everything that is none of the others
# Stand-ins keep their category in every Unicode version. None is ASCII (the expressions treat
# ASCII letters and punctuation individually) and none falls in a CJK range an expression spells out.
_STAND_INS = {"O": "\ufdd0", "L": "\u00aa", "N": "\u00b2", "P": "\u00a1", "S": "\u00a2", "M": "\u0300"}


@dataclass(frozen=True)
class CategoryFix:
    """The code points whose category differs, and their stand-ins."""

    differs: np.ndarray    # bool per code point
    table: dict[int, str]  # for str.translate

    def affects(self, text: str) -> bool:
        if text.isascii():
            return False
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        return bool(self.differs[codepoints].any())

    def substitute(self, text: str) -> str:
        return text.translate(self.table)


@functools.lru_cache(maxsize=None)
def category_fix() -> Optional[CategoryFix]:
    """None when the `regex` module agrees with llama.cpp everywhere (computed once, ~0.1 s)."""
    llama, ours = _llama_classes(), _regex_classes()
    llama[0xD800:0xE000] = ours[0xD800:0xE000]  # lone surrogates never come from UTF-8 text
    differs = llama != ours
    if not differs.any():
        return None
    table = {int(cp): _STAND_INS[_CLASSES[llama[cp]]] for cp in np.flatnonzero(differs)}
    return CategoryFix(differs, table)


def _llama_classes() -> np.ndarray:
    runs = RUNS.split()
    starts = np.array([int(run[:-1], 16) for run in runs] + [_N_CODEPOINTS])
    codes = np.array([_CLASSES.index(run[-1]) for run in runs], dtype=np.uint8)
    return np.repeat(codes, np.diff(starts))


def _regex_classes() -> np.ndarray:
    codepoints = np.arange(_N_CODEPOINTS, dtype=np.uint32)
    codepoints[0xD800:0xE000] = 0xFDD0  # keep indices aligned but the string encodable
    every_char = codepoints.astype("<u4").tobytes().decode("utf-32-le")
    classes = np.zeros(_N_CODEPOINTS, dtype=np.uint8)
    for code, name in enumerate(_CLASSES[1:], start=1):
        for match in regex.finditer(rf"\p{{{name}}}+", every_char):
            classes[match.start():match.end()] = code
    return classes
