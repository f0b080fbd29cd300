"""`cdx run`: generate faces from a caption and/or a mask (the paper's Algorithm 2)."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from ..cli import friendly, main
from .common import check_output_path, checkpoint_option, grid, guidance_option, parse_guidance, save_image

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@main.command()
@click.option("--text", default=None, help="Caption, e.g. 'This man has beard of medium length.'")
@click.option("--mask", type=click.Path(path_type=Path), default=None, help="Label-map PNG (19 CelebAMask-HQ ids).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out.png"), show_default=True)
@checkpoint_option
@click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime", "tensorrt"]), default="auto",
              show_default=True)
@click.option("--engine-dir", type=click.Path(path_type=Path), default=None, help="Run a given export/engine folder.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=int, default=50, show_default=True)
@click.option("--eta", type=float, default=None,
              help="DDIM eta in [0, 1], 0 = deterministic (default: the model's; 0 for the official models).")
@click.option("--sampler", type=click.Choice(["ddim", "ddpm"]), default="ddim", show_default=True)
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--shaping/--no-shaping", default=None, help="Official influence shaping (default: the model's).")
@guidance_option
@click.option("--save-influence", type=click.Path(path_type=Path), default=None,
              help="PNG grid of the influence maps per modality over the steps.")
@click.option("--device", default=None, help="cpu or cuda (torch backend).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
              help="Network precision (default: fp16 on CUDA, fp32 on the CPU).")
@click.option("--cuda-graph/--no-cuda-graph", default=None,
              help="Replay each denoising step from a CUDA graph (default: on for CUDA devices).")
@friendly
def run(text, mask, out, checkpoint, backend, engine_dir, seed, steps, eta, sampler, batch, shaping, guidance,
        save_influence, device, dtype, cuda_graph):
    """Generate faces that follow a caption and a mask."""
    from ..defaults import default_checkpoint
    from ..engine.backends import make_runner
    from ..engine.pipeline import Request, generate, influence_grid
    from ..engine.schedule import check_eta
    from ..errors import InputError
    from ..models.masks import load_label_map
    from tqdm import tqdm

    req = Request(text=text, mask=str(mask) if mask else None, seed=seed, steps=steps, eta=eta, batch=batch,
                  sampler=sampler, shaping=shaping, save_influence=save_influence is not None, cuda_graph=cuda_graph)
    for flag, value, ok in (("--steps", steps, steps >= 1), ("--batch", batch, batch >= 1)):
        if not ok:
            raise InputError(f"{flag} {value}: out of range (steps and batch >= 1)")
    check_eta(eta)
    guidance = parse_guidance(guidance)
    if mask is not None:
        load_label_map(mask)  # refuse a bad mask before any model is loaded
    check_output_path(out)
    if save_influence is not None:
        check_output_path(save_influence, "--save-influence")
    ckpt = checkpoint if checkpoint is not None or engine_dir is not None else default_checkpoint()
    on_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    dt = DTYPES[dtype or ("fp16" if on_cuda else "fp32")]
    runner, desc = make_runner(backend, ckpt, engine_dir, device, dt, guidance=guidance,
                               progress=lambda n: click.echo(f"exporting {n} to ONNX (first use)", err=True))
    click.echo(desc, err=True)
    req.validate(runner.cfg)
    with tqdm(total=len(_steps(runner.cfg, req)), desc="denoising", unit="step", leave=False) as bar:
        result = generate(runner, runner.cfg, req, callback=lambda i: bar.update(1))
    save_image(out, grid(result.images))
    click.echo(f"wrote {out} ({', '.join(result.modalities)}; seed {seed}, {len(result.timesteps)} steps)")
    if save_influence is not None:
        save_image(save_influence, influence_grid(result.loop.influence, result.modalities, result.timesteps))
        click.echo(f"wrote {save_influence} (rows: {', '.join(result.modalities)}; columns: t from "
                   f"{result.timesteps[0]} to {result.timesteps[-1]})")


def _steps(cfg, req):
    from ..engine.schedule import ddim_timesteps

    return ddim_timesteps(req.steps, cfg.timesteps)
