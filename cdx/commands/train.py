"""`cdx train`: train a small Collaborative Diffusion model from scratch on synthetic faces.

Stages, each writing one file under --work: `vae` (vae.safetensors), `collaborator --modality M`
(collab_M.safetensors), `diffusers` (diffusers.safetensors), `assemble` (the bundle); `all` runs them
in order within one wall-clock budget.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import click

from ..cli import friendly, main
from .common import guidance_option, parse_guidance

# Per stage: defaults for --steps/--batch/--lr/warm-up, and the share of `train all --max-minutes`.
STAGES = {
    "vae": {"steps": 4000, "batch": 8, "lr": 6e-4, "warmup": 100, "share": 1.0},
    "collaborator": {"steps": 20000, "batch": 32, "lr": 5e-4, "warmup": 100, "share": 3.0},
    "diffusers": {"steps": 5000, "batch": 32, "lr": 3e-4, "warmup": 50, "share": 1.5},
}


def common_options(f):
    opts = [
        click.option("--work", type=click.Path(path_type=Path), default=Path("train_work"), show_default=True,
                     help="Folder for the stage outputs and checkpoints."),
        click.option("--preset", default="small", show_default=True, help="Model architecture preset."),
        click.option("--steps", type=int, default=None, help="Total optimizer steps (default: per stage)."),
        click.option("--batch", type=int, default=None, help="Batch size (default: per stage)."),
        click.option("--lr", type=float, default=None, help="AdamW learning rate (default: per stage)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--resume", is_flag=True, help="Continue from the stage's checkpoint when there is one."),
        click.option("--max-minutes", type=float, default=None, help="Wall-clock budget besides --steps."),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when available)."),
        click.option("--amp", type=click.Choice(["none", "bf16"]), default="none", show_default=True,
                     help="bf16 autocast (fast on CPUs with AMX and on recent GPUs; emulated, several times "
                          "slower, on other CPUs)."),
        click.option("--threads", type=int, default=None, help="torch CPU threads."),
        click.option("--warmup", type=int, default=None,
                     help="Linear learning-rate warm-up steps (default: per stage)."),
        click.option("--ema-decay", type=float, default=0.999, show_default=True,
                     help="EMA of the weights (the saved weights); lower for short runs."),
        click.option("--data-size", type=int, default=30000, show_default=True, help="Synthetic faces to train on."),
        click.option("--data-seed", type=int, default=1234, show_default=True),
        click.option("--data-cache", type=click.Path(path_type=Path), default=None,
                     help="Folder of the .npz data cache (default: WORK/data)."),
        click.option("--init-from", type=click.Path(path_type=Path), default=None,
                     help="Start from this bundle's trained weights of the stage (fine-tuning); "
                          "with it --steps may be 0 (the vae stage then only re-encodes the latents)."),
        click.option("--data-workers", type=int, default=None,
                     help="Processes generating the data set (default: the CPU count, at most 8; "
                          "the data does not depend on it)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@main.group()
def train():
    """Train a small model from scratch on synthetic faces (stages: vae, collaborator, diffusers, assemble)."""


def _setup(o: dict, stage: str):
    """(model config, data set, TrainConfig) from the shared options."""
    import torch

    from ..errors import InputError
    from ..train.data import DataConfig, load_faces

    cfg = _preset(o["preset"])
    for key in ("steps", "batch", "data_size", "threads", "data_workers"):
        if key == "steps" and o["init_from"] is not None and o[key] == 0:
            continue
        if o[key] is not None and o[key] < 1:
            raise InputError(f"--{key.replace('_', '-')} must be >= 1, got {o[key]}")
    if o["lr"] is not None and not o["lr"] > 0:
        raise InputError(f"--lr must be > 0, got {o['lr']}")
    if not 0.0 <= o["ema_decay"] < 1.0:
        raise InputError(f"--ema-decay must be in [0, 1), got {o['ema_decay']}")
    if o["threads"]:
        torch.set_num_threads(o["threads"])
    cache = o["data_cache"] or o["work"] / "data"
    workers = o["data_workers"] or min(8, os.cpu_count() or 1)
    data = load_faces(DataConfig(size=o["data_size"], seed=o["data_seed"], image_size=cfg.image_size[0],
                                 cache=str(cache), workers=workers))
    return cfg, data, _train_config(o, stage, o["max_minutes"])


def _train_config(o: dict, stage: str, max_minutes):
    from ..train.loop import TrainConfig

    d = STAGES[stage]
    steps = d["steps"] if o["steps"] is None else o["steps"]
    return TrainConfig(steps=steps, batch=o["batch"] or d["batch"], lr=o["lr"] or d["lr"],
                       warmup=d["warmup"] if o["warmup"] is None else o["warmup"], seed=o["seed"],
                       ema_decay=o["ema_decay"], device=o["device"], amp=o["amp"], max_minutes=max_minutes,
                       log_every=max(1, min(100, steps // 10)),
                       init_from=None if o.get("init_from") is None else str(o["init_from"]))


@train.command("vae")
@common_options
@click.option("--kl-weight", type=float, default=1e-6, show_default=True)
@click.option("--edge-weight", type=float, default=0.5, show_default=True)
@click.option("--crop", type=int, default=32, show_default=True,
              help="Train on random crops of this size, 4x cheaper at 64px (0: whole images).")
@friendly
def vae_cmd(kl_weight, edge_weight, crop, **o):
    """Stage 1: the KL autoencoder and its latent scale factor."""
    from ..train.autoencoder import VaeConfig, train_vae

    cfg, data, tc = _setup(o, "vae")
    train_vae(cfg, data, tc, VaeConfig(kl_weight, edge_weight, crop), o["work"], o["resume"])


@train.command("collaborator")
@common_options
@click.option("--modality", required=True, help="Which collaborator: text or mask (a modality of the preset).")
@click.option("--cond-drop", type=float, default=0.0, show_default=True,
              help="Condition dropout for classifier-free guidance.")
@click.option("--snr-weight-power", type=float, default=0.0, show_default=True,
              help="Weight the loss by max(1, 1/SNR)^p (0: the paper's Eq. 3; 1: truncated SNR).")
@friendly
def collaborator_cmd(modality, cond_drop, snr_weight_power, **o):
    """Stage 2: one collaborator UNet with its condition encoder (Eq. 3)."""
    from ..errors import InputError
    from ..train.collaborator import CollabConfig, train_collaborator

    _check_modality(_preset(o["preset"]), modality)
    if not 0.0 <= cond_drop < 1.0:
        raise InputError(f"--cond-drop must be in [0, 1), got {cond_drop}")
    if snr_weight_power < 0:
        raise InputError(f"--snr-weight-power must be >= 0, got {snr_weight_power}")
    cfg, data, tc = _setup(o, "collaborator")
    train_collaborator(cfg, modality, data, tc, CollabConfig(cond_drop, snr_weight_power), o["work"], o["resume"])


@train.command("diffusers")
@common_options
@click.option("--snr-weight-power", type=float, default=0.0, show_default=True,
              help="Weight the loss by max(1, 1/SNR)^p (0: Algorithm 1's plain eps error; 1: the x0 error "
                   "where SNR < 1).")
@friendly
def diffusers_cmd(snr_weight_power, **o):
    """Stage 3: the dynamic diffusers of all modalities, collaborators frozen (Algorithm 1)."""
    from ..errors import InputError
    from ..train.diffusers import train_diffusers

    if snr_weight_power < 0:
        raise InputError(f"--snr-weight-power must be >= 0, got {snr_weight_power}")
    cfg, data, tc = _setup(o, "diffusers")
    train_diffusers(cfg, data, tc, o["work"], o["resume"], snr_weight_power)


@train.command("assemble")
@click.option("--work", type=click.Path(path_type=Path), default=Path("train_work"), show_default=True)
@click.option("--preset", default="small", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
@click.option("--eta", type=float, default=0.0, show_default=True,
              help="The DDIM eta the bundle asks `cdx run`/`eval`/`edit` to sample with by default.")
@click.option("--shaping/--no-shaping", default=False, show_default=True,
              help="Sample with the official influence shaping by default (mask weight decayed by cos(t), scaled 2).")
@click.option("--shaping-scale", type=float, default=None,
              help="With --shaping: the mask's boost factor (the official seg_mask_scale_factor, 2 by default).")
@click.option("--shaping-decay", type=click.Choice(["cosine", "none"]), default="cosine", show_default=True,
              help="With --shaping: cosine = the official decay of the mask's influence over t; none = no decay, "
                   "the mask's influence only multiplied by --shaping-scale at every step.")
@click.option("--from-bundle", type=click.Path(path_type=Path), default=None,
              help="Take the networks of this trained bundle instead of --work's stage outputs (only the "
                   "sampling defaults change; --work and --preset are not used).")
@guidance_option
@friendly
def assemble_cmd(work, preset, out, eta, shaping, shaping_scale, shaping_decay, from_bundle, guidance):
    """Stage 4: the trained parts -> one fp16 checkpoint bundle."""
    from ..engine.schedule import check_eta
    from ..errors import InputError

    check_eta(eta)
    if shaping_scale is not None and not (shaping and 0 < shaping_scale < float("inf")):
        raise InputError(f"--shaping-scale needs --shaping and a value > 0, got {shaping_scale}")
    if shaping_decay != "cosine" and not (shaping and shaping_scale is not None):
        raise InputError("--shaping-decay none needs --shaping and --shaping-scale (without them it changes nothing)")
    if from_bundle is not None:
        from ..train.assemble import resample

        h = resample(from_bundle, out, eta, shaping, parse_guidance(guidance), shaping_scale, shaping_decay)
    else:
        h = _assemble(work, preset, out, eta, shaping, parse_guidance(guidance), shaping_scale, shaping_decay)
    click.echo(f"wrote {out} (bundle {h[:12]})")


@train.command("all")
@common_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")
@friendly
def all_cmd(out, **o):
    """Every stage in order; --max-minutes is the total, shared by the stages in proportion 1:3:3:1.5."""
    from ..train.autoencoder import VaeConfig, train_vae
    from ..train.collaborator import CollabConfig, train_collaborator
    from ..train.diffusers import train_diffusers

    t0 = time.monotonic()
    cfg, data, _ = _setup(o, "vae")
    plan = [("vae", None)] + [("collaborator", m.name) for m in cfg.modalities] + [("diffusers", None)]
    for i, (stage, name) in enumerate(plan):
        minutes = None
        if o["max_minutes"] is not None:  # what is left, split over the stages still to run
            left = o["max_minutes"] - (time.monotonic() - t0) / 60.0
            minutes = max(0.1, left * STAGES[stage]["share"] / sum(STAGES[s]["share"] for s, _ in plan[i:]))
        tc = _train_config(o, stage, minutes)
        click.echo(f"== {stage}{':' + name if name else ''} ({tc.steps} steps max, "
                   f"{'no time limit' if minutes is None else f'{minutes:.1f} min'})")
        if stage == "vae":
            train_vae(cfg, data, tc, VaeConfig(), o["work"], o["resume"])
        elif stage == "collaborator":
            train_collaborator(cfg, name, data, tc, CollabConfig(), o["work"], o["resume"])
        else:
            train_diffusers(cfg, data, tc, o["work"], o["resume"])
    h = _assemble(o["work"], o["preset"], out)
    click.echo(f"wrote {out} (bundle {h[:12]}) after {(time.monotonic() - t0) / 60:.1f} min")


def _check_modality(cfg, name):
    from ..errors import InputError

    names = [m.name for m in cfg.modalities]
    if name not in names:
        raise InputError(f"--modality {name!r}: this preset has {', '.join(names)}")


def _preset(name: str):
    from ..errors import InputError
    from ..models.config import preset

    try:
        return preset(name)
    except KeyError as e:
        raise InputError(str(e.args[0])) from None


def _assemble(work, preset_name, out, eta: float = 0.0, shaping: bool = False, guidance=None,
              shaping_scale=None, shaping_decay: str = "cosine") -> str:
    from ..train.assemble import assemble

    return assemble(_preset(preset_name), work, out, eta=eta, shaping=shaping, guidance=guidance,
                    shaping_scale=shaping_scale, shaping_decay=shaping_decay)
