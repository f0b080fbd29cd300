"""FreeU (Si et al., "FreeU: Free Lunch in Diffusion U-Net", 2023) on the collaborators' decoders.

As in the official Collaborative Diffusion generation scripts (`freeu/`): before an output block
concatenates the backbone features h with the skip features, the first half of h's channels is scaled
by b (backbone scaling) and the skip's low frequencies by s (skip scaling, the Fourier filter below).
Stage 1 (b1, s1) is where h has ``model_channels * channel_mult[-2]`` channels, stage 2 (b2, s2) where it
has ``model_channels * channel_mult[-3]``: for the official 256 UNet (192 x (1, 2, 3, 5)) these are the
576 and 384 channels the official code tests for. The official defaults are b1 1.1, b2 1.2, s1 1, s2 1.

It is applied with forward pre-hooks on the UNet's output blocks (the UNet is not edited), so it holds in
torch, in ONNX exports (the filter is two real matrix products with precomputed DFT matrices, which
ONNX and TensorRT run; torch.fft does not export) and in CUDA graphs.
"""
from __future__ import annotations

import functools
import math
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .unet import UNet

__all__ = ["FreeU", "apply_freeu", "remove_freeu", "parse_freeu", "fourier_filter", "fourier_filter_fft",
           "freeu_stages"]


# Each factor lies in [0, FREEU_MAX]: the FreeU paper's settings are b in [1, 1.6] and s in [0.2, 1] (the official
# Collaborative Diffusion scripts: 1.1, 1.2, 1, 1); far larger factors only overflow the decoder (a black image).
FREEU_MAX = 2.0


@dataclass(frozen=True)
class FreeU:
    """Backbone factors b1, b2 and skip factors s1, s2 of decoder stages 1 and 2, each in [0, FREEU_MAX]."""

    b1: float = 1.1
    b2: float = 1.2
    s1: float = 1.0
    s2: float = 1.0
    threshold: int = 1  # half-width of the low-frequency square the skip factor scales

    def __post_init__(self):
        for name in ("b1", "b2", "s1", "s2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not 0 <= v <= FREEU_MAX:
                raise InputError(f"FreeU {name} = {v!r}: must be a number in [0, {FREEU_MAX:g}] (the FreeU paper uses "
                                 "b 1 to 1.6, s 0.2 to 1; official: 1.1,1.2,1,1)")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int) or self.threshold < 1:
            raise InputError(f"FreeU threshold = {self.threshold!r}: must be an integer >= 1")


