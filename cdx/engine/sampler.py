"""The collaborative sampling loop (the paper's Algorithm 2) over any list of modalities.

Noise is drawn up front on the host: `torch.Generator().manual_seed(seed)` draws x_T (B, C, h, w)
first, then the per-step noise (N, B, C, h, w), both standard normal float32. Every backend is
given the same tensors, so the same seed gives the same image through any backend.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from ..kernels import collaborate
from ..models.config import ModelConfig
from .runner import Runner
from .schedule import StepTable, cosine_decay


@dataclass(frozen=True)
class Shaping:
    """Official influence shaping per step: decay (N, M) and scale (M,) float32, receiver index."""

    decay: np.ndarray
    scale: np.ndarray
    receiver: int


def make_shaping(cfg: ModelConfig, names: Sequence[str], table: StepTable, timesteps: int = 1000) -> Shaping | None:
    """Build the shaping table for the chosen modalities (None when shaping is off or M == 1)."""
    if not cfg.shaping or len(names) < 2:
        return None
    mods = [cfg.modality(n) for n in names]
    decay = np.ones((table.num_steps, len(mods)), dtype=np.float32)
    for j, m in enumerate(mods):
        if m.decay == "cosine":
            decay[:, j] = [cosine_decay(int(t), timesteps) for t in table.timesteps]
        elif m.decay != "none":
            raise ValueError(f"unknown influence decay {m.decay!r}")
    undecayed = [j for j, m in enumerate(mods) if m.decay == "none"]
    receiver = undecayed[-1] if undecayed else len(mods) - 1
    scale = np.asarray([m.influence_scale for m in mods], dtype=np.float32)
    return Shaping(decay=decay, scale=scale, receiver=receiver)


def draw_noise(seed: int, batch: int, shape: Sequence[int], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T (B, *shape) and per-step noise (N, B, *shape) from one seeded host generator."""
    g = torch.Generator().manual_seed(int(seed))
    x_T = torch.randn((batch, *shape), generator=g, dtype=torch.float32)
    noise = torch.randn((steps, batch, *shape), generator=g, dtype=torch.float32)
    return x_T, noise


@dataclass
class LoopResult:
    z0: torch.Tensor  # (B, C, h, w) final latent
    influence: torch.Tensor | None  # (N, M, B, 1, h, w) weights per step, when asked
    trace: dict[str, torch.Tensor] | None = None  # per-step eps/x, when asked (tests)


def sample(
    runner: Runner,
    names: Sequence[str],
    contexts: Sequence[torch.Tensor],
    x_T: torch.Tensor,
    noise: torch.Tensor,
    table: StepTable,
    shaping: Shaping | None = None,
    return_influence: bool = False,
    trace: bool = False,
    callback: Callable[[int], None] | None = None,
) -> LoopResult:
    """Algorithm 2: at every step each collaborator predicts eps, each diffuser an influence logit
    map; the fused op combines them per pixel and applies the DDIM/DDPM update (schedule.py)."""
    dev = runner.device
    m_count = len(names)
    coeffs = torch.from_numpy(table.coeffs).to(dev)
    decay = torch.from_numpy(shaping.decay).to(dev) if shaping else None
    scale = torch.from_numpy(shaping.scale).to(dev) if shaping else None
    receiver = shaping.receiver if shaping else -1
    ts = torch.from_numpy(table.timesteps).to(dev)
    x = x_T.to(dev)
    noise = noise.to(dev)
    contexts = [c.to(dev) for c in contexts]
    b = x.shape[0]
    influence, records = [], {"eps": [], "x": []}
    for i in range(table.num_steps):
        t = ts[i].expand(b)
        eps = torch.stack([runner.run(f"{n}_unet", {"x": x, "t": t, "context": c})["eps"]
                           for n, c in zip(names, contexts)])  # (M, B, C, h, w)
        if m_count > 1:
            logits = torch.stack([runner.run(f"{n}_diffuser", {"x": x, "t": t, "context": c})["logits"]
                                  for n, c in zip(names, contexts)])  # (M, B, 1, h, w)
        else:
            logits = torch.zeros((1, b, 1, *x.shape[2:]), device=dev, dtype=eps.dtype)
        out = collaborate(eps, logits, x, noise[i], coeffs, i, decay=decay, scale=scale, receiver=receiver,
                          return_weights=return_influence)
        e, x = out[0], out[1]
        if return_influence:
            influence.append(out[2])
        if trace:
            records["eps"].append(e)
            records["x"].append(x)
        if callback is not None:
            callback(i)
    return LoopResult(
        z0=x,
        influence=torch.stack(influence) if return_influence else None,
        trace={k: torch.stack(v) for k, v in records.items()} if trace else None,
    )
