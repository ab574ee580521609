"""Atomic file writes that clean up after themselves: the bytes go to `.<name>.tmp-<pid>` beside
the destination (same folder, so the final rename is atomic), the temporary file is removed on any
failure, and temporary files left by processes that died mid-write (kill -9, power loss) are
removed by the next write to that destination."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_TAG = ".tmp-"


def temp_path(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}{_TAG}{os.getpid()}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0   # exists but is another user's
    return True


def remove_stale(dst: Path) -> list[Path]:
    """Remove the temporary files of dead writers of `dst`; returns those removed."""
    removed = []
    prefix = f".{dst.name}{_TAG}"
    try:
        entries = list(os.scandir(dst.parent))
    except OSError:
        return removed
    for entry in entries:
        pid = entry.name[len(prefix):]
        if entry.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_write(dst: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields the temporary path to write; on success it replaces `dst`, on any failure it is removed."""
    dst = Path(dst)
    remove_stale(dst)
    tmp = temp_path(dst)
    try:
        yield tmp
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
