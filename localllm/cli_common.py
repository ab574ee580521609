"""What every CLI command shares: errors become one line on stderr and a non-zero exit; -v
anywhere on the line; the options several commands take, with their checks; the first-run notice
while kernels compile; the warm-up that keeps compile time out of timed figures."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import click

from .errors import LocalLLMError

BACKEND_CHOICES = ["cpu", "numpy", "opencl", "auto"]
BACKEND_HELP = "cpu: Numba SIMD kernels; numpy: float32 reference (slow); opencl: a GPU; auto: opencl if a GPU exists, else cpu."


# C0 controls but newline and tab, DEL, C1 controls: ESC opens ANSI/OSC sequences (colours, cursor
# moves, window titles, hyperlinks, clipboard writes), and a C1 CSI (U+009B) does the same alone.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Model output as the terminal should show it: control characters escaped (`\\x1b`), so
    vocabulary tokens cannot drive the terminal. The API returns text unchanged."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _fail(msg: str, code: int = 1) -> None:
    click.echo(f"error: {terminal_safe(msg)}", err=True)
    sys.exit(code)


def _guard(fn):
    """One clear line instead of a traceback; -v shows the traceback for unexpected errors."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LocalLLMError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)
        except (BrokenPipeError, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as e:  # noqa: BLE001: last line of defence, still one line
            if logging.getLogger("localllm").isEnabledFor(logging.INFO):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (run with -v for details)")
    return wrapper


# --- -v before or after the subcommand ----------------------------------------------------------
_verbosity = 0   # -v counted so far on this command line (the group's and the subcommand's add up)


def set_verbosity(count: int) -> None:
    """-v: info logs (and tracebacks of internal errors), -vv: debug."""
    global _verbosity
    if not count:
        return
    _verbosity += count
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    root.setLevel(logging.DEBUG if _verbosity > 1 else logging.INFO)


def verbose_option(fn: Callable) -> Callable:
    return click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True,
                        callback=lambda ctx, param, value: set_verbosity(value),
                        help="Log to stderr (-vv for debug); also accepted before the command.")(fn)


# --- options with their checks ------------------------------------------------------------------
def backend_option(fn: Callable) -> Callable:
    return click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="cpu", show_default=True,
                        help=BACKEND_HELP)(fn)


def threads_option(fn: Callable) -> Callable:
    return click.option("-t", "--threads", type=click.IntRange(min=1), default=None,
                        help="CPU threads (default: all cores Numba sees).")(fn)


def check_max_tokens(value: int | None) -> int | None:
    if value is not None and value < -1:
        raise LocalLLMError(f"max_tokens must be -1 (until done) or a count >= 0, not {value}")
    return value


def _at_least(name: str, value: int, lo: int) -> int:
    if value < lo:
        raise LocalLLMError(f"{name} must be >= {lo}, not {value}")
    return value


