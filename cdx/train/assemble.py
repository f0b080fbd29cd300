"""Stage 4: the trained parts -> one checkpoint bundle (fp16), with the VAE's scale factor in the
config, the sampling defaults (eta, the official influence shaping or none, classifier-free guidance
scales) and the training provenance."""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
from pathlib import Path

import torch

from ..errors import InputError
from ..io import check_folder_target
from ..models.bundle import FORMAT, bundle_hash, file_sha256, load_bundle, read_manifest, save_bundle, stored_dtype
from ..models.collab import CollaborativeModel
from ..models.config import ModelConfig
from .autoencoder import load_vae
from .collaborator import load_collaborator
from .diffusers import load_diffusers


# The official sampler's default influence shaping (golden README): the mask's weight decays as
# cos over t and is scaled by 2 (seg_mask_scale_factor); the text modality takes what it gives up.
OFFICIAL_SHAPING = {"mask": {"decay": "cosine", "influence_scale": 2.0}}


def sampling_config(cfg: ModelConfig, eta: float = 0.0, shaping: bool = False,
                    guidance: dict[str, float] | None = None, shaping_scale: float | None = None,
                    shaping_decay: str = "cosine") -> ModelConfig:
    """`cfg` with the bundle's sampling defaults: eta, the official shaping on the mask modalities (with
    `shaping_scale` instead of the official factor 2 when given; `shaping_decay="none"` keeps the factor and
    drops the cosine decay: a constant bias on the mask's influence) or none, guidance scales."""
    if shaping_decay not in ("cosine", "none"):
        raise ValueError(f"unknown shaping decay {shaping_decay!r}")
    mods = []
    for m in cfg.modalities:
        shape = OFFICIAL_SHAPING.get(m.kind, {}) if shaping else {}
        scale = shape.get("influence_scale", 1.0) if shaping_scale is None or not shape else float(shaping_scale)
        decay = shape.get("decay", "none") if shaping_decay == "cosine" else "none"
        mods.append(dataclasses.replace(m, decay=decay, influence_scale=scale))
    cfg = dataclasses.replace(cfg, modalities=tuple(mods), shaping=bool(shaping), eta=float(eta))
    return cfg.with_guidance(guidance or {})


def assemble(cfg: ModelConfig, work: str | os.PathLike, out: str | os.PathLike,
             dtype: torch.dtype = torch.float16, eta: float = 0.0, shaping: bool = False,
             guidance: dict[str, float] | None = None, shaping_scale: float | None = None,
             shaping_decay: str = "cosine", overwrite: bool = True) -> str:
    """Build the model from `work`'s stage outputs and save it as a bundle at `out`; returns its hash.
    A guidance scale other than 1 needs a collaborator trained with condition dropout. An existing `out` is
    replaced only when it is a cdx bundle (and `overwrite` is set); anything else there is refused first."""
    work = Path(work)
    check_folder_target(out, FORMAT, overwrite)
    try:  # before any stage output is read
        sampled = sampling_config(cfg, eta, shaping, guidance, shaping_scale, shaping_decay)
    except KeyError as e:
        raise InputError(f"--guidance: {e.args[0]} in preset {cfg.preset}") from None
    vae, vmeta = load_vae(cfg, work)
    cfg = dataclasses.replace(sampled, scale_factor=float(vmeta["scale_factor"]))
    model = CollaborativeModel(cfg)
    model.vae.load_state_dict(vae.state_dict(), strict=True)
    stages = {"vae": _summary(vmeta, work / "vae.safetensors")}
    vocabularies = {}
    for m in cfg.modalities:
        net, meta = load_collaborator(cfg, m.name, work)
        if meta.get("vocabulary") is not None:
            vocabularies[m.name] = tuple(meta["vocabulary"])
        model.unets[m.name].load_state_dict(net["unet"].state_dict(), strict=True)
        model.encoders[m.name].load_state_dict(net["encoder"].state_dict(), strict=True)
        stages[f"collaborator:{m.name}"] = _summary(meta, work / f"collab_{m.name}.safetensors")
        if m.guidance != 1.0 and not _trained_with_dropout(meta):
            raise InputError(f"--guidance {m.name}={m.guidance:g}: collab_{m.name}.safetensors was trained without "
                             f"condition dropout, so it has no unconditional prediction; train it with --cond-drop")
    cfg = dataclasses.replace(cfg, modalities=tuple(dataclasses.replace(m, vocabulary=vocabularies.get(m.name))
                                                    for m in cfg.modalities))
    model.cfg = cfg
    diffs, dmeta = load_diffusers(cfg, work)
    for m in cfg.modalities:
        model.diffusers[m.name].load_state_dict(diffs[m.name], strict=True)
    stages["diffusers"] = _summary(dmeta, work / "diffusers.safetensors")
    extra = {
        "producer": "cdx train",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": dmeta.get("data"),  # what the diffusers were trained on: source, fingerprint, counts
        "note": "trained with cdx train on the data named above; not the official Collaborative Diffusion weights",
        "stages": stages,
    }
    return save_bundle(model.eval(), out, extra=extra, dtype=dtype, overwrite=overwrite)


