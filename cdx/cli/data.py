"""`cdx data check DIR`: what training would make of a data folder, every bad sample named."""
from __future__ import annotations

from pathlib import Path

import click



@click.group()
def data():
    """Training data sets (plain folders or the official repository's layout)."""


@data.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--preset", default="small", show_default=True, help="Model preset: its modalities and image size.")
def check_cmd(folder, preset):
    """Counts, missing or malformed samples (each named), class histograms and caption vocabulary of FOLDER;
    exit code 2 when any sample is bad."""
    from ..errors import InputError
    from ..train.check import check
    from ..train.sources import open_source
    from .train import preset_config

    cfg = preset_config(preset)
    report = check(open_source(folder, cfg.image_size[0]), cfg, cfg.image_size[0])
    for line in report.lines():
        click.echo(line)
    if report.problems:
        raise InputError(f"{folder}: {len(report.problems)} bad sample(s), listed above; fix them or train with "
                         "--skip-bad")


command = data
