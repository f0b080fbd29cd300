"""The generation recipe, written once: `prepare` (the contexts, the step table, the shaping, the noise),
`loop` (the collaborative loop, plain or graph-captured), `decode` (the VAE). `generate` runs the three
for a validated request (request.py); the API, editing, evaluation, the benchmarks and the GPU variants
call these same functions.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import CdxError
from ..models.config import ModelConfig
from ..models.schedule import StepTable
from .loop import LoopResult, Shaping, draw_item_noise, make_shaping, sample
from .request import Request
from .runner import Runner
from .step import Weighting


@dataclass
class LoopInputs:
    """Everything the loop reads, made before it starts."""

    names: list[str]  # the modalities, in the model's order
    contexts: list[torch.Tensor]  # their encoded conditions (B, L, D)
    table: StepTable
    shaping: Shaping | None
    x_T: torch.Tensor  # (B, C, h, w)
    noise: torch.Tensor  # (N, B, C, h, w)

    def args(self) -> tuple:
        """(names, contexts, x_T, noise, table, shaping): the loop functions' leading arguments."""
        return self.names, self.contexts, self.x_T, self.noise, self.table, self.shaping


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


def loop_inputs(cfg: ModelConfig | None, table: StepTable, names: Sequence[str], contexts: Sequence[torch.Tensor],
                noise: tuple[torch.Tensor, torch.Tensor]) -> LoopInputs:
    """The loop's inputs from given contexts and noise (x_T, noise), with the shaping of `cfg` for `names`
    (None: none)."""
    shaping = make_shaping(cfg, names, table, cfg.timesteps) if cfg is not None else None
    return LoopInputs(list(names), list(contexts), table, shaping, noise[0], noise[1])


def item_noise(cfg: ModelConfig, seeds: Sequence[int], table: StepTable) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T and the per-step noise of a batch, item i from its own generator(seeds[i])."""
    return draw_item_noise(seeds, (cfg.latent_channels, *cfg.latent_size), table.num_steps)


def prepare(runner: Runner, req: Request, noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> LoopInputs:
    """Encode the request's conditions and make its loop's inputs (`noise` replays given (x_T, noise))."""
    cfg: ModelConfig = req.sampling.config(runner.cfg)
    names, contexts = encode_conditions(runner, req)
    return loop_inputs(cfg, req.table, names, contexts, noise or item_noise(cfg, req.seeds, req.table))


def loop(runner: Runner, li: LoopInputs, return_influence: bool = False, trace: bool = False,
         callback: Callable[[int], None] | None = None, weighting: Weighting | None = None,
         cuda_graph: bool | None = None, gate: float = 0.0, cache_interval: int = 1,
         influence_interval: int = 1) -> LoopResult:
    """The collaborative loop over `li`: captured as a CUDA graph where asked (None: on a CUDA runner without
    a weighting, gating or feature caching, whose decisions are the host's; the plain loop, with a notice,
    where it cannot be), else the plain loop. Influence reuse is captured (its schedule is fixed)."""
    host_decides = weighting is not None or gate > 0 or cache_interval > 1
    if not host_decides and (cuda_graph or (cuda_graph is None and torch.device(runner.device).type == "cuda")):
        from .graph.capture import sample_graphed

        return sample_graphed(runner, *li.args(), return_influence, trace, callback=callback,
                              streams=getattr(runner, "streams", 1), influence_interval=influence_interval)
    return sample(runner, *li.args(), return_influence, trace, callback=callback, weighting=weighting, gate=gate,
                  cache_interval=cache_interval, influence_interval=influence_interval)


def decode(runner: Runner, z0: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
    """The VAE decoder's image (B, 3, H, W) of the final latents, and its uint8 pixels (B, H, W, 3). A latent
    that is not finite (NaN or inf: extreme settings, damaged weights) is an error, never an image."""
    if not bool(torch.isfinite(z0).all()):
        raise CdxError("the sampled latent is not finite (NaN or inf), so there is no image; check the model's "
                       "files and the settings (guidance, FreeU)")
    image = runner.run("vae_decoder", {"latent": z0})["image"]
    return image, to_uint8(image)


def _sync(runner: Runner) -> None:
    if torch.device(runner.device).type == "cuda":
        torch.cuda.synchronize(runner.device)


def generate(runner: Runner, req: Request, callback: Callable[[int], None] | None = None,
             noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> Result:
    """prepare -> loop -> decode for one request, timed. `noise` replays given (x_T, noise)."""
    clock = [time.perf_counter()]

    def lap() -> float:
        _sync(runner)
        clock.append(time.perf_counter())
        return (clock[-1] - clock[-2]) * 1000

    li = prepare(runner, req, noise)
    encode_ms = lap()
    res = loop(runner, li, req.return_influence, req.return_intermediates, callback, cuda_graph=req.cuda_graph,
               **req.sampling.loop_options())
    loop_ms = lap()
    image, images = decode(runner, res.z0)
    x0 = predicted_x0(runner, li.table, li.x_T, res.trace) if req.return_intermediates else None
    decode_ms = lap()
    return Result(images=images, image_tensor=image, loop=res, modalities=li.names, timesteps=li.table.timesteps,
                  seeds=req.seeds, timings={"encode_ms": encode_ms, "loop_ms": loop_ms, "decode_ms": decode_ms},
                  intermediates=x0)


def predicted_x0(runner: Runner, table: StepTable, x_T: torch.Tensor, trace: dict) -> np.ndarray:
    """(N, B, H, W, 3) uint8: each step's prediction of the clean image, pred_x0 = (x_t - A eps) / B
    (schedule.py's update), decoded one step's batch at a time."""
    eps, after = trace["eps"].float(), trace["x"].float()  # (N, B, C, h, w): the mixed eps, x after each step
    x_t = torch.cat([x_T.to(after.device, after.dtype)[None], after[:-1]])  # x before each step
    coeffs = torch.from_numpy(table.coeffs).to(after.device)
    a, b = coeffs[:, 0].view(-1, 1, 1, 1, 1), coeffs[:, 1].view(-1, 1, 1, 1, 1)
    x0 = (x_t - a * eps) / b
    return np.stack([decode(runner, z)[1] for z in x0])
