"""Structure-aware GGUF fuzzer: mutates a valid tiny model (metadata types and boundary values,
array nesting, truncation in every region, tensor table corruption) and loads each mutant in a
forked child under time and memory limits. A case passes when it loads and runs, or fails with a
LocalLLMError; anything else (another exception, a signal, a hang, the memory limit) is reported.

    python bench/fuzz_gguf.py --cases 100000 --workers 2      # the long run
    python bench/fuzz_gguf.py --cases 300 --seed 1             # what CI runs (tests/test_fuzz_gguf.py)

Each child is forked from a parent that has already imported localllm and read the seed file, so
a case costs a fork, a small write and one load, not an interpreter start.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}
_INT_TYPES = (U8, I8, U16, I16, U32, I32, U64, I64)


@dataclass
class Doc:
    """A GGUF file as a structure: metadata [(key, type, value)], where an array's value is
    (element type, [values]), tensor infos [name, dims (ggml order), type id, offset] and the
    bytes after the aligned tensor-info section."""

    version: int
    kv: list[tuple[str, int, Any]]
    tensors: list[list[Any]]
    data: bytes
    alignment: int = 32
    counts: tuple[int, int] | None = None   # overrides (n_tensors, n_kv) in the header


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str) -> Any:
        v = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize("<" + fmt)
        return v

    def string(self) -> str:
        n = self.unpack("Q")
        s = self.buf[self.pos:self.pos + n].decode("utf-8", "surrogateescape")
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            etype, n = self.unpack("I"), self.unpack("Q")
            return etype, [self.value(etype) for _ in range(n)]
        return self.unpack(_FMT[vtype])


def parse(buf: bytes) -> Doc:
    """A valid GGUF (v2/v3) -> Doc."""
    r = _Reader(buf)
    assert buf[:4] == b"GGUF"
    r.pos = 4
    version, n_t, n_kv = r.unpack("I"), r.unpack("Q"), r.unpack("Q")
    kv = []
    for _ in range(n_kv):
        key = r.string()
        vtype = r.unpack("I")
        kv.append((key, vtype, r.value(vtype)))
    tensors = []
    for _ in range(n_t):
        name = r.string()
        dims = [r.unpack("Q") for _ in range(r.unpack("I"))]
        tensors.append([name, dims, r.unpack("I"), r.unpack("Q")])
    align = next((v for k, _, v in kv if k == "general.alignment"), 32)
    start = -(-r.pos // align) * align
    return Doc(version, kv, tensors, buf[start:], align)


def _pack_value(vtype: int, value: Any) -> bytes:
    if vtype == STRING:
        b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(b)) + b
    if vtype == ARRAY:
        if isinstance(value, bytes):  # pre-encoded (deep nesting, written without recursion)
            return value
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_pack_value(etype, v) for v in items)
    return struct.pack("<" + _FMT[vtype], value)


def serialize(doc: Doc) -> bytes:
    n_t, n_kv = doc.counts or (len(doc.tensors), len(doc.kv))
    out = [b"GGUF", struct.pack("<IQQ", doc.version, n_t, n_kv)]
    for key, vtype, value in doc.kv:
        out += [_pack_value(STRING, key), struct.pack("<I", vtype), _pack_value(vtype, value)]
    for name, dims, ttype, offset in doc.tensors:
        out += [_pack_value(STRING, name), struct.pack("<I", len(dims)),
                b"".join(struct.pack("<Q", d) for d in dims), struct.pack("<IQ", ttype, offset)]
    head = b"".join(out)
    align = doc.alignment if isinstance(doc.alignment, int) and 0 < doc.alignment < 1 << 16 else 32
    return head + b"\0" * (-len(head) % align) + doc.data


def nested(depth: int, leaf: tuple[int, Any] = (U32, [1])) -> bytes:
    """An array value nested `depth` arrays deep, pre-encoded."""
    return struct.pack("<IQ", ARRAY, 1) * (depth - 1) + _pack_value(ARRAY, leaf)


def with_kv(doc: Doc, key: str, vtype: int, value: Any) -> Doc:
    """A copy of doc with `key` set (replaced in place, or appended)."""
    kv = [(k, t, v) for k, t, v in doc.kv if k != key]
    at = next((i for i, (k, _, _) in enumerate(doc.kv) if k == key), len(kv))
    kv.insert(at, (key, vtype, value))
    return Doc(doc.version, kv, [list(t) for t in doc.tensors], doc.data, doc.alignment)


def with_tensor(doc: Doc, name: str, dims: list[int] | None = None, ttype: int | None = None,
                offset: int | None = None) -> Doc:
    """A copy of doc with one tensor's info record changed."""
    tensors = [list(t) for t in doc.tensors]
    t = next(t for t in tensors if t[0] == name)
    t[1] = dims if dims is not None else t[1]
    t[2] = ttype if ttype is not None else t[2]
    t[3] = offset if offset is not None else t[3]
    return Doc(doc.version, list(doc.kv), tensors, doc.data, doc.alignment)


