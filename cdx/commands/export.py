"""`cdx export`: every network of a bundle to ONNX, with a manifest; `--verify` against torch."""
from __future__ import annotations

from pathlib import Path

import click

from ..cli import friendly, main
from .common import checkpoint_option


@main.command()
@checkpoint_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export folder to write.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--verify", is_flag=True, help="Run every graph in ONNX Runtime against torch on random inputs.")
@friendly
def export(checkpoint, out, opset, verify):
    """Export a bundle to ONNX (one file per network + manifest.json)."""
    from ..defaults import default_checkpoint
    from ..export.onnx_export import export_bundle
    from ..export.verify import verify_export
    from ..models.bundle import load_bundle

    ckpt = checkpoint or default_checkpoint()
    model = load_bundle(ckpt)
    manifest = export_bundle(ckpt, out, opset, model=model, progress=lambda n: click.echo(f"exporting {n}", err=True))
    click.echo(f"wrote {len(manifest['networks'])} ONNX graphs and manifest.json to {out} (opset {opset})")
    if verify:
        worst = verify_export(model, out)
        for name, err in worst.items():
            click.echo(f"  {name:<16} worst relative error {err:.2e}")
        bad = [n for n, e in worst.items() if not e <= 1e-4]
        if bad:
            raise SystemExit(f"error: verification failed for {', '.join(bad)} (> 1e-4)")
