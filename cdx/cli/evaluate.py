"""`cdx eval`: FD, text consistency and mask consistency per generation method (the paper's Tables 1 and 2)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .options import (backend_option, check_distinct, checkpoint_option, guidance_option, parse_guidance,
                      sampling_from, sampling_options)


MIN_FD_N = 50  # below this many test faces FD is mostly the noise of a covariance estimate


def _check_writable(path: Path | None, flag: str) -> None:
    from ..errors import InputError

    if path is not None and not path.parent.is_dir():
        raise InputError(f"{flag} {path}: folder {path.parent} does not exist")


@click.command("eval")
@checkpoint_option
@backend_option()
@click.option("--device", default=None, help="cpu or cuda (torch backend).")
@click.option("--n", "n", type=int, default=128, show_default=True, help="Test conditions (caption + mask).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test conditions and the noise.")
@sampling_options()
@click.option("--batch", type=int, default=16, show_default=True, help="Conditions generated per network call.")
@guidance_option
@click.option("--n-ref", type=int, default=1024, show_default=True, help="Real faces for the FD reference.")
@click.option("--methods", default="all", show_default=True,
              help="Comma-separated: collaborative, composable, no_spatial, no_temporal, text_only, mask_only "
                   "(= all), and no_temporal_frozen (the step-0 weights with step 0's shaping, reused).")
@click.option("--eval-nets", type=click.Path(path_type=Path), default=None,
              help="Evaluation networks folder (default: the ones shipped with cdx).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None,
              help="Write the scores as JSON to this file.")
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), default=None,
              help="Write the table as Markdown to this file.")
def eval_(checkpoint, backend, device, n, seed, batch, guidance, n_ref, methods, eval_nets, json_path, md_path,
          **settings):
    """Score the methods on synthetic test faces: FD (lower is better), text acc, mask acc."""
    from ..api import config_of
    from ..defaults import default_checkpoint
    from ..backends.registry import make_runner
    from ..errors import InputError
    from ..evaluation.methods import EXTRA_METHODS, METHODS
    from ..evaluation.nets import load_eval_nets
    from ..evaluation.run_eval import evaluate, markdown_table
    from ..io import atomic_write_text

    chosen = []
    for m in (m.strip() for m in methods.split(",")):
        for name in (METHODS if m == "all" else [m] if m else []):
            if name not in chosen:
                chosen.append(name)
    known = {**METHODS, **EXTRA_METHODS}
    bad = [m for m in chosen if m not in known]
    if bad or not chosen:
        raise InputError(f"--methods: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(known)}")
    if n < 2 or n_ref < 2 or batch < 1:
        raise InputError("--n and --n-ref must be >= 2, --batch >= 1")
    if n < MIN_FD_N:
        click.echo(f"warning: --n {n}: FD from fewer than {MIN_FD_N} faces is dominated by the noise of its "
                   f"covariance estimate and means little; use --n 128 (the default) to compare methods", err=True)
    guidance = parse_guidance(guidance)
    _check_writable(json_path, "--json")
    _check_writable(md_path, "--markdown")
    check_distinct({"--json": json_path, "--markdown": md_path}, {"--checkpoint": checkpoint, "--eval-nets": eval_nets})
    sampling = sampling_from(settings, config_of(checkpoint))  # before the model is loaded
    nets = load_eval_nets(eval_nets)
    runner, desc = make_runner(backend, checkpoint or default_checkpoint(), None, device, guidance=guidance,
                               feature_cache=sampling.feature_cache,
                               progress=lambda name: click.echo(f"exporting {name} to ONNX (first use)", err=True))
    click.echo(desc, err=True)
    kinds = {m.kind for m in runner.cfg.modalities}
    lacking = [m for m in chosen if not set(known[m].kinds) <= kinds]
    if lacking:
        raise InputError(f"--methods: {', '.join(lacking)} need modalities this model lacks (it has "
                         f"{', '.join(sorted(kinds))})")
    cfg = sampling.config(runner.cfg)
    from .progress import Progress

    with Progress("generating", unit="batch", total=len(chosen) * -(-n // batch)) as bar, \
            Progress("bootstrap intervals", unit="replicate") as boot:
        result = evaluate(runner, cfg, n=n, seed=seed, sampling=sampling, methods=chosen, batch=batch, nets=nets,
                          n_ref=n_ref, progress=lambda msg: bar.update(1),
                          bootstrap_progress=lambda done, total: (bar.close(), boot.update(1, total=total)))
    result["backend"] = desc
    table = markdown_table(result)
    click.echo(table)
    if json_path:
        atomic_write_text(json_path, json.dumps(result, indent=1))
        click.echo(f"wrote {json_path}")
    if md_path:
        atomic_write_text(md_path, table)
        click.echo(f"wrote {md_path}")


command = eval_
