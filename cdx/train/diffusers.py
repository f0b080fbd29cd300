"""Stage 3: the dynamic diffusers (the paper's Algorithm 1), trained jointly for all modalities with
the collaborators and their encoders frozen:

    z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps,  t ~ U{0..T-1}
    I_m = D_m(z_t, t, c_m)                    influence logits, (M, B, 1, h, w)
    w_m = softmax_m(I_m)                      per pixel
    eps_hat = sum_m w_m * eps_theta_m(z_t, t, c_m)
    L = || eps - eps_hat ||^2              (optionally weighted by max(1, 1/SNR_t)^p, as the collaborators)
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import dataclasses

import torch
from torch import nn

from ..errors import InputError
from ..kernels import combine_weights
from ..models.bundle import file_sha256
from ..models.config import ModelConfig
from ..models.modalities import kind_of
from ..models.unet import UNet
from . import dist
from .autoencoder import jsonable, load_latents, vae_from_bundle
from .collaborator import (CollabConfig, checkpoint_blocks, draw_t_noise, load_collaborator, q_sample, schedule,
                           snr_weighted_mse, train_collaborator, zero_init)
from .data import ShardSet
from .init import init_from_bundle
from .checkpoint import check_same, load_stage, save_stage
from .loop import TrainConfig, pick_device, seed_everything, train

REBUILD = "cdx train diffusers"


def collaborative_eps(collabs: Sequence[nn.Module], diffusers: Sequence[nn.Module], z_t: torch.Tensor,
                      t: torch.Tensor, conds: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """eps_hat (B, C, h, w) and weights (M, B, 1, h, w); gradients reach the diffusers only."""
    with torch.no_grad():
        contexts = [c["encoder"](x) for c, x in zip(collabs, conds)]
        eps = torch.stack([c["unet"](z_t, t, ctx).float() for c, ctx in zip(collabs, contexts)])  # (M, B, C, h, w)
    logits = torch.stack([d(z_t, t, ctx) for d, ctx in zip(diffusers, contexts)])  # (M, B, 1, h, w)
    w = combine_weights(logits)  # softmax over m, fp32
    return (w * eps).sum(dim=0), w


def diffusers_loss(collabs, diffusers, z0, conds, t, noise, acp, snr_weight_power: float = 0.0) -> torch.Tensor:
    """Algorithm 1's loss on one batch: mean over elements of (eps - eps_hat)^2; with `snr_weight_power` p
    each item is weighted by max(1, 1 / SNR_t) ** p (p = 1: the error of the x0 the mix implies where
    SNR < 1, so the high-noise steps, where the layout is decided, count as much as the rest)."""
    eps_hat, _ = collaborative_eps(collabs, diffusers, q_sample(z0, t, noise, acp), t, conds)
    return snr_weighted_mse(eps_hat, noise, t, acp, snr_weight_power)


def train_diffusers(cfg: ModelConfig, data: ShardSet, tc: TrainConfig, work: str | os.PathLike,
                    resume: bool = False, snr_weight_power: float = 0.0, init_diffusers: bool = True) -> dict:
    """Train every modality's dynamic diffuser; write `work/diffusers.safetensors` (keys `<name>.*`).

    With `tc.init_from` (a bundle) the autoencoder and the collaborators that `work` does not hold yet are the
    bundle's, frozen (written to `work` as zero-step stages, so `assemble` finds them); the diffusers start from
    the bundle's unless `init_diffusers` is False (new diffusers over existing collaborators)."""
    work = Path(work)
    missing = [m.name for m in cfg.modalities if m.name not in data.manifest["modalities"]]
    if missing:
        raise InputError(f"the data has no {', '.join(kind_of(cfg.modality(n).kind).training_field for n in missing)}"
                         f" files: the diffusers mix every modality ({', '.join(m.name for m in cfg.modalities)})")
    device = pick_device(tc.device)
    vae_from_bundle(cfg, data, tc, work)
    for m in cfg.modalities:
        if tc.init_from and not (work / f"collab_{m.name}.safetensors").is_file():
            dist.log(f"{work}: no collab_{m.name}.safetensors; using the {m.name} collaborator of {tc.init_from} "
                     "(zero steps, frozen)")
            train_collaborator(cfg, m.name, data, dataclasses.replace(tc, steps=0), CollabConfig(), work)
    folder, scale, vmeta = load_latents(cfg, data, work, device)
    names = [m.name for m in cfg.modalities]
    collabs = [load_collaborator(cfg, n, work, device)[0] for n in names]
    seed_everything(tc.seed)
    net = nn.ModuleDict({m.name: zero_init(UNet(m.diffuser)) for m in cfg.modalities}).to(device)
    init = init_from_bundle(net, tc.init_from, "diffusers") if tc.init_from and init_diffusers else None
    diffs = [checkpoint_blocks(net[n]) if tc.grad_checkpoint else net[n] for n in names]
    acp = schedule(cfg, device)
    view = ShardSet(data.folder, cfg.modalities, latents=folder, images=False, seed=tc.seed)
    shape = view[0]["latent"].shape

    def loss_fn(batch, draws) -> torch.Tensor:
        inputs = view.inputs(batch, device)
        conds = [inputs[n] for n in names]
        t, noise = draw_t_noise(draws, shape, cfg.timesteps, device)
        return diffusers_loss(collabs, diffs, inputs["latent"] * scale, conds, t, noise, acp, snr_weight_power)

    meta = {"stage": "diffusers", "diffusers": jsonable({m.name: asdict(m.diffuser) for m in cfg.modalities}),
            "collaborators_sha256": {n: file_sha256(work / f"collab_{n}.safetensors") for n in names},
            "vae_sha256": vmeta["vae_sha256"], "data": data.record, "snr_weight_power": snr_weight_power}
    meta.update(init or {})
    ema, res = train("diffusers", net, loss_fn, tc, view, work / "diffusers.ckpt.safetensors", resume, meta,
                     resume_same={"snr_weight_power": 0.0})
    manifest = {**meta, "steps": res.step, "loss": res.mean_loss(), "first_losses": res.losses[:20],
                "samples_per_s": res.steps_per_s * tc.batch,
                "train": jsonable(asdict(tc))}
    out = work / "diffusers.safetensors"
    save_stage(out, ema.state_dict(), manifest)
    dist.log(f"diffusers: {res.step} steps, loss {res.loss_text()} -> {out}")
    return manifest


def load_diffusers(cfg: ModelConfig, work: str | os.PathLike) -> tuple[dict[str, dict], dict]:
    """Per modality the diffuser's state dict, and the manifest, checked against the collaborators."""
    work = Path(work)
    path = work / "diffusers.safetensors"
    state, meta = load_stage(path, "diffusers", REBUILD)
    check_same(path, "diffuser config", meta.get("diffusers"),
               jsonable({m.name: asdict(m.diffuser) for m in cfg.modalities}), REBUILD)
    for m in cfg.modalities:
        check_same(path, f"{m.name} collaborator (collab_{m.name}.safetensors changed since)",
                   meta["collaborators_sha256"].get(m.name), file_sha256(work / f"collab_{m.name}.safetensors"),
                   REBUILD)
    per = {m.name: {k[len(m.name) + 1:]: v for k, v in state.items() if k.startswith(m.name + ".")}
           for m in cfg.modalities}
    return per, meta
