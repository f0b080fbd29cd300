"""`cdx export`: every network of a bundle to ONNX, with a manifest; `--verify` against torch."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import CdxError
from .options import check_distinct, checkpoint_option

MAX_PAD = 64


@click.command()
@checkpoint_option
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Export folder to write.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (14 to 20).")
@click.option("--verify", is_flag=True, help="Run every graph in ONNX Runtime against torch on random inputs.")
@click.option("--pad-heads", type=int, default=0, show_default=True,
              help=f"Zero-pad attention head sizes to a multiple of this, 0 (none) to {MAX_PAD} (8 for TensorRT's "
                   "fused attention); exact.")
@click.option("--overwrite", is_flag=True, help="Replace an existing cdx export at --out (nothing else is replaced).")
def export(checkpoint, out, opset, verify, pad_heads, overwrite):
    """Export a bundle to ONNX (one file per network + manifest.json)."""
    from ..defaults import default_checkpoint
    from ..errors import InputError
    from ..export.manifest import FORMAT
    from ..export.onnx_export import check_opset, export_bundle
    from ..export.verify import verify_export
    from ..io import check_folder_target
    from ..models.bundle import load_bundle

    check_opset(opset)
    if not 0 <= pad_heads <= MAX_PAD:
        raise InputError(f"--pad-heads {pad_heads}: use 0 (no padding) to {MAX_PAD}, e.g. 8")
    check_folder_target(out, FORMAT, overwrite)  # before minutes of export
    check_distinct({"--out": out}, {"--checkpoint": checkpoint}, folders=("--out",))
    ckpt = checkpoint or default_checkpoint()
    model = load_bundle(ckpt)
    if pad_heads:
        from ..export.head_pad import pad_attention_heads

        changed = pad_attention_heads(model, multiple=pad_heads)
        sizes = sorted({f"{a}->{b}" for a, b in changed.values()})
        click.echo(f"padded {len(changed)} attention blocks ({', '.join(sizes) or 'none needed'})", err=True)
    manifest = export_bundle(ckpt, out, opset, model=model, overwrite=overwrite,
                             progress=lambda n: click.echo(f"exporting {n}", err=True))
    click.echo(f"wrote {len(manifest['networks'])} ONNX graphs and manifest.json to {out} (opset {opset})")
    if verify:
        from ..backends.ort import ort_providers
        from ..backends.pytorch.eager import TorchRunner

        reference = TorchRunner(load_bundle(ckpt) if pad_heads else model)  # against the unpadded model
        worst = verify_export(reference, out, providers=ort_providers())
        for name, err in worst.items():
            click.echo(f"  {name:<16} worst relative error {err:.2e}")
        bad = [n for n, e in worst.items() if not e <= 1e-4]
        if bad:
            raise CdxError(f"verification failed for {', '.join(bad)} (> 1e-4)")


command = export
