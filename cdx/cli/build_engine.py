"""`cdx build-engine`: TensorRT engines from an ONNX export (needs TensorRT and an NVIDIA GPU)."""
from __future__ import annotations

from pathlib import Path

import click



@click.command("build-engine")
@click.option("--onnx", "onnx_dir", type=click.Path(path_type=Path), required=True, help="A `cdx export` folder.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Engine folder to write.")
@click.option("--fp16/--fp32", default=True, show_default=True, help="The engines' precision.")
@click.option("--batch", default="1,1,4", show_default=True, help="MIN,OPT,MAX batch of the profiles (or N).")
@click.option("--static", is_flag=True, help="Fixed shapes at the OPT batch (what CUDA graphs prefer).")
@click.option("--vae-fp32", is_flag=True, help="Keep the VAE networks in fp32.")
@click.option("--refittable", is_flag=True, help="Allow refitting weights (for `cdx edit`).")
@click.option("--timing-cache", type=click.Path(path_type=Path), default=None,
              help="Tactic timing cache to read and update (default: one per TensorRT and GPU in --out).")
@click.option("--workspace", type=click.IntRange(min=1), default=None, help="Builder workspace limit in MiB.")
@click.option("--verify", is_flag=True, help="Compare each engine with ONNX Runtime.")
def build_engine(onnx_dir, out, fp16, batch, static, vae_fp32, refittable, timing_cache, workspace, verify):
    """One TensorRT engine per network (polygraphy's loaders), with a manifest; current engines are skipped."""
    from ..backends.trt import build_engines, check_errors, parse_batch, read_engine_manifest, verify_engines
    from .options import check_distinct

    check_distinct({"--out": out}, {"--onnx": onnx_dir}, folders=("--out",))
    check_distinct({"--timing-cache": timing_cache}, {"--onnx": onnx_dir})

    report = build_engines(onnx_dir, out, fp16=fp16, batch=parse_batch(batch), static=static, vae_fp32=vae_fp32,
                           refittable=refittable, timing_cache=timing_cache,
                           workspace=workspace << 20 if workspace else None, log=lambda s: click.echo(s, err=True))
    for name, what in report.items():
        click.echo(f"  {name:<16} {what}")
    if verify:
        errors = verify_engines(out, onnx_dir)
        for name, err in errors.items():
            click.echo(f"  {name:<16} worst relative error {err:.2e}")
        check_errors(errors, read_engine_manifest(out))


command = build_engine
