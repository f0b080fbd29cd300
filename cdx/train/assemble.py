"""Stage 4: the trained parts -> one checkpoint bundle (fp16), with the VAE's scale factor in the
config, influence shaping off (this is not the official model), and the training provenance."""
from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

import torch

from ..models.bundle import file_sha256, save_bundle
from ..models.collab import CollaborativeModel
from ..models.config import ModelConfig
from .autoencoder import load_vae
from .collaborator import load_collaborator
from .diffusers import load_diffusers


def assemble(cfg: ModelConfig, work: str | os.PathLike, out: str | os.PathLike,
             dtype: torch.dtype = torch.float16, eta: float = 0.0) -> str:
    """Build the model from `work`'s stage outputs and save it as a bundle at `out`; returns its hash."""
    work = Path(work)
    vae, vmeta = load_vae(cfg, work)
    cfg = dataclasses.replace(cfg, scale_factor=float(vmeta["scale_factor"]), shaping=False, eta=float(eta))
    model = CollaborativeModel(cfg)
    model.vae.load_state_dict(vae.state_dict(), strict=True)
    stages = {"vae": _summary(vmeta, work / "vae.safetensors")}
    for m in cfg.modalities:
        net, meta = load_collaborator(cfg, m.name, work)
        model.unets[m.name].load_state_dict(net["unet"].state_dict(), strict=True)
        model.encoders[m.name].load_state_dict(net["encoder"].state_dict(), strict=True)
        stages[f"collaborator:{m.name}"] = _summary(meta, work / f"collab_{m.name}.safetensors")
    diffs, dmeta = load_diffusers(cfg, work)
    for m in cfg.modalities:
        model.diffusers[m.name].load_state_dict(diffs[m.name], strict=True)
    stages["diffusers"] = _summary(dmeta, work / "diffusers.safetensors")
    extra = {
        "producer": "cdx train",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": "procedural synthetic faces (cdx.train.synth), " + str(vmeta.get("data")),
        "note": "trained from scratch on synthetic data; not the official Collaborative Diffusion weights",
        "stages": stages,
    }
    return save_bundle(model.eval(), out, extra=extra, dtype=dtype)


def _summary(meta: dict, path: Path) -> dict:
    keep = ("steps", "loss", "scale_factor", "recon_l1_mean", "samples_per_s", "train", "vae", "collab", "init_from")
    return {"sha256": file_sha256(path), **{k: meta[k] for k in keep if k in meta}}
