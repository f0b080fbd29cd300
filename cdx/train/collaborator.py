"""Stage 2: one collaborator, a latent diffusion model of one modality, trained with its condition
encoder (the official `cond_stage_trainable: True`).

The paper's Eq. 3: L = E_{z0, c, eps ~ N(0, I), t ~ U{0..T-1}} || eps - eps_theta(z_t, t, tau(c)) ||^2,
with z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (DDPM's q(z_t | z_0)), abar from LDM's linear betas,
and z0 = scale_factor * the posterior mean of the frozen autoencoder (computed once for the set).
"""
from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import InputError
from ..models.bundle import file_sha256
from ..models.collab import encoder_for
from ..models.config import ModelConfig
from ..models.guidance import null_condition as guidance_null
from ..models.modalities import kind_of
from ..models.unet import ResBlock, SpatialTransformer, UNet
from . import dist
from .autoencoder import jsonable, load_latents, vae_from_bundle
from .data import ShardSet
from .init import init_from_bundle
from .checkpoint import check_same, load_stage, save_stage
from .loop import TrainConfig, pick_device, seed_everything, train


def rebuild_cmd(name: str) -> str:
    return f"cdx train collaborator --modality {name}"


@dataclass
class CollabConfig:
    cond_drop: float = 0.0  # probability of the null condition per sample (for classifier-free guidance)
    # Loss weight max(1, 1 / SNR_t) ** p per item: 0 is Eq. 3 exactly; 1 is the truncated-SNR weighting
    # of Salimans & Ho 2022 (the x0 error where SNR < 1). Between, it makes the small high-t eps errors,
    # which DDIM amplifies by 1 / sqrt(SNR), count early in a short training.
    snr_weight_power: float = 0.0


# how the model is sampled, and what its training found (the caption vocabulary), not what is trained
SAMPLING_FIELDS = ("decay", "influence_scale", "guidance", "vocabulary")


def modality_record(m) -> dict:
    """The modality's training-relevant config as stored in (and checked against) the stage manifest;
    `m` is a ModalityConfig or a manifest's stored record (older ones also hold sampling fields)."""
    record = m if isinstance(m, dict) else jsonable(asdict(m))
    return {k: v for k, v in record.items() if k not in SAMPLING_FIELDS}


def schedule(cfg: ModelConfig, device="cpu") -> torch.Tensor:
    """abar_t, (T,) rounded to float32 as the official model's training buffer."""
    return torch.from_numpy(np.asarray(cfg.alphas_cumprod(), dtype=np.float32)).to(device)


