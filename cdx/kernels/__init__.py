"""The fused collaborate step (combine M eps by per-pixel softmax influence, then one sampler update)
and its dispatcher over three implementations of the same maths (`reference.py`):

    torch   the pure-torch reference: any device, the CPU path
    triton  `triton_collaborate.py`: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1
    cuda    `cuda_collaborate.py`: CUDA C compiled at run time by NVRTC (cuda-python)

Auto choice: CPU tensors -> torch; CUDA tensors -> cuda, else triton, else torch.
CDX_KERNEL=torch|triton|cuda forces one and fails loudly where it cannot run. Without it, a kernel
that cannot be built for the device (KernelBuildError: nothing was launched) is skipped with a warning.
Every kernel refuses the same malformed inputs with `CollaborateInputError` (a ValueError).
"""
from __future__ import annotations

import os
import warnings

import torch

from .checks import CollaborateInputError, KernelBuildError, KernelUnavailableError, check_collaborate, make_outputs
from .reference import collaborate_reference, combine_weights

KERNELS = ("torch", "triton", "cuda")
_BROKEN: set[tuple[str, str]] = set()  # (kernel, device) that failed to build: auto choice skips them

__all__ = [
    "KERNELS", "CollaborateInputError", "KernelBuildError", "KernelUnavailableError", "available_kernels",
    "collaborate", "collaborate_reference", "collaborate_torch", "combine_weights", "select_kernel",
]


def _device_type(device) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _why_unavailable(name: str, dev_type: str) -> str | None:
    """None when kernel `name` can run on `dev_type` tensors here, else the reason."""
    if name == "torch":
        return None
    if name == "triton":
        from .triton_collaborate import interpret_mode, triton_available

        if not triton_available():
            return "triton is not installed (pip install triton)"
        if dev_type == "cuda":
            return None
        if dev_type == "cpu":
            return None if interpret_mode() else "triton runs on CPU tensors only with TRITON_INTERPRET=1"
        return f"triton does not run on {dev_type} tensors"
    if name == "cuda":
        from .cuda_collaborate import cuda_python_available

        if dev_type != "cuda" or not torch.cuda.is_available():
            return f"the cuda kernel needs CUDA tensors and a GPU (got {dev_type})"
        if not cuda_python_available():
            return "cuda-python with NVRTC is not installed (pip install cuda-python)"
        return None
    return f"unknown kernel {name!r} (expected one of {', '.join(KERNELS)})"


def available_kernels(device=None) -> list[str]:
    """Kernels that can run on `device` tensors here (default: cuda when there is a GPU, else cpu)."""
    dev_type = _device_type(device)
    return [k for k in KERNELS if _why_unavailable(k, dev_type) is None]


def select_kernel(device=None) -> str:
    """The kernel `collaborate` uses for tensors on `device`: CDX_KERNEL if set, else the fastest."""
    dev_type = _device_type(device)
    forced = os.environ.get("CDX_KERNEL", "").strip().lower()
    if forced:
        if forced not in KERNELS:
            raise KernelUnavailableError(f"CDX_KERNEL={forced!r}: expected one of {', '.join(KERNELS)}")
        why = _why_unavailable(forced, dev_type)
        if why is not None:
            raise KernelUnavailableError(f"CDX_KERNEL={forced}: {why}")
        return forced
    if dev_type != "cuda":
        return "torch"
    for name in ("cuda", "triton"):
        if (name, str(device)) not in _BROKEN and _why_unavailable(name, dev_type) is None:
            return name
    return "torch"


def collaborate_torch(eps, logits, x, noise, coeffs, step, decay=None, scale=None, receiver=-1,
                      return_weights=False, out=None):
    """The reference with the kernels' checks and `out=` buffers."""
    check_collaborate(eps, logits, x, noise, coeffs, step, decay, scale, receiver, return_weights, out)
    res = collaborate_reference(eps, logits, x, noise, coeffs, step, decay, scale, receiver, return_weights)
    if out is None:
        return res
    for buf, val in zip(make_outputs(eps, x, return_weights, out), res):
        buf.copy_(val)
    return tuple(out)


def collaborate(eps, logits, x, noise, coeffs, step, decay=None, scale=None, receiver=-1,
                return_weights=False, out=None):
    """Combined eps (eps dtype), x_prev (x dtype) [, weights (M,B,1,H,W) fp32] for one sampler step.

    eps (M,B,C,H,W) and logits (M,B,1,H,W) fp16/bf16/fp32; x, noise (B,C,H,W); coeffs (S,6) fp32
    (schedule.py); step an int or a 0-d int32/int64 tensor on the inputs' device (read on the
    device, so a CUDA graph can replay it); decay (S,M), scale (M,) fp32 and receiver: the official
    shaping (reference.py). out=(eps_out, x_out[, w_out]) writes into preallocated buffers; x_out may
    be x itself. All tensors contiguous and on one device, else CollaborateInputError (a ValueError).
    """
    device = eps.device if isinstance(eps, torch.Tensor) else None
    name = select_kernel(device)
    if name == "triton":
        from .triton_collaborate import collaborate_triton as run
    elif name == "cuda":
        from .cuda_collaborate import collaborate_cuda as run
    else:
        run = collaborate_torch
    try:
        return run(eps, logits, x, noise, coeffs, step, decay, scale, receiver, return_weights, out)
    except KernelBuildError as exc:
        if os.environ.get("CDX_KERNEL", "").strip():
            raise
        # Auto choice only: nothing was launched, so the next kernel can take over (said once).
        warnings.warn(f"{exc}; falling back for {device}", RuntimeWarning, stacklevel=2)
        _BROKEN.add((name, str(device)))
        return collaborate(eps, logits, x, noise, coeffs, step, decay, scale, receiver, return_weights, out)
