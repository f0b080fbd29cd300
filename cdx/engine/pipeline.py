"""From a request (caption, mask, seed, steps) to images, on any runner."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..models.config import ModelConfig
from ..models.masks import label_map_to_ids, load_label_map, one_hot
from ..models.tokenizer import Tokenizer
from ..engine.schedule import alphas_cumprod, check_eta, linear_betas, make_table, resolve_eta
from .runner import Runner
from .sampler import LoopResult, draw_noise, make_shaping, sample


@dataclass
class Request:
    text: str | None = None
    mask: str | None = None  # path to a label-map PNG
    seed: int = 0
    steps: int = 50
    eta: float | None = None  # None: the model's default (ModelConfig.eta)
    batch: int = 1
    sampler: str = "ddim"
    shaping: bool | None = None  # None: the model's default
    save_influence: bool = False
    cuda_graph: bool | None = None  # replay the loop from a CUDA graph; None: on where the runner is on CUDA

    def validate(self, cfg: ModelConfig) -> None:
        if self.text is None and self.mask is None:
            raise InputError("give --text, --mask or both")
        if not 1 <= self.steps <= cfg.timesteps:
            raise InputError(f"--steps must be in 1..{cfg.timesteps}, got {self.steps}")
        if self.batch < 1:
            raise InputError(f"--batch must be >= 1, got {self.batch}")
        check_eta(self.eta)
        names = {m.kind for m in cfg.modalities}
        if self.text is not None and "text" not in names:
            raise InputError("this model has no text modality")
        if self.mask is not None and "mask" not in names:
            raise InputError("this model has no mask modality")


@dataclass
class Result:
    images: np.ndarray  # (B, H, W, 3) uint8
    image_tensor: torch.Tensor  # (B, 3, H, W) float, not clamped
    loop: LoopResult
    modalities: list[str]
    timesteps: np.ndarray
    notes: list[str] = field(default_factory=list)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8 as the official scripts save: (x+1)*127.5, clip, truncate."""
    x = (image.detach().float().cpu().permute(0, 2, 3, 1) + 1.0) * 127.5
    return x.clamp(0, 255).numpy().astype(np.uint8)


_TOKENIZER: Tokenizer | None = None


def tokenize(text: str, batch: int) -> torch.Tensor:
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = Tokenizer()
    ids, truncated = _TOKENIZER.encode([text])
    if truncated[0]:
        warnings.warn("caption longer than 77 tokens: truncated, as the official code does", stacklevel=2)
    return torch.from_numpy(ids).repeat(batch, 1)


def mask_onehot(path: str, batch: int) -> torch.Tensor:
    ids = label_map_to_ids(load_label_map(path))
    return torch.from_numpy(one_hot(ids)).repeat(batch, 1, 1)  # (B, 19, 1024) int64


def encode_conditions(runner: Runner, cfg: ModelConfig, req: Request) -> tuple[list[str], list[torch.Tensor]]:
    """Contexts of the requested modalities, in the model's modality order."""
    names, contexts = [], []
    for m in cfg.modalities:
        if m.kind == "text" and req.text is not None:
            out = runner.run(f"{m.name}_encoder", {"tokens": tokenize(req.text, req.batch)})
        elif m.kind == "mask" and req.mask is not None:
            out = runner.run(f"{m.name}_encoder", {"mask": mask_onehot(req.mask, req.batch)})
        else:
            continue
        names.append(m.name)
        contexts.append(out["context"])
    return names, contexts


def generate(runner: Runner, cfg: ModelConfig, req: Request, callback: Callable[[int], None] | None = None,
             noise: tuple[torch.Tensor, torch.Tensor] | None = None) -> Result:
    """Encode the conditions, run the collaborative loop, decode. `noise` replays given (x_T, noise)."""
    req.validate(cfg)
    names, contexts = encode_conditions(runner, cfg, req)
    acp = alphas_cumprod(linear_betas(cfg.timesteps, cfg.linear_start, cfg.linear_end))
    table = make_table(acp, req.steps, req.sampler, resolve_eta(cfg.eta, req.eta))
    shaping = make_shaping(cfg.with_shaping(req.shaping), names, table, cfg.timesteps)
    shape = (cfg.latent_channels, *cfg.latent_size)
    x_T, steps_noise = noise if noise is not None else draw_noise(req.seed, req.batch, shape, table.num_steps)
    loop_fn = sample
    if req.cuda_graph or (req.cuda_graph is None and torch.device(runner.device).type == "cuda"):
        from .cuda_graph import sample_graphed as loop_fn  # same result; plain loop, with a notice, if it cannot
    loop = loop_fn(runner, names, contexts, x_T, steps_noise, table, shaping, req.save_influence, callback=callback)
    image = runner.run("vae_decoder", {"latent": loop.z0})["image"]
    return Result(images=to_uint8(image), image_tensor=image, loop=loop, modalities=names,
                  timesteps=table.timesteps)


def influence_grid(influence: torch.Tensor, names: Sequence[str], timesteps: np.ndarray, max_cols: int = 10,
                   cell: int = 64) -> np.ndarray:
    """(N, M, B, 1, h, w) weights of item 0 -> uint8 grid image: one row per modality, columns over steps."""
    from PIL import Image

    n_steps = influence.shape[0]
    cols = np.unique(np.linspace(0, n_steps - 1, min(max_cols, n_steps)).round().astype(int))
    rows = []
    for j in range(len(names)):
        tiles = []
        for i in cols:
            w = influence[i, j, 0, 0].float().cpu().numpy()
            tile = Image.fromarray((w.clip(0, 1) * 255).astype(np.uint8)).resize((cell, cell), Image.NEAREST)
            tiles.append(np.asarray(tile))
            tiles.append(np.full((cell, 2), 128, np.uint8))
        rows.append(np.concatenate(tiles, axis=1))
        rows.append(np.full((2, rows[-1].shape[1]), 128, np.uint8))
    return np.concatenate(rows, axis=0)
