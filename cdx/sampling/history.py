"""The multistep samplers' memory: the predicted x0 of the two previous steps, and the terms of the update
that use them (`StepTable.history`). The fused kernel mixes the eps and makes the first-order part of the
update; these terms are added after it, in a few elementwise passes over one latent (B x C x h x w): nothing
beside the 2M network calls of a step (measured in docs/fast-sampling.md), and the kernel stays the one
every sampler shares. All on the device, with the step's rows as device tensors: graph-capturable."""
from __future__ import annotations

import torch


class History:
    """x0 of steps i-1 and i-2 (2, B, C, h, w), fp32; zeros before the first step (its weights are 0)."""

    def __init__(self, x: torch.Tensor):
        self.x0 = torch.zeros((2, *x.shape), dtype=torch.float32, device=x.device)

    def apply(self, x_next: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, row: torch.Tensor,
              weights: torch.Tensor) -> None:
        """x_next += H1 x0_{i-1} + H2 x0_{i-2} in place, then x0_i = (x - A eps) / B joins the history.
        x is the state before the step, eps its mixed eps, row the step's coeffs (6,), weights (H1, H2)."""
        x0 = (x.float() - row[0] * eps.float()) / row[1]
        x_next.add_((weights[0] * self.x0[0] + weights[1] * self.x0[1]).to(x_next.dtype))
        self.x0[1].copy_(self.x0[0])
        self.x0[0].copy_(x0)
