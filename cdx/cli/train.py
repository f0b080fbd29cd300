"""`cdx train`: train a Collaborative Diffusion model, or parts of one, on synthetic faces or your own data.

Stages, each writing one file under --work: `vae` (vae.safetensors), `collaborator --modality M`
(collab_M.safetensors), `diffusers` (diffusers.safetensors), `assemble` (the bundle); `all` runs them
in order within one wall-clock budget. Every stage runs data-parallel under `torchrun` (docs/training.md).
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import click

from .options import check_distinct, guidance_option, parse_guidance

# Per stage: defaults for --steps/--batch/--lr/warm-up, and the share of `train all --max-minutes`.
STAGES = {
    "vae": {"steps": 4000, "batch": 8, "lr": 6e-4, "warmup": 100, "share": 1.0},
    "collaborator": {"steps": 20000, "batch": 32, "lr": 5e-4, "warmup": 100, "share": 3.0},
    "diffusers": {"steps": 5000, "batch": 32, "lr": 3e-4, "warmup": 50, "share": 1.5},
}
MAX_LR = 1.0  # learning rates are in (0, MAX_LR]
MAX_SEED = 2**63


def common_options(f):
    opts = [
        click.option("--work", type=click.Path(path_type=Path), default=Path("train_work"), show_default=True,
                     help="Folder for the stage outputs and checkpoints (new, empty, or made by cdx train)."),
        click.option("--preset", default=None, help="Model architecture preset (default: small, or the "
                     "--init-from bundle's architecture)."),
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help="Train on this folder (images/, masks/, captions.json, or the official layout) "
                          "instead of synthetic faces."),
        click.option("--skip-bad", is_flag=True, help="Train without the --data samples that cannot be read "
                     "(each is named); without it any bad sample stops training."),
        click.option("--steps", type=int, default=None, help="Total optimizer steps (default: per stage)."),
        click.option("--batch", type=int, default=None, help="Global batch size, over all processes and "
                     "accumulation steps (default: per stage)."),
        click.option("--accum", type=int, default=1, show_default=True,
                     help="Gradient accumulation: micro-batches per optimizer step in each process."),
        click.option("--lr", type=float, default=None, help=f"AdamW learning rate in (0, {MAX_LR:g}] "
                     "(default: per stage)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial weights, the "
                     "noise and the order of the samples."),
        click.option("--resume", is_flag=True, help="Continue from the stage's checkpoint when there is one "
                     "(with any number of processes)."),
        click.option("--max-minutes", type=float, default=None, help="Wall-clock budget besides --steps (> 0)."),
        click.option("--device", default=None, help="cpu or cuda (default: cuda when available)."),
        click.option("--amp", type=click.Choice(["auto", "none", "bf16"]), default="auto", show_default=True,
                     help="bf16 autocast: auto = on CUDA GPUs with bf16, off on CPUs (bf16 is emulated, several "
                          "times slower, on CPUs without AMX or AVX512-BF16)."),
        click.option("--grad-checkpoint", is_flag=True,
                     help="Recompute the UNets' activations in the backward pass (less memory, more time)."),
        click.option("--threads", type=int, default=None, help="torch CPU threads."),
        click.option("--warmup", type=int, default=None,
                     help="Linear learning-rate warm-up steps (default: per stage)."),
        click.option("--ema-decay", type=float, default=0.999, show_default=True,
                     help="EMA of the weights (the saved weights); lower for short runs."),
        click.option("--data-size", type=int, default=30000, show_default=True, help="Synthetic faces to train on."),
        click.option("--data-seed", type=int, default=1234, show_default=True,
                     help="Seed of the synthetic faces (without --data)."),
        click.option("--data-cache", type=click.Path(path_type=Path), default=None,
                     help="Folder of the prepared data sets (default: WORK/data)."),
        click.option("--init-from", type=click.Path(path_type=Path), default=None,
                     help="Start from this bundle's trained weights of the stage (fine-tuning); "
                          "with it --steps may be 0 (the vae stage then only re-encodes the latents)."),
        click.option("--data-workers", type=int, default=None,
                     help="Processes preparing the data set (default: the CPU count, at most 8; "
                          "the data does not depend on it)."),
        click.option("--loader-workers", type=int, default=None,
                     help="DataLoader worker processes (default: 0 on CPUs, 4 on GPUs)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.group()
def train():
    """Train a model on synthetic faces or your own data (stages: vae, collaborator, diffusers, assemble)."""


def _check(o: dict) -> None:
    """Every option in its range, before any work (no silent or unbounded value)."""
    from ..errors import InputError

    for key in ("steps", "batch", "data_size", "threads", "data_workers", "accum"):
        if key == "steps" and o["init_from"] is not None and o[key] == 0:
            continue
        if o[key] is not None and o[key] < 1:
            raise InputError(f"--{key.replace('_', '-')} must be >= 1, got {o[key]}")
    for key in ("warmup", "loader_workers"):
        if o[key] is not None and o[key] < 0:
            raise InputError(f"--{key.replace('_', '-')} must be >= 0, got {o[key]}")
    for key in ("seed", "data_seed"):
        if not 0 <= o[key] < MAX_SEED:
            raise InputError(f"--{key.replace('_', '-')} must be in [0, 2**63), got {o[key]}")
    if o["lr"] is not None and not (math.isfinite(o["lr"]) and 0 < o["lr"] <= MAX_LR):
        raise InputError(f"--lr must be in (0, {MAX_LR:g}], got {o['lr']}")
    if not (math.isfinite(o["ema_decay"]) and 0.0 <= o["ema_decay"] < 1.0):
        raise InputError(f"--ema-decay must be in [0, 1), got {o['ema_decay']}")
    if o["max_minutes"] is not None and not (math.isfinite(o["max_minutes"]) and o["max_minutes"] > 0):
        raise InputError(f"--max-minutes must be > 0, got {o['max_minutes']} (without it only --steps limits a run)")
    check_distinct({"--work": o["work"], "--data-cache": o["data_cache"]},
                   {"--data": o["data"], "--init-from": o["init_from"]}, into=("--work", "--data-cache"))


def in_range(name: str, value: float, lo: float, hi: float, lo_open: bool = False) -> None:
    from ..errors import InputError

    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if not ok:
        raise InputError(f"--{name} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {value}")


def _setup(o: dict, stage: str, cfg=None):
    """(model config, prepared data, TrainConfig) from the shared options; the data prepared once, on rank 0."""
    import torch

    from ..train import dist
    from ..train.data import trainable
    from ..train.prepare import prepare
    from ..train.sources import open_source, synthetic
    from ..train.work import open_folder, open_work

    _check(o)
    dist.init("cuda" if (o["device"] or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
              else "cpu")
    cfg = cfg or _config(o)
    if o["threads"]:
        torch.set_num_threads(o["threads"])
    work = open_work(o["work"], cfg)
    size = cfg.image_size[0]
    if o["data"] is None:
        source = synthetic(o["data_size"], o["data_seed"], size)
    else:
        source = open_source(o["data"], size)
    if o["data_cache"] is None:
        cache = work / "data"
    else:
        cache = open_folder(o["data_cache"], "cdx-train-data-cache", "--data-cache")
    workers = o["data_workers"] or min(8, os.cpu_count() or 1)
    data = prepare(source, trainable(cfg, source), size, cache, o["skip_bad"], workers)
    return cfg, data, _train_config(o, stage, o["max_minutes"])


def _config(o: dict):
    """--preset, or the architecture of the --init-from bundle, or small."""
    if o["preset"] is not None or o["init_from"] is None:
        return preset_config(o["preset"] or "small")
    from ..models.bundle import read_manifest
    from ..models.config import ModelConfig

    cfg = ModelConfig.from_dict(read_manifest(o["init_from"])["config"])
    return cfg.with_guidance({m.name: 1.0 for m in cfg.modalities})  # sampling settings are assemble's to set


def _train_config(o: dict, stage: str, max_minutes):
    import torch

    from ..train.loop import TrainConfig

    d = STAGES[stage]
    steps = d["steps"] if o["steps"] is None else o["steps"]
    cuda = (o["device"] or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return TrainConfig(steps=steps, batch=o["batch"] or d["batch"], lr=o["lr"] or d["lr"],
                       warmup=d["warmup"] if o["warmup"] is None else o["warmup"], seed=o["seed"],
                       ema_decay=o["ema_decay"], device=o["device"], amp=o["amp"], max_minutes=max_minutes,
                       log_every=max(1, min(100, steps // 10)), accum=o["accum"],
                       loader_workers=(4 if cuda else 0) if o["loader_workers"] is None else o["loader_workers"],
                       grad_checkpoint=o["grad_checkpoint"],
                       init_from=None if o.get("init_from") is None else str(o["init_from"]))


@train.command("vae")
@common_options
@click.option("--kl-weight", type=float, default=1e-6, show_default=True, help="In [0, 1].")
@click.option("--edge-weight", type=float, default=0.5, show_default=True, help="In [0, 100].")
@click.option("--crop", type=int, default=32, show_default=True,
              help="Train on random crops of this size, 4x cheaper at 64px (0: whole images).")
def vae_cmd(kl_weight, edge_weight, crop, **o):
    """Stage 1: the KL autoencoder and its latent scale factor."""
    from ..train.autoencoder import VaeConfig, train_vae

    in_range("kl-weight", kl_weight, 0, 1)
    in_range("edge-weight", edge_weight, 0, 100)
    in_range("crop", crop, 0, 1 << 16)
    cfg, data, tc = _setup(o, "vae")
    train_vae(cfg, data, tc, VaeConfig(kl_weight, edge_weight, crop), o["work"], o["resume"])


@train.command("collaborator")
@common_options
@click.option("--modality", required=True, help="Which collaborator: text or mask (a modality of the preset).")
@click.option("--cond-drop", type=float, default=0.0, show_default=True,
              help="Condition dropout for classifier-free guidance, in [0, 1).")
@click.option("--snr-weight-power", type=float, default=0.0, show_default=True,
              help="Weight the loss by max(1, 1/SNR)^p, p in [0, 4] (0: the paper's Eq. 3; 1: truncated SNR).")
def collaborator_cmd(modality, cond_drop, snr_weight_power, **o):
    """Stage 2: one collaborator UNet with its condition encoder (Eq. 3); with --init-from, fine-tuned."""
    from ..errors import InputError
    from ..train.collaborator import CollabConfig, train_collaborator

    _check(o)
    _check_modality(_config(o), modality)
    if not (math.isfinite(cond_drop) and 0.0 <= cond_drop < 1.0):
        raise InputError(f"--cond-drop must be in [0, 1), got {cond_drop}")
    if not (math.isfinite(snr_weight_power) and 0 <= snr_weight_power <= 4):
        raise InputError(f"--snr-weight-power must be >= 0 and <= 4, got {snr_weight_power}")
    cfg, data, tc = _setup(o, "collaborator")
    train_collaborator(cfg, modality, data, tc, CollabConfig(cond_drop, snr_weight_power), o["work"], o["resume"])


@train.command("diffusers")
@common_options
@click.option("--snr-weight-power", type=float, default=0.0, show_default=True,
              help="Weight the loss by max(1, 1/SNR)^p, p in [0, 4] (0: Algorithm 1's plain eps error; 1: the x0 "
                   "error where SNR < 1).")
@click.option("--fresh-diffusers", is_flag=True,
              help="With --init-from: new (zero-initialised) diffusers over the bundle's collaborators.")
def diffusers_cmd(snr_weight_power, fresh_diffusers, **o):
    """Stage 3: the dynamic diffusers of all modalities, collaborators frozen (Algorithm 1); with --init-from
    BUNDLE, over the bundle's collaborators where --work has none."""
    from ..errors import InputError
    from ..train.diffusers import train_diffusers

    if not (math.isfinite(snr_weight_power) and 0 <= snr_weight_power <= 4):
        raise InputError(f"--snr-weight-power must be >= 0 and <= 4, got {snr_weight_power}")
    if fresh_diffusers and o["init_from"] is None:
        raise InputError("--fresh-diffusers needs --init-from (without it the diffusers are new anyway)")
    cfg, data, tc = _setup(o, "diffusers")
    train_diffusers(cfg, data, tc, o["work"], o["resume"], snr_weight_power, init_diffusers=not fresh_diffusers)


