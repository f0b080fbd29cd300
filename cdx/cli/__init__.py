"""The `cdx` command line: one click group, a module per command (added with `add_command`), every command
behind one error boundary (`boundary.py`)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings

import click

from . import bench, build_engine, convert, data, edit, evaluate, export, run, serve, train
from .boundary import boundary, warn_one_line


class _Group(click.Group):
    def invoke(self, ctx):
        return boundary(super().invoke)(ctx)


@click.group(cls=_Group)
@click.version_option(package_name="cdx")
def main():
    """cdx: a fast inference engine for Collaborative Diffusion."""
    warnings.showwarning = warn_one_line
    with contextlib.suppress(ValueError):  # not the main thread (cdx embedded): leave signals alone
        # SIGTERM removes every temporary file and folder of this run and exits 130
        signal.signal(signal.SIGTERM, _terminate)


def _terminate(signum, frame):
    # Not an exception: raised inside torch's or ONNX's C++ callbacks (an export), unwinding can crash the
    # interpreter (SIGSEGV, seen). The temporary files and folders are removed here and the process ends.
    from ..io import release_all_claims

    release_all_claims()
    click.echo("error: terminated; nothing was written", err=True)
    sys.stderr.flush()
    os._exit(130)


for _module in (run, edit, evaluate, bench, export, build_engine, convert, train, data, serve):
    main.add_command(_module.command)
