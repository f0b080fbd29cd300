"""The command line's error boundary: expected failures become one `error: ...` line and exit 2, bugs one line
and exit 1, never a traceback (CDX_TRACEBACK=1 lets it through)."""
from __future__ import annotations

import errno
import functools
import os
import sys

import click

from ..errors import CdxError

TRACEBACK_ENV = "CDX_TRACEBACK"
_OOM_WORDS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def _fail(message: str, code: int):
    click.echo(f"error: {_one_line(message)}", err=True)
    sys.exit(code)


def _os_message(e: OSError) -> str:
    where = f"{e.filename}: " if e.filename else ""
    if e.errno == errno.ENOSPC:
        return f"{where}no space left on device; free some space or write elsewhere"
    return f"{where}{e.strerror or e}"


def boundary(fn):
    """Expected failures -> `error: <one line>`, exit 2; anything else is a bug -> one line, exit 1.

    Set CDX_TRACEBACK=1 to let the exception (and its traceback) through."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.Abort, click.ClickException):
            raise  # click's own exits and usage errors (exit 2 with the usage line)
        except KeyboardInterrupt:
            click.echo("error: interrupted; nothing was written", err=True)
            sys.exit(130)
        except Exception as e:
            if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
                raise
            if isinstance(e, CdxError):
                _fail(str(e), 2)
            if isinstance(e, OSError):  # write errors, a full disk, an unwritable cache, /proc paths
                _fail(_os_message(e), 2)
            if _device_problem(e):  # torch's own words for a device this install cannot use
                _fail(f"device: {str(e).strip().splitlines()[0][:200]}; use --device cpu or a CUDA build of torch", 2)
            if isinstance(e, MemoryError) or (isinstance(e, RuntimeError)
                                              and any(w in str(e).lower() for w in _OOM_WORDS)):
                _fail("out of memory; try a smaller --batch (or a smaller model or image)", 2)
            first = _one_line(str(e).strip().splitlines()[0] if str(e).strip() else "")
            _fail(f"internal error (a bug in cdx): {type(e).__name__}: {first[:300]}; "
                  f"run again with {TRACEBACK_ENV}=1 to see the traceback", 1)

    return wrapper


def _device_problem(e: Exception) -> bool:
    text = str(e)
    return ((isinstance(e, AssertionError) and "not compiled with CUDA" in text)
            or (isinstance(e, RuntimeError) and ("device type at start of device string" in text
                                                 or "no CUDA GPUs are available" in text
                                                 or "Found no NVIDIA driver" in text)))


def warn_one_line(message, category, filename, lineno, file=None, line=None):
    """`warnings.showwarning` for the command line: `warning: <one line>` on stderr."""
    click.echo(f"warning: {_one_line(message)}", err=True)
