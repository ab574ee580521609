"""Sessions on disk: a sequence's tokens and K/V rows, plus caller data (e.g. chat messages), in
one versioned .npz written atomically and validated against the model on load."""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from typing import Any

import numpy as np

from .atomic import atomic_write
from .errors import LocalLLMError, quoted
from .kv_cache import KVState

FORMAT = "localllm-session"
VERSION = 1


class SessionError(LocalLLMError):
    """A session file that cannot be used with this model."""


def model_fingerprint(gguf, cfg) -> str:
    """Identifies the weights closely enough to refuse another model's state without hashing
    gigabytes: architecture, shapes, the tensor table, the vocabulary and the file's size."""
    h = hashlib.sha256()
    h.update(json.dumps(cfg.__dict__, sort_keys=True, default=str).encode())
    for name, t in gguf.tensors.items():
        h.update(f"{name}:{t.type.name}:{t.shape}".encode())
    h.update("\n".join(gguf.metadata.get("tokenizer.ggml.tokens", [])[:4096]).encode())
    h.update(str(gguf.file_size).encode())
    return h.hexdigest()


MAX_HEADER_BYTES = 64 << 20   # the JSON header, caller data included


def save_session(path: str | os.PathLike[str], state: KVState, fingerprint: str, extra: dict[str, Any]) -> None:
    if not isinstance(extra, dict):
        raise SessionError(f"extra must be a dict, not {quoted(extra)}")
    header = {"format": FORMAT, "version": VERSION, "model": fingerprint, "n_tokens": len(state.tokens),
              "extra": extra}
    try:   # before any file exists, so that a bad `extra` leaves nothing behind
        header_bytes = json.dumps(header).encode()
    except (TypeError, ValueError, RecursionError) as e:
        raise SessionError(f"extra must be JSON-serializable: {quoted(str(e))}") from None
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, header=np.frombuffer(header_bytes, dtype=np.uint8),
                     tokens=np.asarray(state.tokens, dtype=np.int32),
                     **{f"kv_{name}": a for name, a in state.arrays.items()})
    except OSError as e:
        raise SessionError(f"cannot write session {quoted(str(path))}: {e.strerror or e}") from None


def load_session(path: str | os.PathLike[str], fingerprint: str, layout: dict[str, tuple[np.dtype, tuple[int, ...]]],
                 n_ctx: int, n_vocab: int) -> tuple[KVState, dict[str, Any]]:
    """A session file is untrusted input: every field is checked against the model before use.
    layout: each cache array's dtype and shape, the position axis (1) at n_ctx."""
    try:
        with zipfile.ZipFile(path) as z:
            header = _header(path, _read(z, "header", np.dtype(np.uint8), (None,), MAX_HEADER_BYTES), fingerprint)
            if header["n_tokens"] > n_ctx:
                raise SessionError(f"{path}: session holds {header['n_tokens']} tokens, context is {n_ctx}")
            tokens = _read(z, "tokens", None, (header["n_tokens"],), n_ctx)
            arrays = {name: _read(z, f"kv_{name}", dtype, (shape[0], len(tokens), *shape[2:]), n_ctx)
                      for name, dtype, shape in ((n, *layout[n]) for n in layout)}
            if set(z.namelist()) != {"header.npy", "tokens.npy", *(f"kv_{n}.npy" for n in layout)}:
                raise SessionError(f"{path}: session holds other arrays than this model's KV cache")
    except SessionError:
        raise
    except FileNotFoundError:
        raise SessionError(f"no such session file: {quoted(str(path))}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile):
        raise SessionError(f"{path}: truncated or corrupt session file") from None
    _check_contents(path, tokens, arrays, n_vocab)
    return KVState(tuple(int(t) for t in tokens), arrays), header["extra"]


def _read(z: zipfile.ZipFile, name: str, dtype: np.dtype | None, shape: tuple[int | None, ...],
          max_len: int) -> np.ndarray:
    """One .npy member, its header checked (dtype; shape, None meaning any length up to max_len)
    before any data is read: a crafted header must not allocate gigabytes."""
    with z.open(f"{name}.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        got_shape, fortran, got_dtype = read_header(f)
        fits = len(got_shape) == len(shape) and all(want is None and n <= max_len or n == want
                                                    for n, want in zip(got_shape, shape))
        kind_ok = got_dtype == dtype if dtype is not None else got_dtype.kind in "iu" and got_dtype.itemsize <= 8
        if not fits or not kind_ok or fortran or got_dtype.hasobject:
            raise SessionError(f"{z.filename}: {name} is {got_dtype} {got_shape[:8]} where this model and KV type "
                               f"need {dtype or 'integers'} {tuple('n' if n is None else n for n in shape)}")
        data = f.read(int(np.prod(got_shape, dtype=np.int64)) * got_dtype.itemsize)
    a = np.frombuffer(data, dtype=got_dtype)
    if a.size != int(np.prod(got_shape, dtype=np.int64)):
        raise SessionError(f"{z.filename}: {name} is truncated")
    return a.reshape(got_shape)


def _header(path: Any, raw: np.ndarray, fingerprint: str) -> dict[str, Any]:
    try:
        header = json.loads(raw.tobytes().decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SessionError(f"{path}: corrupt session header") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SessionError(f"{path}: not a localllm session file")
    if header.get("version") != VERSION:
        raise SessionError(f"{path}: session format version {quoted(header.get('version'))} (this build reads {VERSION})")
    if header.get("model") != fingerprint:
        raise SessionError(f"{path}: session was saved with a different model")
    n, extra = header.get("n_tokens"), header.get("extra", {})
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or not isinstance(extra, dict):
        raise SessionError(f"{path}: inconsistent session header")
    return {**header, "extra": extra}


def _check_contents(path: Any, tokens: np.ndarray, arrays: dict[str, np.ndarray], n_vocab: int) -> None:
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= n_vocab):
        raise SessionError(f"{path}: session holds token ids outside the vocabulary (0..{n_vocab - 1})")
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise SessionError(f"{path}: session's K/V array {name} holds NaN or infinite values")
