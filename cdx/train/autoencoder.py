"""Stage 1: the KL autoencoder (LDM's first stage) and its latent scale factor.

Loss: L1 reconstruction of a posterior sample's decoding, an optional L1 on image gradients
(sharper edges), and LDM's KL term with its small weight. No discriminator, no LPIPS. Afterwards
scale_factor = 1 / std of the posterior means over a few thousand images, as LDM does, so that the
diffusion stages see latents of unit variance; the latents of the whole set are then encoded once
(cdx.train.prepare). Zero steps from a bundle (`--init-from B --steps 0`) keep
B's scale factor, as its collaborators were trained with it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..models.autoencoder import Autoencoder
from ..models.bundle import file_sha256, read_manifest
from ..models.config import ModelConfig
from . import dist
from .data import ShardSet
from .init import init_from_bundle
from .checkpoint import check_same, load_stage, save_stage
from .loop import TrainConfig, pick_device, seed_everything, train
from .prepare import latents, posterior_means

REBUILD = "cdx train vae"


@dataclass
class VaeConfig:
    kl_weight: float = 1e-6  # LDM's weight, relative to the per-image summed reconstruction loss
    edge_weight: float = 0.5  # L1 on horizontal/vertical pixel differences; 0 disables
    crop: int = 32  # train on random crops of this size (the VAE is convolutional); 0: whole images
    scale_images: int = 4096  # images over which the latent std is measured


def jsonable(x):
    return json.loads(json.dumps(x))


def posterior(vae: Autoencoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (B, 3, H, W) -> mean, logvar (B, embed_dim, h, w), logvar clamped as LDM does."""
    mean, logvar = vae.encode_moments(x).chunk(2, dim=1)  # (B, 2*e, h, w) -> 2 x (B, e, h, w)
    return mean, logvar.clamp(-30.0, 20.0)


