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
@click.option("--pad-heads", type=int, default=0, show_default=True,
              help="Zero-pad attention head sizes to a multiple of this (8 for TensorRT's fused attention); exact.")
@friendly
def export(checkpoint, out, opset, verify, pad_heads):
    """Export a bundle to ONNX (one file per network + manifest.json)."""
    from ..defaults import default_checkpoint
    from ..export.onnx_export import export_bundle
    from ..export.verify import verify_export
    from ..models.bundle import load_bundle

    ckpt = checkpoint or default_checkpoint()
    model = load_bundle(ckpt)
    if pad_heads:
        from ..export.head_pad import pad_attention_heads

        changed = pad_attention_heads(model, multiple=pad_heads)
        sizes = sorted({f"{a}->{b}" for a, b in changed.values()})
        click.echo(f"padded {len(changed)} attention blocks ({', '.join(sizes) or 'none needed'})", err=True)
    manifest = export_bundle(ckpt, out, opset, model=model, progress=lambda n: click.echo(f"exporting {n}", err=True))
    click.echo(f"wrote {len(manifest['networks'])} ONNX graphs and manifest.json to {out} (opset {opset})")
    if verify:
        worst = verify_export(load_bundle(ckpt) if pad_heads else model, out)  # against the unpadded model
        for name, err in worst.items():
            click.echo(f"  {name:<16} worst relative error {err:.2e}")
        bad = [n for n, e in worst.items() if not e <= 1e-4]
        if bad:
            raise SystemExit(f"error: verification failed for {', '.join(bad)} (> 1e-4)")
