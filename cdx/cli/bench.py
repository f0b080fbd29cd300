"""`cdx bench`: latency per network, per step and end to end, per backend."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import click

from ..sampling.settings import Sampling
from .options import check_distinct, checkpoint_option, sampling_options

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
@sampling_options(steps=10)
@click.option("--isolate/--in-process", default=True, show_default=True,
              help="Each backend in a process of its own (undisturbed by the others), or all in this one.")
@click.option("--runs", type=int, default=5, show_default=True, help="Timed runs per measurement (the median is kept).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed runs before the timed ones.")
@click.option("--stages", default="networks,step,end_to_end", show_default=True,
              help="Comma-separated: networks (each alone), step (one collaborative step), end_to_end.")
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="Mask for the end-to-end stage.")
@click.option("--device", default=None, help="cpu or cuda (torch backend; --variants: cuda unless cpu is given).")
@click.option("--engine-dir", type=click.Path(path_type=Path), default=None,
              help="An export or TensorRT engine folder to bench (the tensorrt backend needs one).")
@click.option("--budget-s", type=float, default=None,
              help="--variants: start no variant after this many seconds (the others are recorded as skipped).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the results as JSON to this file.")
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), default=None,
              help="--variants: the report's table as Markdown too.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), default=None,
              help="Draw the results into this image file (needs .[plot]: matplotlib).")
def bench(checkpoint, preset, backends, variants, batch, isolate, runs, warmup, stages, mask, device, engine_dir,
          budget_s, json_path, md_path, plot_path, **settings):
    """Median latency after warm-up, side by side for several backends (or GPU variants)."""
    from ..defaults import default_checkpoint
    from ..devices import check_device
    from ..backends import backend_names
    from ..bench.harness import plot, report, table_text
    from ..bench.isolate import add_costs, bench_backends
    from ..errors import InputError
    from ..io import atomic_write_text, check_output_file

    if checkpoint and preset:
        raise InputError("give --checkpoint or --preset, not both")
    try:
        batches = [int(b) for b in batch.split(",")]
    except ValueError:
        raise InputError(f"--batch {batch}: give a batch size or comma-separated sizes") from None
    if min(batches) < 1 or runs < 1 or warmup < 0:
        raise InputError("--batch and --runs must be >= 1, --warmup >= 0")
    sampling = Sampling.of(**settings)
    steps = sampling.steps
    check_distinct({"--json": json_path, "--markdown": md_path, "--plot": plot_path},  # a user's file first
                   {"--mask": mask, "--checkpoint": checkpoint, "--engine-dir": engine_dir})
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
        _check_memory(_preset_config(preset or "official-256"), batches, steps, check_device(device or "cuda"))
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
    from ..api import config_of

    cfg = _preset_config(preset) if preset else config_of(checkpoint or default_checkpoint(), engine_dir)
    sampling = sampling.checked(cfg, flags=True)
    _check_memory(cfg, batches, sampling.steps, check_device(device) if device is not None else None)  # before any work
    ckpt = random_bundle(preset) if preset else (checkpoint or default_checkpoint())
    results, detail, skipped = bench_backends(names, every, ckpt, engine_dir, device, preset, batches, sampling, runs,
                                              warmup, stage_set, mask, isolate and len(names) > 1,
                                              log=lambda s: click.echo(s, err=True))
    peak = add_costs(detail, results, ckpt, sampling) if "end_to_end" in stage_set else None
    click.echo(table_text(results))
    if json_path:
        rep = report(results, detail, skipped=skipped, runs=runs, warmup=warmup, isolated=isolate and len(names) > 1,
                     sampling=dataclasses.asdict(sampling), peak_gflops=peak)
        atomic_write_text(json_path, json.dumps(rep, indent=1))
        click.echo(f"wrote {json_path}")
    if plot_path:
        plot(results, plot_path)
        click.echo(f"wrote {plot_path}")


def _preset_config(name: str):
    from ..errors import InputError
    from ..models.config import PRESETS, preset as get_preset

    if name not in PRESETS:
        raise InputError(f"--preset {name}: unknown; choose one of {', '.join(PRESETS)}")
    return get_preset(name)


def _check_memory(cfg, batches, steps, device) -> None:
    """Refuse a --batch whose working memory (the estimate a generation request is checked with) exceeds what
    the device (None: the CPU) has free, before any model or tensor is allocated."""
    from ..devices import check_free_memory
    from ..sampling.request import estimate_bytes

    b = max(batches)
    check_free_memory(estimate_bytes(cfg, b, steps or 50, len(cfg.modalities), False), device, f"--batch {b}",
                      "use a smaller --batch")


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
