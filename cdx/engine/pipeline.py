"""From a validated request (request.py) to images, on any runner: encode, the collaborative loop, decode."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..models.config import ModelConfig
from .request import Request, make_request
from .runner import Runner
from .sampler import LoopResult, draw_item_noise, make_shaping, sample


@dataclass
class Result:
    images: np.ndarray  # (B, H, W, 3) uint8
    image_tensor: torch.Tensor  # (B, 3, H, W) float, not clamped
    loop: LoopResult
    modalities: list[str]
    timesteps: np.ndarray
    seeds: tuple[int, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)  # encode / loop / decode ms
    intermediates: np.ndarray | None = None  # (N, B, H, W, 3) uint8: the decoded predicted x0 of each step


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 as the official scripts save: (x+1)*127.5, clip, truncate."""
    x = (image.detach().float().cpu().permute(0, 2, 3, 1) + 1.0) * 127.5
    return x.clamp(0, 255).numpy().astype(np.uint8)


def encode_conditions(runner: Runner, req: Request) -> tuple[list[str], list[torch.Tensor]]:
    """The contexts (B, L, D) of the request's modalities, in the model's modality order."""
    names, contexts = [], []
    for name, inputs in req.inputs.items():
        spec = runner.specs[f"{name}_encoder"]
        names.append(name)
        contexts.append(runner.run(spec.name, {spec.inputs[0].name: inputs})["context"])
    return names, contexts


def _sync(runner: Runner) -> None:
    if torch.device(runner.device).type == "cuda":
        torch.cuda.synchronize(runner.device)


def generate(runner: Runner, req: Request, callback: Callable[[int], None] | None = None,
             noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> Result:
    """Encode the conditions, run the collaborative loop, decode. `noise` replays given (x_T, noise)."""
    cfg: ModelConfig = runner.cfg
    clock = [time.perf_counter()]

    def lap() -> float:
        _sync(runner)
        clock.append(time.perf_counter())
        return (clock[-1] - clock[-2]) * 1000

    names, contexts = encode_conditions(runner, req)
    encode_ms = lap()
    table = cfg.step_table(req.steps, req.sampler, req.eta)
    shaping = make_shaping(cfg.with_shaping(req.shaping), names, table, cfg.timesteps)
    shape = (cfg.latent_channels, *cfg.latent_size)
    x_T, steps_noise = noise if noise is not None else draw_item_noise(req.seeds, shape, table.num_steps)
    if req.cuda_graph or (req.cuda_graph is None and torch.device(runner.device).type == "cuda"):
        from .cuda_graph import sample_graphed  # same result; the plain loop, with a notice, if it cannot

        loop = sample_graphed(runner, names, contexts, x_T, steps_noise, table, shaping, req.return_influence,
                              req.return_intermediates, callback=callback, streams=getattr(runner, "streams", 1))
    else:
        loop = sample(runner, names, contexts, x_T, steps_noise, table, shaping, req.return_influence,
                      req.return_intermediates, callback=callback)
    loop_ms = lap()
    image = runner.run("vae_decoder", {"latent": loop.z0})["image"]
    images = to_uint8(image)
    x0 = predicted_x0(runner, table, x_T, loop.trace) if req.return_intermediates else None
    decode_ms = lap()
    return Result(images=images, image_tensor=image, loop=loop, modalities=names, timesteps=table.timesteps,
                  seeds=req.seeds, timings={"encode_ms": encode_ms, "loop_ms": loop_ms, "decode_ms": decode_ms},
                  intermediates=x0)


def predicted_x0(runner: Runner, table, x_T: torch.Tensor, trace: dict) -> np.ndarray:
    """(N, B, H, W, 3) uint8: each step's prediction of the clean image, pred_x0 = (x_t - A eps) / B
    (schedule.py's update), decoded one step's batch at a time."""
    eps, after = trace["eps"].float(), trace["x"].float()  # (N, B, C, h, w): the mixed eps, x after each step
    x_t = torch.cat([x_T.to(after.device, after.dtype)[None], after[:-1]])  # x before each step
    coeffs = torch.from_numpy(table.coeffs).to(after.device)
    a, b = coeffs[:, 0].view(-1, 1, 1, 1, 1), coeffs[:, 1].view(-1, 1, 1, 1, 1)
    x0 = (x_t - a * eps) / b
    return np.stack([to_uint8(runner.run("vae_decoder", {"latent": z})["image"]) for z in x0])


def num_steps(cfg: ModelConfig, req: Request) -> int:
    """How many steps the loop of `req` runs (from the real table: DDIM may give one more than asked)."""
    return cfg.step_table(req.steps, req.sampler, req.eta).num_steps


__all__ = ["Request", "Result", "encode_conditions", "generate", "make_request", "num_steps", "to_uint8"]
