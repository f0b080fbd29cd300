"""Stage 1: the KL autoencoder (LDM's first stage) and its latent scale factor.

Loss: L1 reconstruction of a posterior sample's decoding, an optional L1 on image gradients
(sharper edges), and LDM's KL term with its small weight. No discriminator, no LPIPS. Afterwards
scale_factor = 1 / std of the posterior means over a few thousand images, as LDM does, so that the
diffusion stages see latents of unit variance. Zero steps from a bundle (`--init-from B --steps 0`) keep
B's scale factor, as its collaborators were trained with it.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..models.autoencoder import Autoencoder
from ..models.bundle import file_sha256, read_manifest
from ..models.config import ModelConfig
from .data import FaceSet
from .init import init_from_bundle
from .loop import TrainConfig, check_same, load_stage, pick_device, save_stage, seed_everything, train

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


def random_crop(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """One random size x size window (the same for the whole batch) of (B, C, H, W)."""
    if size <= 0 or size >= x.shape[-1]:
        return x
    oy, ox = torch.randint(x.shape[-2] - size + 1, (2,), generator=gen).tolist()
    return x[:, :, oy:oy + size, ox:ox + size]


@torch.no_grad()
def encode_means(vae: Autoencoder, data: FaceSet, n: int | None = None, batch: int = 128) -> torch.Tensor:
    """Posterior means of the first `n` images (all by default): (n, embed_dim, h, w) float32 on the CPU."""
    device = next(vae.parameters()).device
    vae.eval()
    n = len(data) if n is None else min(n, len(data))
    means = []
    for lo in range(0, n, batch):
        idx = torch.arange(lo, min(n, lo + batch))
        means.append(posterior(vae, data.image_batch(idx).to(device))[0].float().cpu())
    return torch.cat(means)


def scale_factor_of(means: torch.Tensor) -> float:
    """LDM's scale_by_std: 1 / std of the latents, so that the diffusion stages see unit variance."""
    return float(1.0 / means.std())


def latents_manifest(work: Path, data: FaceSet, scale_factor: float) -> dict:
    return {"stage": "latents", "vae_sha256": file_sha256(work / "vae.safetensors"), "data": data.fingerprint,
            "scale_factor": scale_factor}


def load_latents(cfg: ModelConfig, data: FaceSet, work: str | os.PathLike, device="cpu") -> tuple[torch.Tensor, dict]:
    """scale_factor * posterior mean of every image, (n, C, h, w): read from `work/latents.safetensors`,
    or recomputed when the autoencoder or the data changed since."""
    work = Path(work)
    vae, vmeta = load_vae(cfg, work, device)
    want = latents_manifest(work, data, vmeta["scale_factor"])
    path = work / "latents.safetensors"
    if path.is_file():
        state, meta = load_stage(path, "latents", REBUILD)
        if meta == want:
            return state["latents"], want
    print(f"encoding {len(data)} images to latents (scale_factor {vmeta['scale_factor']:.4f})", flush=True)
    z = encode_means(vae, data) * vmeta["scale_factor"]  # what VaeEncoder computes
    save_stage(path, {"latents": z}, want)
    return z, want


def train_vae(cfg: ModelConfig, data: FaceSet, tc: TrainConfig, vc: VaeConfig, work: str | os.PathLike,
              resume: bool = False) -> dict:
    """Train the autoencoder, measure its scale factor, write `work/vae.safetensors`; returns its manifest."""
    work = Path(work)
    device = pick_device(tc.device)
    gen = seed_everything(tc.seed)
    vae = Autoencoder(cfg.autoencoder).to(device)
    init = init_from_bundle(vae, tc.init_from, "vae") if tc.init_from else None

    def loss_fn(g: torch.Generator) -> torch.Tensor:
        x = random_crop(data.image_batch(data.random_indices(g, tc.batch)), vc.crop, g)
        e = cfg.autoencoder.embed_dim
        f = cfg.autoencoder.downsample_factor
        noise = torch.randn((x.shape[0], e, x.shape[-2] // f, x.shape[-1] // f), generator=g)
        return vae_loss(vae, x.to(device), noise.to(device), vc.kl_weight, vc.edge_weight)[0]

    meta = {"stage": "vae", "autoencoder": jsonable(asdict(cfg.autoencoder)), "data": data.fingerprint}
    meta.update(init or {})
    ema, res = train("vae", vae, loss_fn, tc, gen, work / "vae.ckpt.safetensors", resume, meta)
    means = encode_means(ema, data)  # the whole set, once: the scale factor and the next stages' latents
    if init and res.step == 0:
        # the bundle's autoencoder unchanged: keep the scale its collaborators were trained at (re-measured
        # on other faces it would differ in the third digit, and every latent with it)
        scale = float(read_manifest(tc.init_from)["config"]["scale_factor"])
        meta["scale_factor_from"] = "init_from"
    else:
        scale = scale_factor_of(means[:vc.scale_images])
    with torch.no_grad():
        x = data.image_batch(torch.arange(min(256, len(data)))).to(device)
        rec_l1 = float((ema.decode(means[:x.shape[0]].to(device)).float() - x).abs().mean())
    manifest = {**meta, "scale_factor": scale, "steps": res.step, "loss": res.mean_loss(),
                "recon_l1_mean": rec_l1, "samples_per_s": res.steps_per_s * tc.batch,
                "train": jsonable(asdict(tc)), "vae": jsonable(asdict(vc))}
    save_stage(work / "vae.safetensors", ema.state_dict(), manifest)
    save_stage(work / "latents.safetensors", {"latents": means * scale}, latents_manifest(work, data, scale))
    print(f"vae: {res.step} steps, loss {res.loss_text()}, recon L1 {rec_l1:.4f}, "
          f"scale_factor {scale:.4f} -> {work / 'vae.safetensors'}", flush=True)
    return manifest


def load_vae(cfg: ModelConfig, work: str | os.PathLike, device="cpu") -> tuple[Autoencoder, dict]:
    """The trained autoencoder (eval mode) and its manifest, checked against `cfg`."""
    path = Path(work) / "vae.safetensors"
    state, meta = load_stage(path, "vae", REBUILD)
    check_same(path, "autoencoder config", meta.get("autoencoder"), jsonable(asdict(cfg.autoencoder)), REBUILD)
    vae = Autoencoder(cfg.autoencoder)
    vae.load_state_dict(state, strict=True)
    return vae.to(device).eval(), meta
