"""`cdx convert`: an official Lightning checkpoint -> a cdx bundle."""
from __future__ import annotations

from pathlib import Path

import click



@click.command()
@click.option("--official", "official", type=click.Path(path_type=Path), required=True,
              help="Official .ckpt (LatentDiffusionCompose).")
@click.option("--preset", type=click.Choice(["official-256", "official-512"]), required=True,
              help="The architecture the checkpoint was trained with.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cdx bundle at --out (nothing else is replaced).")
def convert(official, preset, out, overwrite):
    """Convert an official checkpoint (loaded without code execution) into a bundle."""
    from ..io import check_folder_target
    from ..models.bundle import FORMAT, save_bundle
    from ..models.config import preset as get_preset
    from ..models.convert import convert_official

    from .options import check_distinct

    check_folder_target(out, FORMAT, overwrite)  # before reading gigabytes
    check_distinct({"--out": out}, {"--official": official}, folders=("--out",))
    model = convert_official(official, get_preset(preset))
    digest = save_bundle(model, out, extra={"converted_from": Path(official).name}, overwrite=overwrite)
    click.echo(f"wrote bundle {out} ({preset}, hash {digest[:16]})")


command = convert
