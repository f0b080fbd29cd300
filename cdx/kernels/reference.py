"""Pure-torch reference of the fused collaborate step (also the CPU path).

One call does, at every pixel, what the paper's Algorithm 2 does between the networks:

    w_m    = softmax_m(logits_m)                       (max-subtracted, fp32)
    [optional official shaping, see below]
    eps    = sum_m w_m * eps_m                         (summed in modality order)
    x0     = (x - A * eps) / B
    x_prev = C * x0 + D * eps + E * x + sigma * noise  (A..sigma = coeffs[step], see schedule.py)

Official shaping (on by default for the official presets): with d = decay[step] and f = scale,
every modality m != receiver gets w'_m = d_m * w_m, the receiver takes what is left,
w'_r = 1 - sum_{m != r} w'_m, and finally w''_m = f_m * w'_m / sum_j f_j * w'_j.
For the official pair [mask, text] with d_mask = k(t), f = [2, 1], receiver = text this is
s' = k s, u' = 1 - s', s'' = 2 s' / (u' + 2 s'), u'' = u' / (u' + 2 s').

Memory traffic of this reference, per element of x (fp32 = 4 bytes, M modalities, C channels):
softmax reads M logits and writes M weights (x passes for max, exp, sum, divide: about 6M/C
reads+writes per element of x), shaping adds about 4M/C more, the weighted sum reads M eps and
writes M products plus a running sum (3M), the update reads x, eps, noise and writes x0 and x_prev
with 6 temporaries (about 12). For M = 2, C = 3 that is roughly 28 tensor passes where a fused
kernel needs M + M/C + 2 reads and 2 writes (about 6.7): the reason the fused kernel exists.
"""
from __future__ import annotations

import torch


def combine_weights(
    logits: torch.Tensor,
    decay: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    receiver: int = -1,
) -> torch.Tensor:
    """(M, B, 1, H, W) logits -> (M, B, 1, H, W) fp32 weights; decay (M,) and scale (M,) per step."""
    w = torch.softmax(logits.float(), dim=0)
    if decay is None and scale is None:
        return w
    m_count = w.shape[0]
    r = receiver % m_count
    if decay is not None:
        d = decay.float().to(w.device).view(m_count, 1, 1, 1, 1)
        shaped = [w[m] * d[m] for m in range(m_count)]
        rest = None
        for m in range(m_count):
            if m != r:
                rest = shaped[m] if rest is None else rest + shaped[m]
        shaped[r] = 1 - rest if rest is not None else torch.ones_like(w[r])
        w = torch.stack(shaped)
    if scale is not None:
        f = scale.float().to(w.device).view(m_count, 1, 1, 1, 1)
        fw = f * w
        total = fw[0]
        for m in range(1, m_count):
            total = total + fw[m]
        w = fw / total
    return w


def collaborate_reference(
    eps: torch.Tensor,
    logits: torch.Tensor,
    x: torch.Tensor,
    noise: torch.Tensor,
    coeffs: torch.Tensor,
    step,
    decay: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    receiver: int = -1,
    return_weights: bool = False,
):
    """Combined eps (eps dtype), x_prev (x dtype) and optionally the weights (fp32).

    eps (M,B,C,H,W); logits (M,B,1,H,W); x, noise (B,C,H,W); coeffs (S,6) fp32;
    decay (S,M) fp32 or None; scale (M,) fp32 or None; step an int or a 0-d integer tensor.
    """
    row = coeffs[step].float()
    d = decay[step] if decay is not None else None
    w = combine_weights(logits, d, scale, receiver)
    ew = w * eps.float()  # (M,B,C,H,W): weights broadcast over channels
    e = ew[0]
    for m in range(1, ew.shape[0]):
        e = e + ew[m]
    xf = x.float()
    a, b, c, dd, ee, sigma = (row[i] for i in range(6))
    x0 = (xf - a * e) / b
    x_prev = c * x0 + dd * e + ee * xf + sigma * noise.float()
    out = (e.to(eps.dtype), x_prev.to(x.dtype))
    return out + (w,) if return_weights else out
