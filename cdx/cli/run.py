"""`cdx run`: generate faces from a caption and/or a mask (the paper's Algorithm 2); a client of `cdx.Pipeline`."""
from __future__ import annotations

from pathlib import Path

import click

from .options import (backend_option, check_distinct, check_output_path, checkpoint_option, grid, guidance_option,
                      parse_guidance, sampling_from, sampling_options, save_images)


def parse_conds(values) -> dict[str, Path]:
    """('sketch=a.png', ...) -> {'sketch': Path('a.png')}; a malformed entry is a one-line error."""
    from ..errors import InputError

    out = {}
    for v in values:
        name, sep, path = str(v).partition("=")
        if not sep or not name or not path:
            raise InputError(f"--cond {v}: expected NAME=FILE, e.g. sketch=sketch.png")
        if name in out:
            raise InputError(f"--cond {name}: given twice")
        out[name] = Path(path)
    return out


@click.command()
@click.option("--text", default=None, help="Caption, e.g. 'This man has beard of medium length.'")
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="Label-map PNG (19 CelebAMask-HQ ids).")
@click.option("--cond", "conds", multiple=True, metavar="NAME=FILE",
              help="The condition of another modality of the model, e.g. sketch=sketch.png (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out.png"), show_default=True,
              help="Image file; a batch writes one per item (out-0.png, out-1.png, ...).")
@checkpoint_option
@backend_option()
@click.option("--engine-dir", type=click.Path(path_type=Path), default=None, help="Run a given export/engine folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of item 0; item i uses seed + i.")
@sampling_options()
@click.option("--batch", type=int, default=1, show_default=True, help="Images to generate (item i uses seed + i).")
@guidance_option
@click.option("--grid", "grid_path", type=click.Path(path_type=Path), default=None,
              help="Also write the batch side by side in one image.")
@click.option("--save-influence", type=click.Path(path_type=Path), default=None,
              help="PNG grid of item 0's influence maps: a row per modality, a column per chosen step.")
@click.option("--influence-steps", type=int, default=10, show_default=True,
              help="How many steps (columns) the influence grid shows.")
@click.option("--save-intermediates", type=click.Path(path_type=Path), default=None,
              help="PNG grid of each step's predicted x0 (rows: t, columns: items).")
@click.option("--freeu", default=None, metavar="B1,B2,S1,S2",
              help="FreeU on the collaborators' decoders, e.g. 1.1,1.2,1,1 (off by default).")
@click.option("--device", default=None, help="cpu or cuda (torch and onnxruntime backends).")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Network precision of the torch backend (default: fp16 on CUDA, fp32 on the CPU).")
@click.option("--cuda-graph/--no-cuda-graph", default=None,
              help="Replay each denoising step from a CUDA graph (default: on for CUDA devices).")
def run(text, mask, conds, out, checkpoint, backend, engine_dir, seed, batch, guidance, grid_path, save_influence,
        influence_steps, save_intermediates, freeu, device, dtype, cuda_graph, **settings):
    """Generate faces that follow a caption and a mask."""
    from ..api import Pipeline, config_of
    from ..render import item_paths
    from ..sampling.request import make_request
    from ..validate import check_int

    guidance = parse_guidance(guidance)
    conditions = parse_conds(conds)
    if text is None and mask is None and not conditions:
        from ..errors import InputError

        raise InputError("give a condition: --text CAPTION, --mask LABELMAP.png or both (--cond NAME=FILE for "
                         "another modality of the model)")
    check_int(influence_steps, "--influence-steps", 1, 1000)
    check_int(batch, "--batch", 1, 1 << 20)
    paths = item_paths(out, batch)
    outputs = {("--out" if len(paths) == 1 else f"--out (item {i})"): p for i, p in enumerate(paths)}
    for what, p in (("--grid", grid_path), ("--save-influence", save_influence),
                    ("--save-intermediates", save_intermediates)):
        if p is not None:
            outputs[what] = p
    for what, p in outputs.items():
        check_output_path(p, what.split()[0])
    inputs = {"--mask": mask, **{f"--cond {k}": v for k, v in conditions.items()}, "--checkpoint": checkpoint,
              "--engine-dir": engine_dir}
    check_distinct(outputs, inputs)
    # the request is checked, and its files decoded, before any model is loaded
    cfg = config_of(checkpoint, engine_dir)
    req = make_request(cfg, text=text, mask=mask, conditions=conditions, seed=seed,
                       batch=batch, sampling=sampling_from(settings, cfg), return_influence=save_influence is not None,
                       return_intermediates=save_intermediates is not None, cuda_graph=cuda_graph)
    pipe = Pipeline.load(checkpoint, backend, device, dtype, engine_dir, guidance or None, freeu=freeu,
                         progress=lambda msg: click.echo(msg, err=True))
    click.echo(pipe.description, err=True)
    result = _generate(pipe, req)
    _write(result, paths, grid_path, save_influence, influence_steps, save_intermediates)


def _generate(pipe, req):
    from .progress import Progress

    with Progress("denoising") as bar:  # a bar on a terminal, else one line
        return pipe.generate(req, callback=lambda i, total: bar.update(1, total=total))


def _write(result, paths, grid_path, save_influence, influence_steps, save_intermediates) -> None:
    from ..render import influence_grid, intermediates_grid

    images = list(zip(paths, result.arrays))  # the batch and its grids: one set, all or nothing
    if grid_path is not None:
        images.append((grid_path, grid(result.arrays)))
    if save_influence is not None:
        images.append((save_influence, influence_grid(result.influence, result.modalities, result.timesteps,
                                                      columns=influence_steps)))
    if save_intermediates is not None:
        images.append((save_intermediates, intermediates_grid(result.intermediates, result.timesteps, rows=10)))
    save_images(images)
    t = result.timings
    shown = f"{paths[0]}" if len(paths) == 1 else f"{paths[0]} .. {paths[-1]}"
    click.echo(f"wrote {shown} ({', '.join(result.modalities)}; seeds {result.seeds[0]}"
               f"{'..' + str(result.seeds[-1]) if len(paths) > 1 else ''}, {len(result.timesteps)} steps)")
    click.echo(f"latency: encode {t['encode_ms']:.0f} ms, denoise {t['loop_ms']:.0f} ms, "
               f"decode {t['decode_ms']:.0f} ms",
               err=True)
    if grid_path is not None:
        click.echo(f"wrote {grid_path} (the batch side by side)")
    if save_influence is not None:
        click.echo(f"wrote {save_influence} (rows: {', '.join(result.modalities)}; columns: t from "
                   f"{result.timesteps[0]} to {result.timesteps[-1]}; white = weight 1)")
    if save_intermediates is not None:
        click.echo(f"wrote {save_intermediates} (predicted x0; rows: t, columns: items)")


command = run
