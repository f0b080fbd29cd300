"""Classifier-free guidance baked into a collaborator (Ho & Salimans 2022).

A collaborator trained with condition dropout (``cdx train collaborator --cond-drop``) also predicts the
unconditional eps for the null condition (the empty caption, or an all-zero mask one-hot). With guidance
scale ``s`` its prediction becomes

    eps = eps(x, t, null) + s * (eps(x, t, c) - eps(x, t, null))

``GuidedUNet`` computes that in one batched call of the UNet ([c; null] stacked on the batch axis) and keeps
the UNet's interface ``(x, t, context) -> eps``: the sampling loop, the fused kernel, the ONNX export, the
TensorRT engines and the CUDA graphs all see an ordinary collaborator. The null context is the encoder's
output for the null condition, computed once and stored as a constant. ``s = 1`` is the plain collaborator
(the official presets); the dynamic diffusers are trained and run on the unguided networks' inputs as always.
"""
from __future__ import annotations

import torch
from torch import nn

from .modalities import kind_of


def null_condition(m, batch: int = 1) -> torch.Tensor:
    """The encoder input condition dropout trains on for modality `m` (its kind's null: the empty caption's
    token ids, an all-zero mask one-hot, ...), repeated `batch` times."""
    return kind_of(m.kind).null_batch(m, batch)


class GuidedUNet(nn.Module):
    """``unet`` with classifier-free guidance of scale ``scale`` around the context ``null`` (1, L, D)."""

    def __init__(self, unet: nn.Module, null: torch.Tensor, scale: float):
        super().__init__()
        self.unet = unet
        self.scale = float(scale)
        self.register_buffer("null", null.detach().clone(), persistent=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        null = self.null.to(context.dtype).expand(context.shape[0], -1, -1)
        eps = self.unet(torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, null]))
        cond, uncond = eps.chunk(2)
        return uncond + self.scale * (cond - uncond)


@torch.no_grad()
def guided(unet: nn.Module, encoder: nn.Module, m, scale: float) -> GuidedUNet:
    """Wrap ``unet``; the null context comes from ``encoder`` (on the UNet's device)."""
    device = next(unet.parameters()).device
    null = encoder.to(device)(null_condition(m).to(device)).float()
    return GuidedUNet(unet, null, scale).to(device)
