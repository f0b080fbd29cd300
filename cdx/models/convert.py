"""Official Collaborative Diffusion checkpoint (`LatentDiffusionCompose.state_dict()`) -> cdx model.

The official key prefixes map one-to-one onto cdx networks; module names below each prefix are
the same. The twelve schedule buffers are not weights: they are checked against the schedule
the config implies. `...transformer.to_logits` is never used for conditioning and is dropped.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import CdxError
from .collab import CollaborativeModel
from .config import ModelConfig

# official prefix -> (cdx network name); the network's own key is what follows the prefix.
PREFIXES = {
    "model.seg_mask_unet.diffusion_model.": "mask_unet",
    "model.text_unet.diffusion_model.": "text_unet",
    "model.seg_mask_confidence_predictor.diffusion_model.": "mask_diffuser",
    "model.text_confidence_predictor.diffusion_model.": "text_diffuser",
    "first_stage_model.": "vae",
    "cond_stage_model.text_cond_stage_model.transformer.": "text_encoder",
    "cond_stage_model.seg_mask_cond_stage_model.": "mask_encoder",
}
DROPPED = ("cond_stage_model.text_cond_stage_model.transformer.to_logits.",)
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2")


def read_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load an official .ckpt without allowing code execution; unwrap Lightning's `state_dict`."""
    path = Path(path)
    if not path.is_file():
        raise CdxError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
        raise CdxError(f"{path}: not a loadable PyTorch checkpoint ({msg})") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CdxError(f"{path}: no state_dict of tensors inside")
    return state


def map_official_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Split an official state dict per cdx network; returns (per-network states, unmapped keys)."""
    per_net: dict[str, dict[str, torch.Tensor]] = {}
    unmapped = []
    for key, value in state.items():
        if key in SCHEDULE_KEYS or key.startswith(DROPPED):
            continue
        for prefix, net in PREFIXES.items():
            if key.startswith(prefix):
                per_net.setdefault(net, {})[key[len(prefix):]] = value
                break
        else:
            unmapped.append(key)
    return per_net, unmapped


def check_schedule(state: dict[str, torch.Tensor], cfg: ModelConfig) -> None:
    """The checkpoint's schedule buffers must be the ones the config's schedule gives."""
    if "alphas_cumprod" not in state:
        return
    ours = cfg.alphas_cumprod()
    theirs = state["alphas_cumprod"].float().numpy()
    if theirs.shape != ours.shape or not np.allclose(theirs, ours, rtol=1e-6, atol=1e-7):
        raise CdxError("checkpoint's alphas_cumprod does not match the config's linear schedule "
                       f"({cfg.timesteps} steps, {cfg.linear_start}..{cfg.linear_end})")


def convert_official(path: str | Path, cfg: ModelConfig) -> CollaborativeModel:
    """Build `cfg`'s model and fill every parameter from the official checkpoint at `path`."""
    state = read_official_state(path)
    check_schedule(state, cfg)
    per_net, unmapped = map_official_keys(state)
    with torch.device("meta"):
        model = CollaborativeModel(cfg)
    missing, unexpected, mismatched = [], list(unmapped), []
    for name, net in model.networks().items():
        want = net.state_dict()
        got = per_net.pop(name, {})
        missing += [f"{name}:{k}" for k in want if k not in got]
        unexpected += [f"{name}:{k}" for k in got if k not in want]
        mismatched += [f"{name}:{k} {tuple(got[k].shape)} vs {tuple(v.shape)}"
                       for k, v in want.items() if k in got and got[k].shape != v.shape]
    unexpected += [f"{n}:*" for n in per_net]
    if missing or unexpected or mismatched:
        raise CdxError("checkpoint does not match preset " + cfg.preset + ": " + "; ".join(
            f"{label} ({len(keys)}): {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
            if keys))
    states = map_official_keys(state)[0]
    for name, net in model.networks().items():
        net.load_state_dict({k: v.float().contiguous() for k, v in states[name].items()}, strict=True, assign=True)
    return model.eval()
