"""Progress of a command's stages on stderr: a bar where stderr is a terminal, else one line per stage (a log
file or a pipe gets no bar frames)."""
from __future__ import annotations

import sys

import click


def is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def plural(n: int, unit: str) -> str:
    """`unit` for a count of `n` ("1 step", "16 batches")."""
    if n == 1:
        return unit
    return unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")


class Progress:
    """A stage's progress (`with Progress("denoising") as p: p.update(total=n)`). The bar starts on the first
    update, when its total is known (no empty `0step` frame); without a terminal the stage's line is printed
    then, and nothing per step."""

    def __init__(self, desc: str, unit: str = "step", total: int | None = None, leave: bool = False):
        self.desc, self.unit, self.total, self.leave = desc, unit, total, leave
        self.bar = None
        self.started = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1, total: int | None = None, postfix: str | None = None) -> None:
        if total is not None:
            self.total = total
        if not self.started:
            self.started = True
            if is_terminal():
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc=self.desc, unit=self.unit, leave=self.leave, file=sys.stderr)
            else:
                count = f" ({self.total} {plural(self.total, self.unit)})" if self.total else ""
                click.echo(f"{self.desc}{count} ...", err=True)
        if self.bar is not None:
            if total is not None:
                self.bar.total = total
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