@train.command("assemble")
@click.option("--work", type=click.Path(path_type=Path), default=Path("train_work"), show_default=True,
              help="The work folder the stages wrote.")
@click.option("--preset", default=None, help="Default: the configuration --work was trained with.")
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
def assemble_cmd(work, preset, out, eta, shaping, shaping_scale, shaping_decay, from_bundle, guidance):
    """Stage 4: the trained parts -> one fp16 checkpoint bundle."""
    from ..models.schedule import check_eta
    from ..errors import InputError

    check_eta(eta)
    if from_bundle is None:
        check_distinct({"--out": out}, {"--work": work}, folders=("--out",))
    elif Path(from_bundle).resolve() != Path(out).resolve():  # --out may be the bundle itself: resampled in place
        check_distinct({"--out": out}, {"--from-bundle": from_bundle}, folders=("--out",))
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
def all_cmd(out, **o):
    """Every stage in order (the collaborators of the modalities the data has); --max-minutes is the total,
    shared by the stages in proportion 1:3:3:1.5."""
    from ..train import dist
    from ..train.autoencoder import VaeConfig, train_vae
    from ..train.collaborator import CollabConfig, train_collaborator
    from ..train.diffusers import train_diffusers

    t0 = time.monotonic()
    _check(o)
    check_distinct({"--out": out}, {"--work": o["work"], "--data": o["data"], "--init-from": o["init_from"],
                                    "--data-cache": o["data_cache"]}, folders=("--out",))
    cfg, data, _ = _setup(o, "vae")
    trained = [m for m in cfg.modalities if m.name in data.manifest["modalities"]]
    if len(trained) < len(cfg.modalities):
        dist.log(f"the data has no files for {', '.join(m.name for m in cfg.modalities if m not in trained)}: "
                 "training a model of the others")
        cfg = dataclasses.replace(cfg, modalities=tuple(trained))
        if not trained:
            from ..errors import InputError

            raise InputError(f"--data {o['data']}: no files of any modality of the preset")
    plan = [("vae", None)] + [("collaborator", m.name) for m in cfg.modalities] + [("diffusers", None)]
    for i, (stage, name) in enumerate(plan):
        minutes = None
        if o["max_minutes"] is not None:  # what is left, split over the stages still to run
            left = o["max_minutes"] - (time.monotonic() - t0) / 60.0
            minutes = max(0.1, left * STAGES[stage]["share"] / sum(STAGES[s]["share"] for s, _ in plan[i:]))
        tc = _train_config(o, stage, minutes)
        dist.log(f"== {stage}{':' + name if name else ''} ({tc.steps} steps max, "
                 f"{'no time limit' if minutes is None else f'{minutes:.1f} min'})")
        if stage == "vae":
            train_vae(cfg, data, tc, VaeConfig(), o["work"], o["resume"])
        elif stage == "collaborator":
            train_collaborator(cfg, name, data, tc, CollabConfig(), o["work"], o["resume"])
        else:
            train_diffusers(cfg, data, tc, o["work"], o["resume"])
    if dist.is_main():
        h = _assemble(o["work"], None, out, cfg=cfg)
        click.echo(f"wrote {out} (bundle {h[:12]}) after {(time.monotonic() - t0) / 60:.1f} min")
    dist.barrier()


def _check_modality(cfg, name):
    from ..errors import InputError

    names = [m.name for m in cfg.modalities]
    if name not in names:
        raise InputError(f"--modality {name!r}: this preset has {', '.join(names)}")


def preset_config(name: str):
    from ..errors import InputError
    from ..models.config import preset

    try:
        return preset(name)
    except KeyError as e:
        raise InputError(str(e.args[0])) from None


def _assemble(work, preset_name, out, eta: float = 0.0, shaping: bool = False, guidance=None,
              shaping_scale=None, shaping_decay: str = "cosine", cfg=None) -> str:
    from ..train.assemble import assemble
    from ..train.work import work_config

    if cfg is None:
        cfg = preset_config(preset_name) if preset_name else (work_config(work) or preset_config("small"))
    return assemble(cfg, work, out, eta=eta, shaping=shaping, guidance=guidance,
                    shaping_scale=shaping_scale, shaping_decay=shaping_decay)


command = train