def q_sample(z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    """z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, per item of the batch."""
    a = acp[t].view(-1, 1, 1, 1)  # (B,) -> (B, 1, 1, 1)
    return a.sqrt() * z0 + (1.0 - a).sqrt() * noise


def eps_loss(unet: nn.Module, encoder: nn.Module, z0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor, acp: torch.Tensor, snr_weight_power: float = 0.0) -> torch.Tensor:
    """The paper's Eq. 3 on one batch: mean over elements of (eps - eps_theta(z_t, t, tau(c)))^2;
    with `snr_weight_power` p, item b is weighted by max(1, 1 / SNR_t) ** p, SNR_t = abar_t / (1 - abar_t)."""
    eps_hat = unet(q_sample(z0, t, noise, acp), t, encoder(cond))
    return snr_weighted_mse(eps_hat.float(), noise, t, acp, snr_weight_power)


def snr_weighted_mse(eps_hat: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, acp: torch.Tensor,
                     snr_weight_power: float = 0.0) -> torch.Tensor:
    """Mean of (eps - eps_hat)^2, item b weighted by max(1, 1 / SNR_t) ** p (p = 0: the plain mean)."""
    if not snr_weight_power:
        return F.mse_loss(eps_hat, noise)
    a = acp[t]  # (B,)
    w = ((1.0 - a) / a).clamp(min=1.0) ** snr_weight_power
    return (w * (eps_hat - noise).pow(2).mean(dim=(1, 2, 3))).mean()


def draw_t_noise(draws, shape, timesteps: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~ U{0..T-1} (B,) and eps ~ N(0, I) (B, *shape), from the step's draws, on `device`."""
    t = draws.randint(timesteps)
    return t.to(device), draws.randn(*shape).to(device)


def checkpoint_blocks(unet: UNet) -> UNet:
    """Gradient checkpointing: every block of the UNet recomputes its activations in the backward pass
    (torch.utils.checkpoint), so that only the blocks' inputs stay in memory: for the 400 M-parameter UNets,
    memory for about one more forward pass. The weights and the state dict are unchanged."""
    for block in [*unet.input_blocks, unet.middle_block, *unet.output_blocks]:
        block.forward = functools.partial(_recomputed, block.forward)
    return unet


def _recomputed(forward, *args):
    return checkpoint(forward, *args, use_reentrant=False) if torch.is_grad_enabled() else forward(*args)


@torch.no_grad()
def zero_init(unet: UNet) -> UNet:
    """The official init's zero_module: output conv, every ResBlock's last conv, every proj_out."""
    convs = [unet.out[-1]]
    for m in unet.modules():
        if isinstance(m, ResBlock):
            convs.append(m.out_layers[-1])
        elif isinstance(m, SpatialTransformer):
            convs.append(m.proj_out)
    for c in convs:
        c.weight.zero_()
        c.bias.zero_()
    return unet


def null_condition(m, like: torch.Tensor) -> torch.Tensor:
    """The condition classifier-free guidance drops to (cdx.models.guidance), shaped and placed as `like`."""
    return guidance_null(m).to(device=like.device, dtype=like.dtype).expand_as(like).clone()


# ---------------------------------------------------------------------------------------------
# the stage


def train_collaborator(cfg: ModelConfig, name: str, data: ShardSet, tc: TrainConfig, cc: CollabConfig,
                       work: str | os.PathLike, resume: bool = False) -> dict:
    """Train modality `name`'s UNet and encoder on Eq. 3; write `work/collab_<name>.safetensors`."""
    work = Path(work)
    m = cfg.modality(name)
    if m.name not in data.manifest["modalities"]:
        raise InputError(f"the data has no {kind_of(m.kind).training_field} files: the {name} collaborator cannot "
                         "be trained from it")
    device = pick_device(tc.device)
    vae_from_bundle(cfg, data, tc, work)
    folder, scale, vmeta = load_latents(cfg, data, work, device)
    seed_everything(tc.seed)
    net = nn.ModuleDict({"unet": zero_init(UNet(m.unet)), "encoder": encoder_for(m)}).to(device)
    init = init_from_bundle(net, tc.init_from, f"collaborator:{name}") if tc.init_from else None
    if tc.grad_checkpoint:
        checkpoint_blocks(net["unet"])
    acp = schedule(cfg, device)
    view = ShardSet(data.folder, [m], latents=folder, images=False, seed=tc.seed)
    shape = view[0]["latent"].shape

    def loss_fn(batch, draws) -> torch.Tensor:
        inputs = view.inputs(batch, device)
        cond = inputs[m.name]
        if cc.cond_drop > 0:
            drop = (draws.rand() < cc.cond_drop).to(device)
            cond = torch.where(drop.view(-1, *[1] * (cond.dim() - 1)), null_condition(m, cond), cond)
        t, noise = draw_t_noise(draws, shape, cfg.timesteps, device)
        return eps_loss(net["unet"], net["encoder"], inputs["latent"] * scale, cond, t, noise, acp,
                        cc.snr_weight_power)

    meta = {"stage": "collaborator", "modality": modality_record(m), "vae_sha256": vmeta["vae_sha256"],
            "data": data.record, "collab": jsonable(asdict(cc))}
    meta.update(init or {})
    vocabulary = training_vocabulary(m, view, tc.init_from, tc.steps)
    if vocabulary is not None:
        meta["vocabulary"] = list(vocabulary)
    ema, res = train(f"collaborator:{name}", net, loss_fn, tc, view, work / f"collab_{name}.ckpt.safetensors",
                     resume, meta, resume_same={"collab": jsonable(asdict(CollabConfig()))})
    manifest = {**meta, "steps": res.step, "loss": res.mean_loss(), "first_losses": res.losses[:20],
                "samples_per_s": res.steps_per_s * tc.batch,
                "train": jsonable(asdict(tc))}
    out = work / f"collab_{name}.safetensors"
    save_stage(out, ema.state_dict(), manifest)
    dist.log(f"collaborator {name}: {res.step} steps, loss {res.loss_text()} -> {out}")
    return manifest


def training_vocabulary(m, view: ShardSet, init_from=None, steps: int = 1) -> tuple[str, ...] | None:
    """What the collaborator of `m` learnt its conditions from (the words of its captions, for text): its
    data's (unless it trained zero steps), joined with the vocabulary of the bundle it started from."""
    mine = kind_of(m.kind).training_vocabulary(view.stored(m.name) if steps > 0 or not init_from else ())
    if mine is None or not init_from:
        return mine
    from ..models.bundle import read_manifest

    before = [x.get("vocabulary") for x in read_manifest(init_from)["config"]["modalities"] if x["name"] == m.name]
    if before and before[0] is not None:
        return tuple(sorted(set(mine) | set(before[0])))
    return mine if steps > 0 else None  # zero steps from a bundle that records none: unknown


def load_collaborator(cfg: ModelConfig, name: str, work: str | os.PathLike,
                      device="cpu") -> tuple[nn.ModuleDict, dict]:
    """ModuleDict(unet, encoder) of a trained collaborator (eval, frozen) and its manifest."""
    work = Path(work)
    path = work / f"collab_{name}.safetensors"
    m = cfg.modality(name)
    state, meta = load_stage(path, "collaborator", rebuild_cmd(name))
    check_same(path, "modality config", modality_record(meta.get("modality") or {}), modality_record(m),
               rebuild_cmd(name))
    check_same(path, "autoencoder (vae.safetensors changed since)", meta.get("vae_sha256"),
               file_sha256(work / "vae.safetensors"), rebuild_cmd(name))
    net = nn.ModuleDict({"unet": UNet(m.unet), "encoder": encoder_for(m)})
    net.load_state_dict(state, strict=True)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device).eval(), meta