def _finite(name: str, value: float, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise LocalLLMError(f"{name} must be a number {bound}" + (f" and <= {hi}" if hi != math.inf else "")
                            + f", not {value}")
    return value


def _seed(value: int | None) -> int | None:
    if value is not None and not 0 <= value < 2**63:
        raise LocalLLMError(f"seed must be between 0 and 2^63-1, not {value} (leave it unset for a random seed)")
    return value


# one check per sampling setting, shared by the command line and the chat's /set
CHECKS: dict[str, Callable] = {
    "temperature": lambda v: _finite("temperature", v, 0.0),
    "top_k": lambda v: _at_least("top_k", v, 0),
    "top_p": lambda v: _finite("top_p", v, 0.0, 1.0),
    "min_p": lambda v: _finite("min_p", v, 0.0, 1.0),
    "repeat_penalty": lambda v: _finite("repeat_penalty", v, 0.0, lo_open=True),
    "seed": _seed,
    "max_tokens": check_max_tokens,
}


def check_sampling(settings: dict) -> dict:
    """The settings, each checked: a LocalLLMError names the first bad one."""
    for key, value in settings.items():
        if key in CHECKS:
            CHECKS[key](value)
    return settings


def default_reply_cap(n_ctx: int) -> int:
    """Tokens a reply may take when -n is not given: a small model can loop until the context is
    full (minutes); llama.cpp's -n -1 still asks for that."""
    return max(1, min(2048, n_ctx // 2))


# --- the first run: kernels compile -------------------------------------------------------------
ISA_NAMES = {"vnni": "avx512-vnni"}   # kernels.isa's path names, as users know the instruction sets

def _kernel_cache_marker(models: list[str]) -> tuple[Path, str]:
    """(marker file, ISA): the marker exists once this ISA's kernels for these models' tensor
    types were compiled into Numba's cache from these kernel sources with this Numba (a source
    edit or an upgrade recompiles; so does a model with another quantization)."""
    import numba

    from . import kernels
    from .catalog import resolve_model
    from .gguf_file import GGUFFile
    from .kernels.isa import best_isa
    src = Path(kernels.__file__).parent
    types: set[str] = set()
    for m in models:
        with contextlib.closing(GGUFFile(resolve_model(m))) as f:
            types |= {t.type.name for t in f.tensors.values()}
    stamp = hashlib.sha1(f"{numba.__version__} {sorted(types)}".encode())
    for f in sorted(src.glob("*.py")):
        st = f.stat()
        stamp.update(f"{f.name}:{st.st_mtime_ns}:{st.st_size}".encode())
    cache_dir = Path(os.environ.get("NUMBA_CACHE_DIR") or src / "__pycache__")
    isa = best_isa()
    return cache_dir / f"localllm-compiled-{isa}-{stamp.hexdigest()[:16]}", isa


@contextlib.contextmanager
def first_run_notice(backend: str, models: list[str]) -> Iterator[None]:
    """Around loading and warming up `models` (paths or catalog names, fetched first): on a cold
    kernel cache (the cpu backend's first run), say on stderr that kernels compile, with a running
    count on a terminal and the time it took."""
    if backend != "cpu":
        yield
        return
    marker, isa = _kernel_cache_marker(models)
    if marker.exists():
        yield
        return
    t0, done, shown = time.perf_counter(), threading.Event(), threading.Event()
    text = f"localllm: compiling kernels for {ISA_NAMES.get(isa, isa)}, first run only…"
    notice = threading.Thread(target=_notice, args=(text, t0, done, shown), daemon=True)
    notice.start()
    ok = False
    try:
        yield
        ok = True
    finally:
        done.set()
        notice.join()
        if shown.is_set():
            again = "\r" + text if sys.stderr.isatty() else ""   # a terminal: over the running count
            click.echo(f"{again} {'done' if ok else 'stopped'} in {time.perf_counter() - t0:.0f} s", err=True)
    if ok:
        with contextlib.suppress(OSError):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()


NOTICE_AFTER_S = 1.0   # a file refused at once gets its one-line error and no notice


def _notice(text: str, t0: float, done: threading.Event, shown: threading.Event) -> None:
    """The notice, once the work has taken NOTICE_AFTER_S, then (on a terminal) a running count."""
    if done.wait(NOTICE_AFTER_S):
        return
    shown.set()
    click.echo(text, err=True, nl=False)
    if sys.stderr.isatty():
        _tick(text, t0, done)


def _tick(text: str, t0: float, done: threading.Event) -> None:
    while not done.wait(1.0):
        click.echo(f"\r{text} {time.perf_counter() - t0:.0f} s", err=True, nl=False)


def warm_up(llm) -> None:
    """Run every kernel once (a short batch, then single steps) so that compiling or loading
    them from the cache is not counted in the first prompt's or reply's tok/s."""
    if llm.n_ctx < 12 or llm.backend.name == "numpy":   # numpy compiles nothing
        return
    ids = (llm.tokenize(" the", add_bos=False) or [0]) * 8
    for _ in llm.generate(ids[:8], max_tokens=2, temperature=0.0):
        pass
    llm.reset()
    if llm.draft is not None:
        llm.draft.reset()
    llm.last_stats = {}


def resolve_backend(name: str) -> str:
    """`auto` becomes the backend it picks, said on stderr."""
    if name != "auto":
        return name
    from .backend import BACKENDS
    chosen = BACKENDS["auto"]().name
    click.echo(f"localllm: --backend auto chose {chosen}", err=True)
    return chosen