def parse_freeu(text: str) -> FreeU:
    """``"b1,b2,s1,s2"`` (the CLI's ``--freeu``), e.g. ``"1.1,1.2,1,1"``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InputError(f"--freeu {text!r}: give four numbers b1,b2,s1,s2 (the official defaults: 1.1,1.2,1,1)")
    try:
        return FreeU(*values)
    except InputError as e:
        raise InputError(f"--freeu {text}: {e}") from None


# ---------------------------------------------------------------- the Fourier filter

def _low_set(n: int, threshold: int) -> list[int]:
    """Frequency indices (unshifted) the official mask scales: shifted positions [n//2 - t, n//2 + t),
    taken with Python's slice rules as the official code takes them."""
    positions = list(range(n))[n // 2 - threshold: n // 2 + threshold]
    return sorted({(p - n // 2) % n for p in positions})  # fftshift puts frequency 0 at position n // 2


@functools.lru_cache(maxsize=64)
def _dft_lowpass(n: int, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Real and imaginary parts of A = F^-1 P F along one axis (n x n), P the low-frequency indicator:
    A[j, k] = (1/n) sum_{u in low} exp(2 pi i u (j - k) / n)."""
    u = np.asarray(_low_set(n, threshold), dtype=np.float64)
    d = np.arange(n, dtype=np.float64)[:, None] - np.arange(n, dtype=np.float64)[None, :]  # (n, n): j - k
    phase = 2 * np.pi * u[:, None, None] * d[None] / n  # (U, n, n)
    return np.cos(phase).sum(0) / n, np.sin(phase).sum(0) / n


@functools.lru_cache(maxsize=64)
def _dft_tensors(n: int, threshold: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """_dft_lowpass as float32 tensors on `device`, made once: no host copy inside a captured CUDA graph."""
    return tuple(torch.as_tensor(a, dtype=torch.float32, device=device) for a in _dft_lowpass(n, threshold))


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Re(IFFT2(M * FFT2(x))) over the last two axes, M = scale on the low frequencies, 1 elsewhere.

    The 2-D mask is separable (low rows x low columns), so the low part is A_h x A_w^T with complex
    A = C + iS per axis, whose real part for real x is C_h x C_w^T - S_h x S_w^T: four matrix products
    with constants instead of an FFT (torch.fft has no ONNX export)."""
    if scale == 1.0:
        return x
    h, w = x.shape[-2:]
    ch, sh = _dft_tensors(int(h), threshold, x.device)
    cw, sw = _dft_tensors(int(w), threshold, x.device)
    xf = x.float()
    low = ch @ xf @ cw.T - sh @ xf @ sw.T  # (h, h) @ (..., h, w) @ (w, w) -> (..., h, w)
    return (xf + (scale - 1.0) * low).to(x.dtype)


def fourier_filter_fft(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """The reference: the official steps with torch.fft (FFT, fftshift, scale a centred square, back)."""
    f = torch.fft.fftshift(torch.fft.fftn(x.double(), dim=(-2, -1)), dim=(-2, -1))
    h, w = x.shape[-2:]
    mask = torch.ones(h, w, dtype=torch.float64, device=x.device)
    mask[h // 2 - threshold: h // 2 + threshold, w // 2 - threshold: w // 2 + threshold] = scale
    out = torch.fft.ifftn(torch.fft.ifftshift(f * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return out.to(x.dtype)


# ---------------------------------------------------------------- hooks on the output blocks

def _out_channels(block: nn.Module) -> int:
    """Channels a block outputs: every UNet block ends in a convolution (ResBlock, transformer, resampler)."""
    return [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def freeu_stages(unet: UNet) -> dict[int, tuple[str, str]]:
    """Backbone channel count -> (b, s) field names: stage 1 first; a count met twice keeps stage 1."""
    mc, mult = unet.cfg.model_channels, unet.cfg.channel_mult
    stages: dict[int, tuple[str, str]] = {}
    for level, names in ((-2, ("b1", "s1")), (-3, ("b2", "s2"))):
        if len(mult) >= -level:
            stages.setdefault(mc * mult[level], names)
    return stages


class _Hook:
    """Pre-hook of one output block: its input is cat([h, skip]) with h of `h_channels` channels."""

    def __init__(self, h_channels: int, b: float, s: float, threshold: int):
        self.h_channels, self.b, self.s, self.threshold = h_channels, b, s, threshold

    def __call__(self, module, args):
        x, *rest = args
        hc, half = self.h_channels, self.h_channels // 2
        h, skip = x[:, :hc], x[:, hc:]
        h = torch.cat([h[:, :half] * self.b, h[:, half:]], dim=1)  # backbone scaling on half the channels
        skip = fourier_filter(skip, self.threshold, self.s)  # skip scaling of the low frequencies
        return (torch.cat([h, skip], dim=1), *rest)


_HANDLES: "weakref.WeakKeyDictionary[UNet, list]" = weakref.WeakKeyDictionary()


def _unets(model: nn.Module) -> list[UNet]:
    if isinstance(model, UNet):
        return [model]
    unets = getattr(model, "unets", None)  # a CollaborativeModel: the collaborators, not the diffusers
    if unets is None:
        raise TypeError(f"apply_freeu needs a UNet or a CollaborativeModel, got {type(model).__name__}")
    return list(unets.values())


def remove_freeu(model: nn.Module) -> None:
    """Take FreeU off again (a no-op where it is not on)."""
    for unet in _unets(model):
        for handle in _HANDLES.pop(unet, []):
            handle.remove()


def apply_freeu(model: nn.Module, b1: float = 1.1, b2: float = 1.2, s1: float = 1.0, s2: float = 1.0,
                threshold: int = 1) -> FreeU:
    """Switch FreeU on for a UNet or every collaborator UNet of a CollaborativeModel (replacing earlier
    settings); returns the checked settings. Undo with remove_freeu(model)."""
    cfg = FreeU(b1, b2, s1, s2, threshold)
    remove_freeu(model)
    for unet in _unets(model):
        stages = freeu_stages(unet)
        prev = _out_channels(unet.middle_block)
        handles = []
        for block in unet.output_blocks:
            if prev in stages:
                b, s = (getattr(cfg, name) for name in stages[prev])
                if b != 1.0 or s != 1.0:  # factors of 1 change nothing: no hook
                    handles.append(block.register_forward_pre_hook(_Hook(prev, b, s, threshold)))
            prev = _out_channels(block)
        _HANDLES[unet] = handles
    return cfg
