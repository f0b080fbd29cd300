"""GroupNorm followed by SiLU in one Triton kernel, for the UNets' ResBlocks on CUDA.

In the UNets every ResBlock opens both its halves with GroupNorm32 -> SiLU -> conv, and the output head
does the same. Eager torch runs that as four passes over the activation in fp16: a cast to fp32 (the
official `normalization` normalises in fp32), the GroupNorm kernel (statistics, then the affine map),
the cast back, and SiLU. Here one program owns one (image, group) slab, which is contiguous in NCHW:
it reads the slab twice for the mean and the variance (fp32, two-pass: no cancellation), then a third
time to write silu(gamma * (x - mean) * rstd + beta) in the input's dtype. Inductor fuses this pattern
itself, so this serves the eager and CUDA-graph paths (`CudaTorchRunner(fuse_norm_silu=True)`).

One program per slab gives B*G programs (128 at batch 4), fewer than an H200 has SMs; the slab loop is
unrolled over a constexpr count because Triton's interpreter cannot range() over a runtime int with
NumPy >= 2.5. The kernel calls no @jit library function (tl.sum, tl.zeros): those are built when triton is
imported, so under an interpreter switched on after that import they cannot be called. The sums are
`tl.reduce` with Triton's own sum combine, which the interpreter recognises and sums in NumPy. CPU tensors run the kernel only under TRITON_INTERPRET=1; `group_norm_silu` falls back
to the torch ops wherever the kernel cannot run (the reference, `group_norm_silu_reference`).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .triton_collaborate import interpret_mode, triton_available

_KERNELS: dict[bool, object] = {}  # interpret mode -> jitted kernel
BLOCK = 1024


def group_norm_silu_reference(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """GroupNorm32 then SiLU as the UNets compute them: normalise in fp32, cast back, SiLU in x's dtype."""
    return F.silu(F.group_norm(x.float(), groups, weight, bias, eps).type(x.dtype))


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def _group_norm_silu_kernel(x_ptr, w_ptr, b_ptr, y_ptr, G, CPG, HW, GS, eps,
                                ITERS: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)  # one (image, group) slab of CPG * HW contiguous values
        base = pid * GS
        c0 = (pid % G) * CPG
        lanes = tl.arange(0, BLOCK)
        acc = tl.full([BLOCK], 0.0, tl.float32)
        for i in range(ITERS):
            idx = i * BLOCK + lanes
            acc += tl.load(x_ptr + base + idx, mask=idx < GS, other=0.0).to(tl.float32)
        mean = tl.reduce(acc, 0, tl.standard._sum_combine) / GS
        acc = tl.full([BLOCK], 0.0, tl.float32)
        for i in range(ITERS):
            idx = i * BLOCK + lanes
            m = idx < GS
            d = tl.where(m, tl.load(x_ptr + base + idx, mask=m, other=0.0).to(tl.float32) - mean, 0.0)
            acc += d * d
        rstd = 1.0 / tl.sqrt(tl.reduce(acc, 0, tl.standard._sum_combine) / GS + eps)
        for i in range(ITERS):
            idx = i * BLOCK + lanes
            m = idx < GS
            c = c0 + idx // HW
            v = tl.load(x_ptr + base + idx, mask=m, other=0.0).to(tl.float32)
            gamma = tl.load(w_ptr + c, mask=m, other=1.0).to(tl.float32)
            beta = tl.load(b_ptr + c, mask=m, other=0.0).to(tl.float32)
            h = (v - mean) * rstd * gamma + beta
            h = h.to(y_ptr.dtype.element_ty).to(tl.float32)  # the reference casts back before SiLU
            y = h / (1.0 + tl.exp(-h))
            tl.store(y_ptr + base + idx, y.to(y_ptr.dtype.element_ty), mask=m)

    return _group_norm_silu_kernel


def kernel_reason(x: torch.Tensor) -> str | None:
    """None when the Triton kernel can take x, else why not."""
    if not triton_available():
        return "triton is not installed"
    if x.device.type == "cpu" and not interpret_mode():
        return "CPU tensors need TRITON_INTERPRET=1"
    if x.device.type not in ("cpu", "cuda"):
        return f"no kernel for {x.device.type} tensors"
    if x.dim() != 4 or not x.is_contiguous():
        return "the kernel takes contiguous NCHW tensors"
    if x.dtype not in (torch.float32, torch.float16):  # bf16 stores truncate under the interpreter
        return f"the kernel takes fp32 or fp16, not {x.dtype}"
    return None


def group_norm_silu_triton(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor,
                           eps: float) -> torch.Tensor:
    why = kernel_reason(x)
    if why is not None:
        raise RuntimeError(f"group_norm_silu: {why}")
    b, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"{c} channels do not split into {groups} groups")
    y = torch.empty_like(x)
    gs = (c // groups) * h * w
    if y.numel() == 0:
        return y
    mode = interpret_mode()
    if mode not in _KERNELS:
        _KERNELS[mode] = _build_kernel()
    with torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext():
        _KERNELS[mode][(b * groups,)](x, weight.contiguous(), bias.contiguous(), y, groups, c // groups, h * w,
                                      gs, float(eps), ITERS=-(-gs // BLOCK), BLOCK=BLOCK, num_warps=8)
    return y


def group_norm_silu(x: torch.Tensor, groups: int, weight, bias, eps: float) -> torch.Tensor:
    """silu(group_norm(x)): the Triton kernel where it can run, else the torch reference."""
    if kernel_reason(x) is None and weight is not None and bias is not None:
        return group_norm_silu_triton(x, groups, weight, bias, eps)
    return group_norm_silu_reference(x, groups, weight, bias, eps)