# --- mutations ---------------------------------------------------------------------------------

_INTS = [0, 1, -1, 2, 7, 31, 32, 33, 255, 256, 65535, 2**31 - 1, -2**31, 2**32 - 1, 2**32, 2**62 + 1,
         2**63 - 1, -2**63, 2**64 - 1]
_FLOATS = [0.0, -0.0, 1e-45, -1.0, 1e38, 3.5e38, float("nan"), float("inf"), float("-inf"), 1e308]
_RANGES = {U8: (0, 255), I8: (-128, 127), U16: (0, 65535), I16: (-32768, 32767), U32: (0, 2**32 - 1),
           I32: (-2**31, 2**31 - 1), U64: (0, 2**64 - 1), I64: (-2**63, 2**63 - 1)}


def _random_scalar(rng: random.Random, vtype: int) -> Any:
    if vtype in _RANGES:
        lo, hi = _RANGES[vtype]
        return min(max(rng.choice(_INTS + [rng.randint(lo, hi)]), lo), hi)
    if vtype in (F32, F64):
        v = rng.choice(_FLOATS + [rng.uniform(-1e6, 1e6)])
        return v if vtype == F64 or abs(v) < 3.4e38 or v != v or abs(v) == float("inf") else 3.4e38
    if vtype == BOOL:
        return rng.random() < 0.5
    return rng.choice(["", "llama", "gpt2", "none", "linear", "<0xZZ>", "\udcff", "x" * rng.randint(0, 5000),
                       "{{ ''.__class__ }}", "<s>", "a b"])


