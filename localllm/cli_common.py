"""What every CLI command shares: errors become one line on stderr and a non-zero exit."""
from __future__ import annotations

import functools
import logging
import sys

import click

from .errors import LocalLLMError


def _fail(msg: str, code: int = 1) -> None:
    click.echo(f"error: {msg}", err=True)
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
