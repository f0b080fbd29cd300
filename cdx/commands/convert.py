"""`cdx convert`: an official Lightning checkpoint -> a cdx bundle."""
from __future__ import annotations

from pathlib import Path

import click

from ..cli import friendly, main


@main.command()
@click.option("--official", "official", type=click.Path(path_type=Path), required=True,
              help="Official .ckpt (LatentDiffusionCompose).")
@click.option("--preset", type=click.Choice(["official-256", "official-512"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
@friendly
def convert(official, preset, out):
    """Convert an official checkpoint (loaded without code execution) into a bundle."""
    from ..models.bundle import save_bundle
    from ..models.config import preset as get_preset
    from ..models.convert import convert_official

    model = convert_official(official, get_preset(preset))
    digest = save_bundle(model, out, extra={"converted_from": Path(official).name})
    click.echo(f"wrote bundle {out} ({preset}, hash {digest[:16]})")
