"""GGUF file -> metadata dict + zero-copy tensor views over one read-only memory map.

We parse the header ourselves rather than through `gguf.GGUFReader`: that reader builds a numpy
view per string, which takes 3.7 s for SmolLM2's 49k-token vocabulary and 13 s for Gemma 3's 262k.
This parser reads the same format (v2/v3) in tens of milliseconds and validates every length and
offset against the file size first, so a truncated or hostile file fails with one clear line.
`gguf.GGMLQuantizationType` and `gguf.GGML_QUANT_SIZES` stay the source of truth for types.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from .errors import GGUFError, quoted

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
MAX_NESTING = 4          # arrays of arrays: real files use none (ggml's reader refuses them)
MAX_STRINGS = 1 << 22    # strings in all arrays together (the largest vocabularies hold ~1M with merges)
MAX_ALIGNMENT = 1 << 16

# GGUF value type id -> (struct format, numpy dtype); 8 = string and 9 = array are handled apart.
_SCALARS: dict[int, tuple[str, np.dtype]] = {
    0: ("B", np.dtype(np.uint8)), 1: ("b", np.dtype(np.int8)),
    2: ("H", np.dtype(np.uint16)), 3: ("h", np.dtype(np.int16)),
    4: ("I", np.dtype(np.uint32)), 5: ("i", np.dtype(np.int32)),
    6: ("f", np.dtype(np.float32)), 7: ("?", np.dtype(np.bool_)),
    10: ("Q", np.dtype(np.uint64)), 11: ("q", np.dtype(np.int64)),
    12: ("d", np.dtype(np.float64)),
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class Tensor:
    """One tensor as stored: `shape` in numpy order (rows last-but-one, i.e. ggml ne reversed),
    `data` a read-only uint8 view of its bytes inside the memory map, one row of blocks per row."""

    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]
    data: np.ndarray  # [rows, row_bytes] uint8 (or [n_bytes] for 1-D tensors), zero-copy

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_bytes(self) -> int:
        return int(self.data.nbytes)


class _Cursor:
    """Bounds-checked little-endian reads from the mapped header."""

    def __init__(self, buf: mmap.mmap | bytes, path: str) -> None:
        self.buf, self.pos, self.size, self.path = buf, 0, len(buf), path
        self.strings = 0  # strings read into arrays so far (MAX_STRINGS)

    def take(self, n: int) -> int:
        if n < 0 or self.pos + n > self.size:
            raise GGUFError(f"{self.path}: truncated or corrupt GGUF header (read past end at byte {self.pos})")
        p = self.pos
        self.pos += n
        return p

    def unpack(self, fmt: str) -> Any:
        n = struct.calcsize("<" + fmt)
        return struct.unpack_from("<" + fmt, self.buf, self.take(n))[0]

    def string(self) -> str:
        n = self.unpack("Q")
        p = self.take(n)
        try:
            return bytes(self.buf[p:p + n]).decode("utf-8")
        except UnicodeDecodeError:
            return bytes(self.buf[p:p + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype][0])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            return self.array(key, 1)
        raise GGUFError(f"{self.path}: metadata {quoted(key)} has unknown value type {vtype}")

    def array(self, key: str, depth: int) -> Any:
        """Element counts are checked against the bytes left before anything is allocated."""
        if depth > MAX_NESTING:
            raise GGUFError(f"{self.path}: metadata {quoted(key)} nests arrays deeper than {MAX_NESTING}")
        etype, count = self.unpack("I"), self.unpack("Q")
        left = self.size - self.pos
        if etype in _SCALARS:
            dt = _SCALARS[etype][1]
            p = self.take(count * dt.itemsize)
            return np.frombuffer(self.buf, dtype=dt.newbyteorder("<"), count=count, offset=p).copy()
        if etype == _STRING:
            self.strings += count
            if count > left // 8 or self.strings > MAX_STRINGS:
                raise GGUFError(f"{self.path}: metadata {quoted(key)}: corrupt string array ({count} strings)")
            return [self.string() for _ in range(count)]
        if etype == _ARRAY:
            if count > left // 12:
                raise GGUFError(f"{self.path}: metadata {quoted(key)}: corrupt nested array ({count} arrays)")
            return [self.array(key, depth + 1) for _ in range(count)]
        raise GGUFError(f"{self.path}: metadata {quoted(key)} has unknown array element type {etype}")


class GGUFFile:
    """A GGUF file opened read-only: `metadata` (key -> python value; numeric arrays as numpy,
    string arrays as list[str]) and `tensors` (name -> Tensor, views into the memory map)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise GGUFError(f"cannot open {self.path}: {e.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            if size < 24:
                raise GGUFError(f"{self.path}: not a GGUF file (only {size} bytes)")
            self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.file_size = size
        cur = _Cursor(self._mmap, self.path)
        if self._mmap[:4] != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (bad magic {bytes(self._mmap[:4])!r})")
        cur.take(4)
        self.version = cur.unpack("I")
        if self.version not in (2, 3):
            raise GGUFError(f"{self.path}: unsupported GGUF version {self.version} (expected 2 or 3)")
        n_tensors, n_kv = cur.unpack("Q"), cur.unpack("Q")
        if n_tensors > size // 24 or n_kv > size // 12:
            raise GGUFError(f"{self.path}: truncated or corrupt GGUF header ({n_tensors} tensors, {n_kv} keys in {size} bytes)")
        self.metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            if key in self.metadata:
                raise GGUFError(f"{self.path}: duplicate metadata key {quoted(key)}")
            self.metadata[key] = cur.value(cur.unpack("I"), key)
        check_metadata(self.metadata, self.path)
        infos = [self._tensor_info(cur) for _ in range(n_tensors)]
        align = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if not 0 < align <= MAX_ALIGNMENT or align & (align - 1):
            raise GGUFError(f"{self.path}: invalid general.alignment {align} (expected a power of two)")
        self.data_offset = -(-cur.pos // align) * align
        self._u8 = np.frombuffer(self._mmap, dtype=np.uint8)
        self.tensors: dict[str, Tensor] = {}
        for name, shape, ttype, offset in infos:
            if name in self.tensors:
                raise GGUFError(f"{self.path}: duplicate tensor {quoted(name)}")
            if offset % align:
                raise GGUFError(f"{self.path}: tensor {quoted(name)} data offset {offset} is not aligned to {align}")
            self.tensors[name] = self._view(name, shape, ttype, offset)

    def _tensor_info(self, cur: _Cursor) -> tuple[str, tuple[int, ...], GGMLQuantizationType, int]:
        name = cur.string()
        n_dims = cur.unpack("I")
        if not 0 < n_dims <= MAX_DIMS:
            raise GGUFError(f"{self.path}: tensor {quoted(name)} has {n_dims} dimensions (expected 1 to {MAX_DIMS})")
        ne = [cur.unpack("Q") for _ in range(n_dims)]
        raw_type = cur.unpack("I")
        offset = cur.unpack("Q")
        try:
            ttype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise GGUFError(f"{self.path}: tensor {quoted(name)} has unknown type id {raw_type}") from None
        return name, tuple(int(n) for n in reversed(ne)), ttype, offset

    def _view(self, name: str, shape: tuple[int, ...], ttype: GGMLQuantizationType, offset: int) -> Tensor:
        if ttype not in GGML_QUANT_SIZES:
            raise GGUFError(f"{self.path}: tensor {quoted(name)} has type {ttype.name} with no known block size")
        block, type_size = GGML_QUANT_SIZES[ttype]
        row = shape[-1]
        if row % block or any(d <= 0 for d in shape):
            raise GGUFError(f"{self.path}: tensor {quoted(name)} shape {quoted(shape)} does not fit {ttype.name} "
                            f"blocks of {block}")
        n_rows = math.prod(shape[:-1])   # python ints: dimensions up to 2^64-1 cannot wrap
        row_bytes = row // block * type_size
        start = self.data_offset + offset
        end = start + n_rows * row_bytes
        if end > self.file_size:
            raise GGUFError(f"{self.path}: tensor {quoted(name)} lies past the end of the file (truncated download?)")
        data = self._u8[start:end]
        data = data.reshape(n_rows, row_bytes) if len(shape) > 1 else data
        return Tensor(name, ttype, shape, data)

    @property
    def architecture(self) -> str:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise GGUFError(f"{self.path}: missing general.architecture")
        return arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def close(self) -> None:
        """Drop our references; the map closes once no tensor view is alive."""
        self.tensors = {}
        self._u8 = None  # type: ignore[assignment]


# --- metadata schema -------------------------------------------------------------------------
# The keys this runtime reads and the GGUF value kinds it accepts for them; `<arch>.` keys are
# checked under the file's general.architecture. Ranges that depend on the model (counts against
# tensors, ids against the vocabulary) are checked where the model is built (models/base.py,
# tokenizer/vocab.py); here only what any reader of the key needs.
_GLOBAL_KEYS = {
    "general.architecture": "string", "general.name": "string", "general.alignment": "int",
    "tokenizer.ggml.model": "string", "tokenizer.ggml.pre": "string", "tokenizer.ggml.tokens": "strings",
    "tokenizer.ggml.token_type": "ints", "tokenizer.ggml.scores": "numbers", "tokenizer.ggml.merges": "strings",
    "tokenizer.ggml.add_bos_token": "bool", "tokenizer.ggml.add_eos_token": "bool",
    "tokenizer.ggml.add_space_prefix": "bool", "tokenizer.chat_template": "string",
}
_SPECIAL_IDS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "mask", "fim_pre", "fim_suf",
                "fim_mid", "fim_pad", "fim_rep", "fim_sep", "prefix", "suffix", "middle")
_GLOBAL_KEYS.update({f"tokenizer.ggml.{name}_token_id": "int" for name in _SPECIAL_IDS})
_ARCH_KEYS = {
    "vocab_size": "int", "context_length": "int", "embedding_length": "int", "block_count": "int",
    "feed_forward_length": "int or ints", "attention.head_count": "int or ints",
    "attention.head_count_kv": "int or ints", "attention.key_length": "int", "attention.value_length": "int",
    "rope.dimension_count": "int", "rope.freq_base": "float", "rope.freq_base_swa": "float",
    "rope.scaling.type": "string", "rope.scaling.factor": "float", "attention.layer_norm_rms_epsilon": "float",
    "attention.sliding_window": "int", "attention.sliding_window_pattern": "int or bools",
}


_KIND_NAMES = {"int": "an integer", "float": "a finite number", "bool": "a bool", "string": "a string",
               "strings": "an array of strings", "ints": "an integer array", "numbers": "a numeric array",
               "int or ints": "an integer or integer array", "int or bools": "an integer or bool array"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_kind(v: Any, kind: str) -> bool:
    if kind == "int":
        return _is_int(v)
    if kind == "float":   # integers are accepted where a float is read, as every reader converts them
        return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "string":
        return isinstance(v, str)
    if kind == "strings":
        return isinstance(v, list) and all(isinstance(s, str) for s in v)
    if kind == "ints":
        return isinstance(v, np.ndarray) and v.dtype.kind in "iu"
    if kind == "numbers":
        return isinstance(v, np.ndarray) and v.dtype.kind in "iuf"
    if kind == "int or ints":
        return _is_int(v) or _is_kind(v, "ints")
    if kind == "int or bools":   # gemma3 writes a period, gemma3n/gemma4 one flag per layer
        return _is_int(v) or (isinstance(v, np.ndarray) and v.dtype == np.bool_)
    raise AssertionError(kind)


def _kind_of(v: Any) -> str:
    if isinstance(v, np.ndarray):
        return f"an array of {v.dtype}"
    if isinstance(v, list):
        return "an array of arrays" if v and not isinstance(v[0], str) else "an array of strings"
    return f"{type(v).__name__} {quoted(v, 32)}"


def check_metadata(meta: dict[str, Any], path: str) -> None:
    """Every key the runtime reads has the kind of value it expects (GGUFError naming the key)."""
    arch = meta.get("general.architecture")
    expected = dict(_GLOBAL_KEYS)
    if isinstance(arch, str):
        expected.update({f"{arch}.{key}": kind for key, kind in _ARCH_KEYS.items()})
    for key, kind in expected.items():
        if key in meta and not _is_kind(meta[key], kind):
            name = key if len(key) <= 80 else quoted(key)   # `<arch>.` keys carry the file's architecture string
            raise GGUFError(f"{path}: metadata {name} is {_kind_of(meta[key])}, expected {_KIND_NAMES[kind]}")