def resample(src: str | os.PathLike, out: str | os.PathLike, eta: float = 0.0, shaping: bool = False,
             guidance: dict[str, float] | None = None, shaping_scale: float | None = None,
             shaping_decay: str = "cosine", overwrite: bool = True) -> str:
    """A trained bundle's networks, bit for bit, under new sampling defaults (eta, shaping, guidance), each set
    anew as `assemble` sets it (a guidance scale not given is 1): the sampling values can be re-tuned without
    the training folder. `out` may be `src`. Returns the new bundle's hash."""
    check_folder_target(out, FORMAT, overwrite)
    model = load_bundle(src, verify_hashes=True)
    manifest = read_manifest(src)
    try:
        plain = model.cfg.with_guidance({m.name: 1.0 for m in model.cfg.modalities})
        cfg = sampling_config(plain, eta, shaping, guidance, shaping_scale, shaping_decay)
    except KeyError as e:
        raise InputError(f"--guidance: {e.args[0]} in this bundle") from None
    stages = (manifest.get("extra") or {}).get("stages") or {}
    for m in cfg.modalities:
        if m.guidance != 1.0 and not _trained_with_dropout(stages.get(f"collaborator:{m.name}")):
            raise InputError(f"--guidance {m.name}={m.guidance:g}: {src} does not record condition dropout for its "
                             f"{m.name} collaborator, so it has no unconditional prediction")
    again = CollaborativeModel(cfg)
    again.load_state_dict(model.state_dict(), strict=True)
    extra = {**_finite(manifest.get("extra") or {}), "sampling_from": bundle_hash(src),
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    return save_bundle(again.eval(), out, extra=extra, dtype=stored_dtype(src), overwrite=overwrite)


def _trained_with_dropout(meta: dict | None) -> bool:
    """Whether a collaborator's training record (stage manifest or its bundle summary) has condition dropout:
    its own, or, for zero steps from a bundle, that of the collaborator it copied (`init_stage`)."""
    meta = meta or {}
    if ((meta.get("collab") or {}).get("cond_drop") or 0) > 0:
        return True
    return meta.get("steps") == 0 and _trained_with_dropout(meta.get("init_stage"))


def _finite(obj):
    """`obj` with every NaN or infinite float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _summary(meta: dict, path: Path) -> dict:
    keep = ("data", "steps", "loss", "scale_factor", "scale_factor_from", "recon_l1_mean", "samples_per_s", "train",
            "vae", "collab", "snr_weight_power", "init_from", "init_stage")
    return _finite({"sha256": file_sha256(path), **{k: meta[k] for k in keep if k in meta}})
