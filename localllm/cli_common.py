"""What every CLI command shares: errors become one line on stderr and a non-zero exit."""
from __future__ import annotations

import functools
import logging
import re
import sys

import click

from .errors import LocalLLMError


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
            if logging.getLogger("localllm").isEnabledFor(logging.DEBUG):
                raise
            _fail(f"internal error: {type(e).__name__}: {e} (run with -v for details)")
    return wrapper