def _random_value(rng: random.Random, depth: int = 0) -> tuple[int, Any]:
    vtype = rng.choice(list(range(13)))
    if vtype != ARRAY:
        return vtype, _random_scalar(rng, vtype)
    if depth < 2 and rng.random() < 0.2:
        inner = [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
        return ARRAY, (ARRAY, [v for t, v in inner if t == ARRAY])
    etype = rng.choice([t for t in range(13) if t != ARRAY])
    return ARRAY, (etype, [_random_scalar(rng, etype) for _ in range(rng.choice([0, 1, 2, 5, 50, 600]))])


def _mutate_kv_type(rng: random.Random, doc: Doc) -> Doc:
    key, _, _ = rng.choice(doc.kv)
    return with_kv(doc, key, *_random_value(rng))


def _mutate_kv_value(rng: random.Random, doc: Doc) -> Doc:
    key, vtype, value = rng.choice(doc.kv)
    if isinstance(value, bytes):  # a pre-encoded nesting: replace it
        return with_kv(doc, key, *_random_value(rng))
    if vtype == ARRAY:
        etype, items = value
        items = list(items)
        op = rng.randrange(4)
        if op == 0 and items:
            del items[rng.randrange(len(items)):]
        elif op == 1 and items:
            i = rng.randrange(len(items))
            items[i] = _random_scalar(rng, etype) if etype != ARRAY else items[i]
        elif op == 2:
            items += items[: rng.randint(1, 3)]
        else:
            etype2 = rng.choice([t for t in range(13) if t != ARRAY])
            return with_kv(doc, key, ARRAY, (etype2, [_random_scalar(rng, etype2) for _ in items[:600]]))
        return with_kv(doc, key, ARRAY, (etype, items))
    return with_kv(doc, key, vtype, _random_scalar(rng, vtype))


def _mutate_nesting(rng: random.Random, doc: Doc) -> Doc:
    key = rng.choice([k for k, _, _ in doc.kv] + ["x.deep"])
    return with_kv(doc, key, ARRAY, nested(rng.choice([2, 3, 10, 100, 1000, 3000])))


def _mutate_drop_or_dup_kv(rng: random.Random, doc: Doc) -> Doc:
    kv = list(doc.kv)
    i = rng.randrange(len(kv))
    if rng.random() < 0.5:
        del kv[i]
    else:
        kv.insert(rng.randrange(len(kv)), kv[i])
    return Doc(doc.version, kv, [list(t) for t in doc.tensors], doc.data, doc.alignment)


def _mutate_known_key(rng: random.Random, doc: Doc) -> Doc:
    """Set (or add) a key the loader reads, to a boundary value of a random type."""
    arch = next((v for k, _, v in doc.kv if k == "general.architecture"), "llama")
    keys = [f"{arch}.{k}" for k in ("block_count", "embedding_length", "feed_forward_length", "context_length",
                                    "attention.head_count", "attention.head_count_kv", "attention.key_length",
                                    "attention.value_length", "rope.dimension_count", "rope.freq_base",
                                    "rope.scaling.type", "rope.scaling.factor", "vocab_size",
                                    "attention.layer_norm_rms_epsilon")]
    keys += ["general.alignment", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
             "tokenizer.ggml.add_bos_token", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.model",
             "tokenizer.ggml.pre", "tokenizer.chat_template", "general.architecture"]
    vtype = rng.choice([U32, I32, U64, I64, F32, F64, STRING, BOOL, U8])
    return with_kv(doc, rng.choice(keys), vtype, _random_scalar(rng, vtype))


def _mutate_tensor(rng: random.Random, doc: Doc) -> Doc:
    name, dims, ttype, offset = rng.choice(doc.tensors)
    op = rng.randrange(6)
    if op == 0:
        dims = list(dims) or [32]
        dims[rng.randrange(len(dims))] = rng.choice(_INTS[:10] + [2**63 - 1, 2**64 - 1, 2**62 + 1, 2**32 + 1]) % 2**64
    elif op == 1:
        dims = rng.choice([[], [32], [32, 3, 2**62 + 1], [32, 2**64 - 1], [32, 2, 2, 2, 2], dims[::-1], dims[:1],
                           list(dims) + [1]])
    elif op == 2:
        ttype = rng.choice([0, 1, 2, 3, 4, 5, 8, 12, 14, 20, 30, 39, 255, 2**32 - 1])
    elif op == 3:
        offset = rng.choice([0, 32, offset + 32, 2**63, 2**64 - 1, len(doc.data), len(doc.data) - 32]) % 2**64
    elif op == 4:
        other = rng.choice(doc.tensors)[0]
        return Doc(doc.version, list(doc.kv), [[other if t[0] == name else t[0]] + list(t[1:]) for t in doc.tensors],
                   doc.data, doc.alignment)
    else:
        tensors = [list(t) for t in doc.tensors if t[0] != name]
        return Doc(doc.version, list(doc.kv), tensors, doc.data, doc.alignment)
    return with_tensor(doc, name, dims, ttype, offset)


def _mutate_counts(rng: random.Random, doc: Doc) -> Doc:
    n_t, n_kv = len(doc.tensors), len(doc.kv)
    pick = rng.choice([0, 1, -1, 2**32, 2**63, 2**64 - 1])
    counts = (max(n_t + pick, 0) % 2**64, n_kv) if rng.random() < 0.5 else (n_t, max(n_kv + pick, 0) % 2**64)
    return Doc(doc.version, doc.kv, doc.tensors, doc.data, doc.alignment, counts)


_NEED_KV = (_mutate_kv_type, _mutate_kv_value, _mutate_drop_or_dup_kv)
STRUCT_MUTATIONS = (_mutate_kv_type, _mutate_kv_value, _mutate_nesting, _mutate_drop_or_dup_kv,
                    _mutate_known_key, _mutate_tensor, _mutate_counts)


def _region_ends(buf: bytes, doc: Doc) -> list[int]:
    """Byte offsets closing each region: fixed header, metadata, tensor infos, data."""
    info_end = len(buf) - len(doc.data)
    return [24, max(24, info_end - 40 * len(doc.tensors)), info_end, len(buf)]


def mutate(rng: random.Random, seed_buf: bytes, seed_doc: Doc) -> bytes:
    """One mutant: one to three structural changes, then sometimes a truncation in a random region
    or a few flipped bytes in the header."""
    doc = seed_doc
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        usable = [m for m in STRUCT_MUTATIONS if (doc.kv or m not in _NEED_KV) and (doc.tensors or m != _mutate_tensor)]
        doc = rng.choice(usable)(rng, doc)
    buf = serialize(doc)
    r = rng.random()
    if r < 0.15:
        ends = _region_ends(buf, doc)
        region = rng.randrange(len(ends))
        lo = ends[region - 1] if region else 0
        buf = buf[: rng.randint(lo, max(lo, ends[region] - 1))]
    elif r < 0.25:
        head = bytearray(buf)
        for _ in range(rng.randint(1, 4)):
            head[rng.randrange(min(len(head), len(buf) - len(doc.data) or 1))] = rng.randrange(256)
        buf = bytes(head)
    return buf


# --- running a case ----------------------------------------------------------------------------

OK, REFUSED, OTHER = 0, 3, 4   # child exit codes
TIME_LIMIT_S = 5.0
MEMORY_FIXED = 512 << 20        # bytes above the parent's address space a child may map besides 2x the file


def _exercise(path: str, backend: str) -> None:
    import localllm
    llm = localllm.load(path, backend=backend, n_ctx=16, prefix_cache_bytes=0)
    ids = llm.tokenize("Hello world <|im_end|> \u00e9\u4e2d")
    llm.detokenize(ids + [0, llm.n_vocab - 1])
    llm.logits(ids[:4] or [0])
    list(llm.generate(ids[:4] or [0], max_tokens=2, temperature=0))
    llm.apply_chat_template([{"role": "user", "content": "hi"}])


def _child(path: str, backend: str, mem_limit: int, err_path: str) -> None:
    import faulthandler
    import warnings
    from localllm.errors import LocalLLMError
    faulthandler.disable()            # a crash is reported by the parent, not dumped by an inherited handler
    warnings.simplefilter("ignore")   # random weights overflow float16: numpy's warnings are noise here
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    resource.setrlimit(resource.RLIMIT_AS, (mem_limit, mem_limit))
    resource.setrlimit(resource.RLIMIT_CPU, (int(TIME_LIMIT_S) + 1, int(TIME_LIMIT_S) + 2))
    code = OK
    try:
        _exercise(path, backend)
    except LocalLLMError as e:
        code = REFUSED
        if "\n" in str(e) or len(str(e)) > 500:
            code = OTHER
            Path(err_path).write_text(f"LocalLLMError not one short line: {str(e)[:1000]!r}\n")
    except BaseException:  # noqa: BLE001 - this is what the fuzzer looks for
        code = OTHER
        Path(err_path).write_text(traceback.format_exc()[-4000:])
    os._exit(code)


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def run_case(buf: bytes, workdir: str, backend: str, tag: str) -> tuple[str, str]:
    """('ok'|'refused'|'error'|'crash'|'hang', detail) for one mutant."""
    path, err_path = os.path.join(workdir, f"case-{tag}.gguf"), os.path.join(workdir, f"case-{tag}.err")
    with open(path, "wb") as f:
        f.write(buf)
    mem_limit = _vm_bytes() + 2 * len(buf) + MEMORY_FIXED
    pid = os.fork()
    if pid == 0:
        try:
            _child(path, backend, mem_limit, err_path)
        finally:
            os._exit(OTHER)
    deadline = time.monotonic() + TIME_LIMIT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", f"over {TIME_LIMIT_S} s"
        time.sleep(0.002)
    detail = Path(err_path).read_text() if os.path.exists(err_path) else ""
    for p in (path, err_path):
        if os.path.exists(p):
            os.unlink(p)
    if os.WIFSIGNALED(status):
        return "crash", f"signal {os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status)
    return {OK: ("ok", ""), REFUSED: ("refused", "")}.get(code, ("error", detail or f"exit {code}"))


def seed_file(folder: Path) -> Path:
    from localllm.synthetic import make_random_gguf
    return make_random_gguf(folder / "seed.gguf", dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn=64,
                            tensor_type="Q8_0", output_type="Q8_0", n_ctx=32)


def fuzz(cases: int, seed: int, workers: int = 1, backend: str = "numpy", report_every: int = 0,
         save_dir: str | None = None) -> dict[str, Any]:
    """Run `cases` mutants (split over `workers` forked processes); returns counts and failures."""
    if backend == "cpu":  # GNU OpenMP refuses to run in a forked child; numba's workqueue layer does
        os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
    import localllm  # noqa: F401 - imported once here, inherited by every forked case
    with tempfile.TemporaryDirectory(prefix="fuzz-gguf-") as work:
        seed_path = seed_file(Path(work))
        _exercise(str(seed_path), backend)   # warm the caches (regexes, templates, kernels) every child inherits
        seed_buf = seed_path.read_bytes()
        seed_doc = parse(seed_buf)
        if workers <= 1:
            return _worker(0, range(cases), seed, seed_buf, seed_doc, work, backend, report_every, save_dir)
        return _fan_out(cases, seed, workers, seed_buf, seed_doc, work, backend, report_every, save_dir)


def _worker(wid: int, indices: range, seed: int, seed_buf: bytes, seed_doc: Doc, work: str, backend: str,
            report_every: int, save_dir: str | None) -> dict[str, Any]:
    counts = {k: 0 for k in ("ok", "refused", "error", "crash", "hang")}
    failures: list[dict[str, Any]] = []
    t0 = time.monotonic()
    for n, i in enumerate(indices):
        buf = mutate(random.Random(f"{seed}:{i}"), seed_buf, seed_doc)
        kind, detail = run_case(buf, work, backend, f"{wid}")
        counts[kind] += 1
        if kind in ("error", "crash", "hang"):
            failures.append({"case": i, "kind": kind, "detail": detail[-1500:]})
            if save_dir:
                Path(save_dir).mkdir(parents=True, exist_ok=True)
                Path(save_dir, f"case-{seed}-{i}.gguf").write_bytes(buf)
        if report_every and (n + 1) % report_every == 0:
            print(f"[worker {wid}] {n + 1} cases, {time.monotonic() - t0:.0f} s: {counts}", flush=True)
    return {"counts": counts, "failures": failures}


def _fan_out(cases: int, seed: int, workers: int, seed_buf: bytes, seed_doc: Doc, work: str, backend: str,
             report_every: int, save_dir: str | None) -> dict[str, Any]:
    import json
    pids = []
    for w in range(workers):
        out = os.path.join(work, f"worker-{w}.json")
        pid = os.fork()
        if pid == 0:
            try:
                res = _worker(w, range(w, cases, workers), seed, seed_buf, seed_doc, work, backend, report_every,
                              save_dir)
                Path(out).write_text(json.dumps(res))
            except BaseException:  # noqa: BLE001 - reported, and the parent says the worker died
                traceback.print_exc()
            finally:   # never return into the parent's code (it would clean up the shared folder)
                os._exit(0)
        pids.append((pid, out))
    total: dict[str, Any] = {"counts": {}, "failures": []}
    for pid, out in pids:
        os.waitpid(pid, 0)
        if not os.path.exists(out):
            raise RuntimeError(f"fuzz worker {pid} died (a bug in the fuzzer itself)")
        res = json.loads(Path(out).read_text())
        for k, v in res["counts"].items():
            total["counts"][k] = total["counts"].get(k, 0) + v
        total["failures"] += res["failures"]
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--report-every", type=int, default=1000)
    ap.add_argument("--save", default=None, help="folder to keep failing mutants in")
    args = ap.parse_args()
    t0 = time.monotonic()
    res = fuzz(args.cases, args.seed, args.workers, args.backend, args.report_every, args.save)
    print(f"{args.cases} cases in {time.monotonic() - t0:.0f} s: {res['counts']}")
    for f in res["failures"][:50]:
        print(f"--- case {f['case']} ({f['kind']}):\n{f['detail']}")
    return 1 if res["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