def vae_loss(vae: Autoencoder, x: torch.Tensor, noise: torch.Tensor, kl_weight: float,
             edge_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L1(x, D(mean + std * noise)) + edge_weight * L1 of gradients + kl_weight * KL / pixels."""
    mean, logvar = posterior(vae, x)
    z = mean + torch.exp(0.5 * logvar) * noise.to(mean.dtype)
    rec = vae.decode(z).float()
    l1 = (rec - x).abs().mean()
    # LDM: KL summed over the latent, averaged over the batch, next to a reconstruction loss summed
    # over the pixels; dividing both by the pixels per image keeps LDM's balance with a mean L1.
    kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum(dim=(1, 2, 3)).mean()
    loss = l1 + kl_weight * kl / x[0].numel()
    parts = {"l1": l1.detach(), "kl": kl.detach()}
    if edge_weight > 0:
        edge = ((rec.diff(dim=-1) - x.diff(dim=-1)).abs().mean() + (rec.diff(dim=-2) - x.diff(dim=-2)).abs().mean())
        loss = loss + edge_weight * edge
        parts["edge"] = edge.detach()
    return loss, parts


def random_crop(x: torch.Tensor, size: int, draws) -> torch.Tensor:
    """One random size x size window (the same for the whole global batch) of (B, C, H, W)."""
    if size <= 0 or size >= x.shape[-1]:
        return x
    oy, ox = draws.shared_randint(x.shape[-2] - size + 1, 2).tolist()
    return x[:, :, oy:oy + size, ox:ox + size]


@torch.no_grad()
def encode_means(vae: Autoencoder, data: ShardSet, n: int | None = None, batch: int = 128) -> torch.Tensor:
    """Posterior means of the first `n` images (all by default): (n, embed_dim, h, w) float32 on the CPU."""
    device = next(vae.parameters()).device
    vae.eval()
    n = len(data) if n is None else min(n, len(data))
    return torch.cat([posterior_means(vae, data.inputs(data.batch(range(lo, min(n, lo + batch))), device)["image"])
                      for lo in range(0, n, batch)])


def scale_factor_of(means: torch.Tensor) -> float:
    """LDM's scale_by_std: 1 / std of the latents, so that the diffusion stages see unit variance."""
    return float(1.0 / means.std())


def load_latents(cfg: ModelConfig, data: ShardSet, work: str | os.PathLike,
                 device="cpu") -> tuple[Path, float, dict]:
    """The folder of `data`'s latents under `work`'s autoencoder (encoded when missing, by every process),
    the scale factor (z0 = scale * the stored posterior mean) and the autoencoder's manifest."""
    work = Path(work)
    vae, vmeta = load_vae(cfg, work, device)
    folder = latents(data, vae, file_sha256(work / "vae.safetensors"), work)
    return folder, float(vmeta["scale_factor"]), {**vmeta, "vae_sha256": file_sha256(work / "vae.safetensors")}


def vae_from_bundle(cfg: ModelConfig, data: ShardSet, tc: TrainConfig, work: Path) -> None:
    """With --init-from and no autoencoder in `work` yet: the bundle's, as a zero-step vae stage would copy it."""
    if tc.init_from and not (Path(work) / "vae.safetensors").is_file():
        dist.log(f"{work}: no vae.safetensors; using the autoencoder of {tc.init_from} (zero steps)")
        train_vae(cfg, data, dataclasses.replace(tc, steps=0), VaeConfig(), work)


def train_vae(cfg: ModelConfig, data: ShardSet, tc: TrainConfig, vc: VaeConfig, work: str | os.PathLike,
              resume: bool = False) -> dict:
    """Train the autoencoder, measure its scale factor, write `work/vae.safetensors` and encode the latents;
    returns its manifest."""
    work = Path(work)
    device = pick_device(tc.device)
    seed_everything(tc.seed)
    vae = Autoencoder(cfg.autoencoder).to(device)
    init = init_from_bundle(vae, tc.init_from, "vae") if tc.init_from else None
    images = ShardSet(data.folder, images=True, seed=tc.seed)
    e, f = cfg.autoencoder.embed_dim, cfg.autoencoder.downsample_factor

    def loss_fn(batch, draws) -> torch.Tensor:
        x = random_crop(images.inputs(batch, device)["image"], vc.crop, draws)
        noise = draws.randn(e, x.shape[-2] // f, x.shape[-1] // f)
        return vae_loss(vae, x, noise.to(device), vc.kl_weight, vc.edge_weight)[0]

    meta = {"stage": "vae", "autoencoder": jsonable(asdict(cfg.autoencoder)), "data": data.record}
    meta.update(init or {})
    ema, res = train("vae", vae, loss_fn, tc, images, work / "vae.ckpt.safetensors", resume, meta)
    if init and res.step == 0:
        # the bundle's autoencoder unchanged: keep the scale its collaborators were trained at (re-measured
        # on other faces it would differ in the third digit, and every latent with it)
        scale = float(read_manifest(tc.init_from)["config"]["scale_factor"])
        meta["scale_factor_from"] = "init_from"
    else:
        scale = scale_factor_of(encode_means(ema, images, vc.scale_images))
    with torch.no_grad():
        x = images.inputs(images.batch(range(min(256, len(images)))), device)["image"]
        rec_l1 = float((ema.decode(posterior_means(ema, x).to(device)).float() - x).abs().mean())
    manifest = {**meta, "scale_factor": scale, "steps": res.step, "loss": res.mean_loss(),
                "first_losses": res.losses[:20],
                "recon_l1_mean": rec_l1, "samples_per_s": res.steps_per_s * tc.batch,
                "train": jsonable(asdict(tc)), "vae": jsonable(asdict(vc))}
    save_stage(work / "vae.safetensors", ema.state_dict(), manifest)
    latents(data, ema, file_sha256(work / "vae.safetensors"), work)
    dist.log(f"vae: {res.step} steps, loss {res.loss_text()}, recon L1 {rec_l1:.4f}, "
             f"scale_factor {scale:.4f} -> {work / 'vae.safetensors'}")
    return manifest


def load_vae(cfg: ModelConfig, work: str | os.PathLike, device="cpu") -> tuple[Autoencoder, dict]:
    """The trained autoencoder (eval mode) and its manifest, checked against `cfg`."""
    path = Path(work) / "vae.safetensors"
    state, meta = load_stage(path, "vae", REBUILD)
    check_same(path, "autoencoder config", meta.get("autoencoder"), jsonable(asdict(cfg.autoencoder)), REBUILD)
    vae = Autoencoder(cfg.autoencoder)
    vae.load_state_dict(state, strict=True)
    return vae.to(device).eval(), meta
