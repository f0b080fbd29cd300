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

from ..models.config import ModelConfig
from ..models.schedule import StepTable, cosine_decay
from .history import History
from .runner import Runner
from .step import CollaborativeStep, Weighting


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


def draw_item_noise(seeds: Sequence[int], shape: Sequence[int], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T (B, *shape) and noise (N, B, *shape) with item i drawn from its own generator(seeds[i]), so an
    item's image does not depend on what it is batched with; one seed gives exactly `draw_noise(seed, 1, ...)`."""
    draws = [draw_noise(s, 1, shape, steps) for s in seeds]
    return torch.cat([d[0] for d in draws]), torch.cat([d[1] for d in draws], dim=1)


@dataclass
class LoopResult:
    z0: torch.Tensor  # (B, C, h, w) final latent
    influence: torch.Tensor | None  # (N, M, B, 1, h, w) weights per step, when asked
    trace: dict[str, torch.Tensor] | None = None  # per-step eps/x, when asked (tests)
    skipped: int = 0  # collaborator (UNet) calls influence gating saved


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
    weighting: Weighting | None = None,
    gate: float = 0.0,
    cache_interval: int = 1,
    influence_interval: int = 1,
) -> LoopResult:
    """Algorithm 2: the collaborative step (step.py) at every timestep of the table, on the host's loop.
    `weighting` replaces the diffusers' weights (the `cdx eval` methods); `gate` > 0 skips a collaborator
    whose weight is below it everywhere (`CollaborativeStep.gated`); `cache_interval` K > 1 runs the
    collaborators' full networks every K steps and their shallow paths in between (feature caching; the
    runner needs the feature-cache networks); `influence_interval` K > 1 runs the dynamic diffusers every K
    steps and reuses their logits in between."""
    dev = runner.device
    coeffs = torch.tensor(table.coeffs).to(dev)
    decay = torch.tensor(shaping.decay).to(dev) if shaping else None
    scale = torch.tensor(shaping.scale).to(dev) if shaping else None
    receiver = shaping.receiver if shaping else -1
    ts = torch.tensor(table.timesteps).to(dev)
    x = x_T.to(dev)
    noise = noise.to(dev)
    step = CollaborativeStep.plain(runner.run, names, [c.to(dev) for c in contexts], x)
    step.cache_interval = cache_interval
    history = History(x) if table.history is not None else None
    h_weights = torch.tensor(table.history).to(dev) if history is not None else None
    b = x.shape[0]
    influence, records = [], {"eps": [], "x": []}
    for i in range(table.num_steps):
        step.refresh = i % cache_interval == 0
        step.influence_refresh = i % influence_interval == 0
        if gate > 0 and weighting is None and len(names) > 1:
            out = step.gated(x, ts[i].expand(b), noise[i], coeffs, i, decay, scale, receiver, gate, return_influence)
        else:
            out = step(x, ts[i].expand(b), noise[i], coeffs, i, decay, scale, receiver, weighting, return_influence)
        e, x_next = out[0], out[1]
        if history is not None:  # a multistep sampler's terms on the predicted x0 of earlier steps
            history.apply(x_next, x, e, coeffs[i], h_weights[i])
        x = x_next
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
        skipped=step.skipped,
    )
