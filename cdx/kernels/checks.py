"""Argument checks shared by every collaborate backend, so that all of them refuse the same inputs.

Each backend calls `check_collaborate` first; it raises `CollaborateInputError` (a ValueError) with a
one-line message, and returns the sizes and the normalised step/receiver the launchers need.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import NoReturn

import torch

from ..errors import CdxError, InputError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
STEP_DTYPES = (torch.int32, torch.int64)


class CollaborateInputError(InputError, ValueError):
    """Inputs of the collaborate op that no backend accepts (shape, dtype, device, layout)."""


class KernelUnavailableError(CdxError, RuntimeError):
    """A forced kernel (CDX_KERNEL or an explicit call) that cannot run here."""


class KernelBuildError(KernelUnavailableError):
    """A kernel that could not be compiled or loaded for this device (nothing was launched)."""


@dataclass(frozen=True)
class CollabShape:
    """Sizes and normalised scalars of one collaborate call."""

    m: int  # modalities
    b: int
    c: int
    h: int
    w: int
    num_steps: int  # rows of the coefficient table
    step: int | None  # python step in 0..S-1, or None when it lives on the device
    step_tensor: torch.Tensor | None  # 0-d int32/int64 on the inputs' device (negative allowed)
    receiver: int  # in 0..M-1

    @property
    def pixels(self) -> int:
        return self.b * self.h * self.w


def _fail(msg: str) -> NoReturn:
    raise CollaborateInputError(msg)


def _check_float(name: str, t, dtypes=FLOAT_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        names = "/".join(str(d).replace("torch.", "") for d in dtypes)
        _fail(f"{name} must be {names}, got {str(t.dtype).replace('torch.', '')}")


def _check_layout(name: str, t: torch.Tensor) -> None:
    if not t.is_contiguous():
        hint = " (channels-last is not supported)" if t.dim() >= 4 and (
            t.is_contiguous(memory_format=torch.channels_last) if t.dim() == 4
            else t.is_contiguous(memory_format=torch.channels_last_3d)) else ""
        _fail(f"{name} must be contiguous{hint}; call .contiguous() first")


def check_collaborate(eps, logits, x, noise, coeffs, step, decay=None, scale=None, receiver=-1,
                      return_weights=False, out=None) -> CollabShape:
    """Validate one collaborate call (see cdx.kernels.reference for the semantics)."""
    for name, t in (("eps", eps), ("logits", logits), ("x", x), ("noise", noise)):
        _check_float(name, t)
    _check_float("coeffs", coeffs, (torch.float32,))
    if eps.dim() != 5:
        _fail(f"eps must be (M, B, C, H, W), got shape {tuple(eps.shape)}")
    m, b, c, h, w = eps.shape
    if m < 1:
        _fail("eps must hold at least one modality (M >= 1)")
    if tuple(logits.shape) != (m, b, 1, h, w):
        _fail(f"logits must be (M, B, 1, H, W) = {(m, b, 1, h, w)}, got {tuple(logits.shape)}")
    for name, t in (("x", x), ("noise", noise)):
        if tuple(t.shape) != (b, c, h, w):
            _fail(f"{name} must be (B, C, H, W) = {(b, c, h, w)}, got {tuple(t.shape)}")
    if coeffs.dim() != 2 or coeffs.shape[1] != 6 or coeffs.shape[0] < 1:
        _fail(f"coeffs must be (S, 6) with S >= 1, got {tuple(coeffs.shape)}")
    num_steps = int(coeffs.shape[0])
    if decay is not None:
        _check_float("decay", decay, (torch.float32,))
        if tuple(decay.shape) != (num_steps, m):
            _fail(f"decay must be (S, M) = {(num_steps, m)}, got {tuple(decay.shape)}")
    if scale is not None:
        _check_float("scale", scale, (torch.float32,))
        if tuple(scale.shape) != (m,):
            _fail(f"scale must be (M,) = {(m,)}, got {tuple(scale.shape)}")
    dev = eps.device
    named = [("eps", eps), ("logits", logits), ("x", x), ("noise", noise), ("coeffs", coeffs),
             ("decay", decay), ("scale", scale)]
    for name, t in named:
        if t is not None and t.device != dev:
            _fail(f"{name} is on {t.device} but eps is on {dev}: all inputs must share one device")
        if t is not None:
            _check_layout(name, t)

    step_int, step_tensor = None, None
    if isinstance(step, torch.Tensor):
        if step.dim() != 0 or step.dtype not in STEP_DTYPES:
            _fail(f"step tensor must be 0-d int32/int64, got shape {tuple(step.shape)} {step.dtype}")
        if step.device != dev:
            _fail(f"step tensor is on {step.device} but eps is on {dev}")
        step_tensor = step
    else:
        if isinstance(step, bool):
            _fail("step must be an int or a 0-d integer tensor, got a bool")
        try:
            s = operator.index(step)
        except TypeError:
            _fail(f"step must be an int or a 0-d integer tensor, got {type(step).__name__}")
        if not -num_steps <= s < num_steps:
            _fail(f"step {s} is out of range for a table of {num_steps} steps")
        step_int = s % num_steps
    if isinstance(receiver, bool):
        _fail("receiver must be an int")
    try:
        r = operator.index(receiver) % m
    except TypeError:
        _fail(f"receiver must be an int, got {type(receiver).__name__}")

    if out is not None:
        want = [("eps_out", (b, c, h, w), eps.dtype), ("x_out", (b, c, h, w), x.dtype)]
        if return_weights:
            want.append(("w_out", (m, b, 1, h, w), torch.float32))
        if not isinstance(out, (tuple, list)) or len(out) != len(want):
            _fail(f"out must be a tuple of {len(want)} tensors ({', '.join(n for n, _, _ in want)})")
        for (name, shape, dtype), t in zip(want, out):
            if not isinstance(t, torch.Tensor):
                _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape or t.dtype != dtype:
                _fail(f"{name} must be {shape} {dtype}, got {tuple(t.shape)} {t.dtype}")
            if t.device != dev:
                _fail(f"{name} is on {t.device} but eps is on {dev}")
            _check_layout(name, t)
    return CollabShape(m, b, c, h, w, num_steps, step_int, step_tensor, r)


def make_outputs(eps: torch.Tensor, x: torch.Tensor, return_weights: bool, out=None):
    """The output buffers: the caller's `out` or fresh (eps_out, x_out, w_out or None)."""
    if out is not None:
        return out[0], out[1], (out[2] if return_weights else None)
    m, b, c, h, w = eps.shape
    eps_out = torch.empty((b, c, h, w), dtype=eps.dtype, device=eps.device)
    x_out = torch.empty((b, c, h, w), dtype=x.dtype, device=x.device)
    w_out = torch.empty((m, b, 1, h, w), dtype=torch.float32, device=eps.device) if return_weights else None
    return eps_out, x_out, w_out
