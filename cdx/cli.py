"""The `cdx` command line: thin commands over library functions."""
from __future__ import annotations

import functools
import sys
import warnings

import click

from .errors import CdxError


def friendly(fn):
    """Turn user-facing failures into one line on stderr and exit code 2; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CdxError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)

    return wrapper


def _warn_one_line(message, category, filename, lineno, file=None, line=None):
    click.echo(f"warning: {message}", err=True)


@click.group()
@click.version_option(package_name="cdx")
def main():
    """cdx: a fast inference engine for Collaborative Diffusion."""
    warnings.showwarning = _warn_one_line


def _register():
    from .commands import convert, export, run  # noqa: F401  (each module adds its command to `main`)

    for mod in ("bench", "build_engine", "train", "eval", "edit"):
        try:
            __import__(f"{__package__}.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.commands.{mod}":
                raise


_register()
