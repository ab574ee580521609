"""Fusion of a recorded decode step's launches (replay.py): fewer, larger kernels, same numbers.

The recorded list is the op-by-op forward, exactly. Each rewrite below replaces a few launches
by one kernel of kernels/opencl that does the same float32 operations in the same order (so the
replay stays bit-identical to the op-by-op step), and only when the intermediate buffers it
removes are read by nothing else:

  gemv(W, x) -> B; add(A, B)             =>  gemv_add(W, x, A)               (residual adds)
  gemv(Wg, h), gemv(Wu, h); swiglu       =>  gemv_swiglu(Wg, Wu, h)          (the FFN's input half)
  gemv(Wa, h), gemv(Wb, h), gemv(Wc, h)  =>  gemv3(Wa, Wb, Wc, h)            (Q, K, V)
  rope(q), rope(k); kv_store(k', v)      =>  rope_qk_kv_store(q, k, v)
  rms_norm(x) -> h; products of h         =>  the products read x and norm it themselves
  gemv3 -> q, k, v; rope_qk_kv_store      =>  gemv3_rope_kv (NORM-mode RoPE in the epilogue)

A fused launch takes the place of the last launch it replaces (its inputs all exist by then:
recorded buffers are written once, except KV caches, which no product reads), or of the first
where its outputs are read before the last (gemv3: its products have one input).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from .weights import KINDS

NO_EPS = np.float32(0)   # the eps argument of a product with no fused norm (nw is null)


@dataclass
class Launch:
    name: str
    gsize: tuple
    lsize: tuple | None
    args: tuple


def _bufs(args: tuple) -> list[Any]:
    return [a for a in args if not isinstance(a, np.generic)]


GEMV = re.compile(rf"gemv_({'|'.join(KINDS)})_f32")
FAMILY = re.compile(rf"(gemv|gemv3|gemv_swiglu)_(?:{'|'.join(KINDS)})_f32")


def _gemv_kind(name: str) -> str | None:
    """The weight kind of a plain gemv launch name gemv_<kind>_f32, else None."""
    m = GEMV.fullmatch(name)
    return m.group(1) if m else None


class _Fuser:
    def __init__(self, steps: list, result: Any, ls: int, rows: dict[str, int], rpw: int) -> None:
        self.steps, self.ls, self.rows, self.rpw, self.result = list(steps), ls, rows, rpw, result
        self.uses = self._uses()               # readers per buffer in the recorded list
        self.producer = {}                     # id(buffer) -> index of the gemv that writes it
        for i, s in enumerate(self.steps):
            if isinstance(s, Launch) and _gemv_kind(s.name):
                self.producer[id(s.args[4])] = i

    def _gsize(self, family: str, n: Any, T: int) -> tuple:
        """The global size of a `family` kernel (gemv, gemv_add, ...) over n rows and T tokens."""
        return (-(-int(n) // self.rows[family]) * self.ls, T)

    def _private(self, buf: Any, n: int = 2) -> bool:
        """buf is read by nothing but its producer and one consumer."""
        return self.uses[id(buf)] == n

    def _gemv_of(self, buf: Any) -> int | None:
        i = self.producer.get(id(buf))
        return i if i is not None and self.steps[i] is not None and self._private(buf) else None

    def residual_adds(self) -> None:
        for i, s in enumerate(self.steps):
            if not (isinstance(s, Launch) and s.name == "add_f32"):
                continue
            a, b, y, _ = s.args
            for prod, res in ((b, a), (a, b)):
                g = self._gemv_of(prod)
                if g is not None:
                    G = self.steps[g]
                    wq, wd, wm, x, _, n, k = G.args
                    self.steps[i] = Launch(f"gemv_add_{_gemv_kind(G.name)}_f32", self._gsize("gemv_add", n, G.gsize[1]),
                                           G.lsize, (wq, wd, wm, x, res, y, n, k))
                    self.steps[g] = None
                    break

    def swiglu(self) -> None:
        for i, s in enumerate(self.steps):
            if not (isinstance(s, Launch) and s.name == "swiglu_f32"):
                continue
            gi, ui = self._gemv_of(s.args[0]), self._gemv_of(s.args[1])
            if gi is None or ui is None:
                continue
            G, U = self.steps[gi], self.steps[ui]
            if G.name != U.name or G.args[3] is not U.args[3] or G.args[5:] != U.args[5:]:
                continue
            self.steps[i] = Launch(f"gemv_swiglu_{_gemv_kind(G.name)}_f32", self._gsize("gemv_swiglu", G.args[5], G.gsize[1]),
                                   G.lsize,
                                   (*G.args[:3], *U.args[:3], G.args[3], None, NO_EPS, s.args[2], *G.args[5:]))
            self.steps[gi] = self.steps[ui] = None

    def qkv(self) -> None:
        """Plain gemvs of one input (after the rewrites above: Q, K, V) become gemv3 launches."""
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(self.steps):
            if isinstance(s, Launch) and _gemv_kind(s.name):
                groups.setdefault((id(s.args[3]), s.name, int(s.args[6]), s.gsize[1]), []).append(i)
        for idx in groups.values():
            for part in (idx[j:j + 3] for j in range(0, len(idx), 3)):
                if len(part) < 2:
                    continue
                ls = [self.steps[i] for i in part]
                while len(ls) < 3:        # a pair: the third matrix is empty
                    ls.append(Launch(ls[0].name, ls[0].gsize, ls[0].lsize, (*ls[0].args[:5], np.int32(0), ls[0].args[6])))
                a, b, c = ls
                n = int(a.args[5]) + int(b.args[5]) + int(c.args[5])
                self.steps[part[0]] = Launch(
                    f"gemv3_{_gemv_kind(a.name)}_f32", self._gsize("gemv3", n, a.gsize[1]), a.lsize,
                    (*a.args[:3], *b.args[:3], *c.args[:3], a.args[3], None, NO_EPS, a.args[4], b.args[4], c.args[4],
                     a.args[5], b.args[5], c.args[5], a.args[6]))
                for i in part[1:]:
                    self.steps[i] = None

    def rope_store(self) -> None:
        for i, s in enumerate(self.steps):
            if not (isinstance(s, Launch) and s.name == "kv_store_f16"):
                continue
            ko, v, kc, vc, pos, row_k, row_v, _, _ = s.args
            j = next((j for j in range(i - 1, -1, -1) if self.steps[j] is not None), None)
            if j is None or j < 1 or self.steps[j].name != "rope_f32" or self.steps[j].args[3] is not ko \
                    or not self._private(ko):
                continue
            r2 = self.steps[j]
            r1 = self.steps[j - 1]
            if r1 is None or r1.name != "rope_f32" or r1.args[1:3] != r2.args[1:3] or r1.args[5:] != r2.args[5:] \
                    or r2.args[1] is not pos:
                continue
            q, _, inv, qo, hq, d, n_rot, neox, fs = r1.args
            k, hkv = r2.args[0], r2.args[4]
            if int(row_k) != int(hkv) * int(d):
                continue
            T = r1.gsize[1] // int(hq)
            self.steps[i] = Launch("rope_qk_kv_store_f32", (r1.gsize[0], T * (int(hq) + int(hkv))), r1.lsize,
                                   (q, k, v, pos, inv, qo, kc, vc, hq, hkv, d, n_rot, neox, fs,
                                    np.int32(int(row_v) // int(hkv))))
            self.steps[j] = self.steps[j - 1] = None

    # where each product kernel takes its input x: (x, nw, eps) follow one another from there
    X_ARG = {"gemv3": 9, "gemv_swiglu": 6, "gemv": 3}

    def _uses(self) -> Counter:
        """How many launches (and the read-back) use each buffer, in the current list."""
        uses = Counter(id(b) for s in self.steps if s is not None
                       for b in (_bufs(s.args) if isinstance(s, Launch) else s[1:3]))
        uses[id(self.result)] += 1
        return uses

    def norms(self) -> None:
        """An RMSNorm of one row whose output only products read is computed inside each of them."""
        uses = self._uses()
        for i, s in enumerate(self.steps):
            if not (isinstance(s, Launch) and s.name == "rms_norm_f32" and s.gsize[0] == self.ls):
                continue
            x, w, h, d, eps = s.args
            readers = [j for j, r in enumerate(self.steps) if j != i and r is not None and isinstance(r, Launch)
                       and any(a is h for a in _bufs(r.args))]
            if len(readers) + 1 != uses[id(h)] or not readers:
                continue
            fused = [self._normed(self.steps[j], h, x, w, eps, int(d)) for j in readers]
            if any(f is None for f in fused):
                continue
            for j, f in zip(readers, fused):
                self.steps[j] = f
            self.steps[i] = None

    def _normed(self, p: Launch, h: Any, x: Any, w: Any, eps: Any, d: int) -> Launch | None:
        """Product launch p (reading h as its input) reading x and norming it with w, or None."""
        m = FAMILY.fullmatch(p.name)
        fam = m.group(1) if m else None
        at = self.X_ARG.get(fam)
        if at is None or p.args[at] is not h or p.gsize[1] != 1:
            return None
        if fam == "gemv":                # gemv_<kind>_f32 (W, x, y, n, k) -> gemv_norm (W, x, nw, eps, y, n, k)
            if int(p.args[6]) != d:
                return None
            return Launch(f"gemv_norm_{_gemv_kind(p.name)}_f32", self._gsize("gemv_norm", p.args[5], p.gsize[1]), p.lsize,
                          (*p.args[:3], x, w, eps, *p.args[4:]))
        if int(p.args[-1]) != d:        # gemv3 / gemv_swiglu end with k and carry (x, None, eps) at `at`
            return None
        return Launch(p.name, p.gsize, p.lsize, (*p.args[:at], x, w, eps, *p.args[at + 3:]))

    def qkv_rope(self) -> None:
        """gemv3 (Q, K, V) followed by rope_qk_kv_store in NORM mode: one gemv3_rope_kv (the rotated
        pairs are adjacent rows, both in one team when RPW is even)."""
        if self.rpw % 2:
            return
        uses = self._uses()
        gemv3 = {id(s.args[12]): i for i, s in enumerate(self.steps)
                 if isinstance(s, Launch) and s.name.startswith("gemv3_") and "rope" not in s.name}
        for i, s in enumerate(self.steps):
            if not (isinstance(s, Launch) and s.name == "rope_qk_kv_store_f32"):
                continue
            q, k, v, pos, inv, qo, kc, vc, hq, hkv, d, n_rot, neox, fs, dv = s.args
            g = gemv3.get(id(q))
            if g is None or self.steps[g] is None or int(neox) or int(d) % 2:
                continue
            G = self.steps[g]
            if G.args[13] is not k or G.args[14] is not v or any(uses[id(b)] != 2 for b in (q, k, v)) \
                    or G.gsize[1] != 1 or int(G.args[15]) != int(hq) * int(d) or int(G.args[16]) != int(hkv) * int(d):
                continue
            self.steps[i] = Launch(G.name.replace("gemv3_", "gemv3_rope_kv_"), G.gsize, G.lsize,
                                   (*G.args[:12], qo, pos, inv, kc, vc, *G.args[15:19], d, n_rot, fs))
            self.steps[g] = None


def fuse(steps: list, result: Any, ls: int, rows: dict[str, int], rpw: int) -> list:
    """The recorded steps (Launch, or ("c", dst, src, nbytes, offset) device copies) rewritten;
    ls: the gemv kernels' work-group size; rows: matrix rows per group of each gemv kernel family
    (gemv, gemv_add, gemv_norm, gemv_swiglu, gemv3); rpw: gemv3's rows per lane team."""
    f = _Fuser(steps, result, ls, rows, rpw)
    f.swiglu()
    f.residual_adds()
    f.qkv()
    f.rope_store()
    f.norms()
    f.qkv_rope()
    return [s for s in f.steps if s is not None]
