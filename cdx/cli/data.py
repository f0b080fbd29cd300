"""`cdx data check DIR`: what training would make of a data folder, every bad sample named."""
from __future__ import annotations

from pathlib import Path

import click



@click.group()
def data():
    """Training data sets: make a synthetic one (synth), check a folder (check)."""


@data.command("synth")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--n", "n", type=int, required=True, help="How many faces.")
@click.option("--seed", type=int, default=1234, show_default=True,
              help="Generator seed: face i is the one `cdx train` draws as sample i with --data-seed SEED.")
@click.option("--size", type=int, default=64, show_default=True, help="Image and label-map side in pixels.")
def synth_cmd(folder, n, seed, size):
    """Write N synthetic faces to FOLDER (new or empty) as a plain training folder: images/, masks/,
    captions.json."""
    from ..train.synth_folder import write_synthetic_folder
    from .progress import Progress

    with Progress("writing synthetic faces", unit="face") as bar:
        write_synthetic_folder(folder, n, seed, size, progress=lambda i, total: bar.update(1, total=total))
    click.echo(f"wrote {folder}: {n} faces ({size}x{size}, seed {seed}) in images/, masks/ and captions.json")


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
