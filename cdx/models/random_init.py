"""Random weights for benchmarks and tests (the official init zeroes the output layers, which would
make every UNet output exactly 0 and hide errors)."""
from __future__ import annotations

import torch
from torch import nn

from .collab import CollaborativeModel
from .config import ModelConfig


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Matrices ~ N(0, 1/fan_in); norm weights 1 + 0.1 N, norm biases 0.05 N; other vectors 0.05 N."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)  # drawn where the weights live (fast on a GPU)
    for module in model.modules():
        is_norm = isinstance(module, (nn.GroupNorm, nn.LayerNorm))
        for name, p in module.named_parameters(recurse=False):
            noise = torch.randn(p.shape, generator=g, device=device, dtype=p.dtype)
            if p.dim() >= 2:
                p.copy_(noise / (p[0].numel() ** 0.5))
            elif is_norm and name == "weight":
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.05 * noise)
    return model


def random_model(cfg: ModelConfig, seed: int = 0) -> CollaborativeModel:
    return randomize(CollaborativeModel(cfg), seed).eval()
