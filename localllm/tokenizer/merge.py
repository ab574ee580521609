"""The pair-merge loop shared by BPE (merge ranks) and SentencePiece (token scores).

llama.cpp keeps a priority queue of adjacent symbol pairs and repeatedly merges the best one, ties
going to the leftmost pair; stale queue entries are skipped. That is exactly "merge the best
adjacent pair of the current symbols, leftmost on ties, until none is mergeable", which a plain
scan does fastest for the short words real text consists of. Long words (a 10 kB run without
spaces) take the queue so they stay O(n log n).
"""
from __future__ import annotations

import heapq
from typing import Callable, Iterable, Optional

# priority(left, right) -> a key where smaller merges first, or None when the pair cannot merge.
# Keys are finite floats (SentencePiece clamps its infinite ones), so inf can mark "no merge".
Priority = Callable[[str, str], Optional[float]]

_NO_MERGE = float("inf")
_SCAN_LIMIT = 64  # above this many symbols the queue beats a linear scan for the best pair per merge


def merge_symbols(symbols: list[str], priority: Priority) -> list[str]:
    """Merge adjacent symbols in llama.cpp's order; returns the final symbols."""
    if len(symbols) > _SCAN_LIMIT:
        return _merge_with_queue(symbols, priority)

    def key(i: int) -> float:
        k = priority(symbols[i], symbols[i + 1])
        return _NO_MERGE if k is None else k

    keys = [key(i) for i in range(len(symbols) - 1)]  # keys[i]: the pair (symbols[i], symbols[i+1])
    while keys:
        best_key = min(keys)
        if best_key == _NO_MERGE:
            break
        best = keys.index(best_key)  # the leftmost of equal keys, as llama.cpp's queue order
        symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
        del keys[best]
        if best < len(keys):
            keys[best] = key(best)
        if best > 0:
            keys[best - 1] = key(best - 1)
    return symbols


def _merge_with_queue(symbols: list[str], priority: Priority) -> list[str]:
    """llama.cpp's linked-list + priority-queue form of the same loop."""
    text = list(symbols)
    nxt = list(range(1, len(text) + 1))
    nxt[-1] = -1
    prv = list(range(-1, len(text) - 1))
    queue: list[tuple[float, int, int, int]] = []

    def push(left: int, right: int) -> None:
        if left >= 0 and right >= 0:
            key = priority(text[left], text[right])
            if key is not None:
                heapq.heappush(queue, (key, left, right, len(text[left]) + len(text[right])))

    for i in range(len(text) - 1):
        push(i, i + 1)
    while queue:
        _, left, right, size = heapq.heappop(queue)
        # Stale entry: one side was merged away or grew since the pair was queued.
        if not text[left] or not text[right] or len(text[left]) + len(text[right]) != size:
            continue
        text[left] += text[right]
        text[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        push(prv[left], left)
        push(left, nxt[left])
    return [t for t in text if t]


CACHE_LIMIT = 1 << 18  # words remembered; cleared when full so odd inputs cannot grow it forever


def encode_words(words: Iterable[str], cache: dict[str, tuple[int, ...]],
                 encode_word: Callable[[str], tuple[int, ...]], out: list[int]) -> None:
    """Append each word's ids to `out`, through a per-word cache: real text repeats its words,
    and skipping their merge loops is most of the tokenizers' speed."""
    for word in words:
        ids = cache.get(word)
        if ids is None:
            if len(cache) >= CACHE_LIMIT:
                cache.clear()
            ids = cache[word] = encode_word(word)
        out.extend(ids)
