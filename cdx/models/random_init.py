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


@torch.no_grad()
def random_model(cfg: ModelConfig, seed: int = 0, device: str | torch.device | None = None) -> CollaborativeModel:
    """The model with `randomize`'s weights; on a device other than the CPU it is allocated and drawn there
    (built on the meta device first: no default init, no host copy of official-512's weights)."""
    if device is None or torch.device(device).type == "cpu":
        return randomize(CollaborativeModel(cfg), seed).eval()
    with torch.device("meta"):
        model = CollaborativeModel(cfg)
    left = [name for name, _ in model.named_buffers()]
    if left:  # to_empty would leave them uninitialised
        raise RuntimeError(f"buffers {left[:3]} would be left uninitialised by the meta-device build")
    return randomize(model.to_empty(device=device), seed).eval()
