"""The `cdx` command line: one click group, a module per command (named in COMMANDS, imported only when its
command runs, so that `cdx --help` imports no torch), every command behind one error boundary (`boundary.py`)."""
from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import warnings

import click

from .boundary import boundary, warn_one_line

# command -> (its module in cdx.cli, the one line `cdx --help` shows: the first line of the command's docstring)
COMMANDS = {
    "run": ("run", "Generate faces that follow a caption and a mask."),
    "edit": ("edit", "Edit a face so that it follows a new caption and/or mask, keeping who it is."),
    "eval": ("evaluate", "Score the methods on synthetic test faces: FD (lower is better), text acc, mask acc."),
    "bench": ("bench", "Median latency after warm-up, side by side for several backends (or GPU variants)."),
    "export": ("export", "Export a bundle to ONNX (one file per network + manifest.json)."),
    "build-engine": ("build_engine", "One TensorRT engine per network (polygraphy's loaders), with a manifest; "
                                     "current engines are skipped."),
    "convert": ("convert", "Convert an official checkpoint (loaded without code execution) into a bundle."),
    "train": ("train", "Train a model on synthetic faces or your own data (stages: vae, collaborator, diffusers, "
                       "assemble)."),
    "data": ("data", "Training data sets: make a synthetic one (synth), check a folder (check)."),
    "cache": ("cache", "The cache folder: list it (ls) or remove what cdx wrote there (clean)."),
    "serve": ("serve", "Serve the model over HTTP (the page at /, the API at /v1) until SIGINT or SIGTERM, which "
                       "drain it."),
}


class _Group(click.Group):
    """The commands of COMMANDS, each imported on first use; `cdx --help` lists their whole one-line
    descriptions without importing them."""

    def list_commands(self, ctx):
        return [*COMMANDS, *sorted(set(self.commands) - set(COMMANDS))]

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            self.commands[name] = importlib.import_module(f".{COMMANDS[name][0]}", __name__).command
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][1] if name in COMMANDS else self.commands[name].get_short_help_str(200))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        return boundary(super().invoke)(ctx)


@click.group(cls=_Group, context_settings={"max_content_width": 120})
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
