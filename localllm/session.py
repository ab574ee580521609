"""Sessions on disk: a sequence's tokens and K/V rows, plus caller data (e.g. chat messages), in
one versioned .npz written atomically and validated against the model on load."""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write
from .errors import LocalLLMError
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


def save_session(path: str | os.PathLike[str], state: KVState, fingerprint: str, extra: dict[str, Any]) -> None:
    path = Path(path)
    header = {"format": FORMAT, "version": VERSION, "model": fingerprint, "n_tokens": len(state.tokens),
              "extra": extra}
    try:
        with atomic_write(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
                     tokens=np.asarray(state.tokens, dtype=np.int32),
                     **{f"kv_{name}": a for name, a in state.arrays.items()})
    except OSError as e:
        raise SessionError(f"cannot write session {path}: {e.strerror}") from None


def load_session(path: str | os.PathLike[str], fingerprint: str) -> tuple[KVState, dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(bytes(z["header"]).decode())
            if header.get("format") != FORMAT:
                raise SessionError(f"{path}: not a localllm session file")
            if header.get("version") != VERSION:
                raise SessionError(f"{path}: session format version {header.get('version')} (this build reads {VERSION})")
            if header.get("model") != fingerprint:
                raise SessionError(f"{path}: session was saved with a different model")
            tokens = z["tokens"]
            arrays = {name[3:]: z[name] for name in z.files if name.startswith("kv_")}
    except SessionError:
        raise
    except FileNotFoundError:
        raise SessionError(f"no such session file: {path}") from None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        raise SessionError(f"{path}: truncated or corrupt session file") from None
    if len(tokens) != header["n_tokens"] or not arrays or any(a.ndim < 2 or a.shape[1] != len(tokens)
                                                              for a in arrays.values()):
        raise SessionError(f"{path}: inconsistent session file")
    return KVState(tuple(int(t) for t in tokens), arrays), header.get("extra", {})
