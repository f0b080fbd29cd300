"""`cdx bench`: latency per network, per step and end to end, per backend."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import click

from .options import checkpoint_option

STAGES = ("networks", "step", "end_to_end")


def random_bundle(preset: str) -> Path:
    """A bundle of `preset` with random weights, made once in the cache (for per-step cost at real size)."""
    from ..defaults import cache_dir
    from ..models.bundle import save_bundle
    from ..models.config import preset as get_preset
    from ..models.random_init import random_model

    from ..errors import InputError
    from ..models.config import PRESETS

    if preset not in PRESETS:
        raise InputError(f"--preset {preset}: unknown; choose one of {', '.join(PRESETS)}")
    path = cache_dir() / "random" / f"{preset}-seed0"
    if not (path / "bundle.json").is_file():
        save_bundle(random_model(get_preset(preset), seed=0), path, extra={"random_weights": True}, overwrite=True)
    return path


@click.command()
@checkpoint_option
@click.option("--preset", default=None, help="Bench a preset with random weights instead (e.g. official-256; "
                                             "the default with --variants).")
@click.option("--backends", default="torch,onnxruntime", show_default=True,
              help="Comma-separated backends, or all (every registered one that can run here; the others are "
                   "listed with the reason).")
@click.option("--variants", default=None,
              help="Bench the GPU variants of the loop instead of backends: default, all, or comma-separated "
                   "names (cdx.bench.variants). Random weights; --device cpu makes it a dry run.")
@click.option("--batch", default="1", show_default=True, help="Batch size, or comma-separated sizes.")
@click.option("--steps", type=int, default=10, show_default=True)
@click.option("--runs", type=int, default=5, show_default=True)
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--stages", default="networks,step,end_to_end", show_default=True)
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="Mask for the end-to-end stage.")
@click.option("--device", default=None, help="cpu or cuda (torch backend; --variants: cuda unless cpu is given).")
@click.option("--engine-dir", type=click.Path(path_type=Path), default=None,
              help="An export or TensorRT engine folder to bench (the tensorrt backend needs one).")
@click.option("--budget-s", type=float, default=None,
              help="--variants: start no variant after this many seconds (the others are recorded as skipped).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), default=None,
              help="--variants: the report's table as Markdown too.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None)
def bench(checkpoint, preset, backends, variants, batch, steps, runs, warmup, stages, mask, device, engine_dir,
          budget_s, json_path, md_path, plot_path):
    """Median latency after warm-up, side by side for several backends (or GPU variants)."""
    from ..defaults import default_checkpoint
    from ..devices import check_device
    from ..backends import backend_names
    from ..bench.harness import bench_runners, plot, report, table_text
    from ..errors import InputError
    from ..io import atomic_write_text, check_output_file

    if checkpoint and preset:
        raise InputError("give --checkpoint or --preset, not both")
    try:
        batches = [int(b) for b in batch.split(",")]
    except ValueError:
        raise InputError(f"--batch {batch}: give a batch size or comma-separated sizes") from None
    if min(batches) < 1 or steps < 1 or runs < 1 or warmup < 0:
        raise InputError("--batch, --steps and --runs must be >= 1, --warmup >= 0")
    if plot_path and importlib.util.find_spec("matplotlib") is None:
        raise InputError("--plot needs matplotlib (pip install matplotlib); drop --plot to bench without it")
    for flag, p in (("--json", json_path), ("--markdown", md_path), ("--plot", plot_path)):
        if p is not None:
            check_output_file(p, flag)
    if variants is not None:
        if checkpoint:
            raise InputError("--variants benches random weights: give --preset, not --checkpoint")
        if mask is not None:
            raise InputError("--variants conditions on a random label map: drop --mask")
        if device is None:
            import torch

            if not torch.cuda.is_available():
                raise InputError("--variants measures GPU variants and no CUDA device is visible here; add "
                                 "--device cpu for a dry run")
        return bench_variants(variants, preset or "official-256", check_device(device or "cuda"), batches, steps,
                              runs, warmup, engine_dir, budget_s, json_path, md_path, plot_path)
    if md_path or budget_s is not None:
        raise InputError("--markdown and --budget-s go with --variants")
    every = backends.strip() == "all"
    names = backend_names() if every else [b.strip() for b in backends.split(",") if b.strip()]
    unknown = [b for b in names if b not in backend_names()]
    if not names or unknown:
        raise InputError(f"--backends {backends}: choose from all, {', '.join(backend_names())}")
    if device is not None:
        check_device(device)
    if mask is not None:
        from ..models.masks import load_label_map

        load_label_map(mask)
    stage_set = tuple(s.strip() for s in stages.split(","))
    if not stage_set or not set(stage_set) <= set(STAGES):
        raise InputError(f"--stages {stages}: choose from {', '.join(STAGES)}")
    ckpt = random_bundle(preset) if preset else (checkpoint or default_checkpoint())
    runners, skipped = _runners(names, every, ckpt, engine_dir, device)
    results, detail = [], {}
    for b in batches:
        res, det = bench_runners(runners, preset or next(iter(runners.values())).cfg.preset, b, steps, runs,
                                 warmup, stage_set, mask=mask, log=lambda s: click.echo(s, err=True))
        results += res
        detail.update(det if len(batches) == 1 else {f"{k} b={b}": v for k, v in det.items()})
    click.echo(table_text(results))
    if json_path:
        atomic_write_text(json_path, json.dumps(report(results, detail, skipped=skipped, runs=runs, warmup=warmup),
                                                indent=1))
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot(results, plot_path)
        click.echo(f"wrote {plot_path}")


def _runners(names, every: bool, ckpt, engine_dir, device) -> tuple[dict, dict]:
    """({backend: runner}, {backend: why skipped}): with --backends all, a backend that cannot run is skipped."""
    from ..backends import make_runner
    from ..errors import CdxError

    runners, skipped = {}, {}
    for backend in names:
        try:
            runner, desc = make_runner(backend, ckpt, engine_dir, device,
                                       progress=lambda n: click.echo(f"exporting {n} to ONNX (first use)", err=True))
        except CdxError as e:
            if not every:
                raise
            skipped[backend] = str(e)
            click.echo(f"skipped {backend}: {e}", err=True)
            continue
        click.echo(desc, err=True)
        runners[backend] = runner
    if not runners:
        raise CdxError("no backend could run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return runners, skipped


def bench_variants(spec, preset, device, batches, steps, runs, warmup, engine_dir, budget_s, json_path, md_path,
                   plot_path=None):
    """`cdx bench --variants`: the GPU variants side by side, the report rewritten after each measurement."""
    from ..bench.variants import VariantBench, variant_names
    from ..errors import CdxError, InputError
    from ..io import atomic_write_text
    from ..models.config import PRESETS, preset as get_preset

    try:
        names = variant_names(spec)
    except ValueError as e:
        raise InputError(f"--variants: {e}") from None
    if preset not in PRESETS:
        raise InputError(f"--preset {preset}: unknown; choose one of {', '.join(PRESETS)}")

    def write(rep: dict, md: str) -> None:
        if json_path:
            atomic_write_text(json_path, json.dumps(rep, indent=1, default=str))
        if md_path:
            atomic_write_text(md_path, md)

    if device.type == "cuda":
        import torch

        torch.cuda.set_device(device.index or 0)  # set_device refuses a device without an index
    vb = VariantBench(get_preset(preset), device, steps, batches, runs, warmup, engine_dir=engine_dir,
                      budget_s=float("inf") if budget_s is None else budget_s, write=write,
                      log=lambda s: click.echo(s, err=True))
    failed = vb.run(names)
    click.echo(vb.markdown())
    if plot_path:
        from ..bench.harness import plot

        plot(vb.rows, plot_path)
        click.echo(f"wrote {plot_path}")
    if failed:
        raise CdxError(f"{failed} variant measurement(s) failed (the report says which and why)")


command = bench
