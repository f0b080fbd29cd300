"""Fused collaborate step in Triton: softmax over M, optional shaping, weighted eps sum, sampler update.

The maths is `cdx.kernels.reference.collaborate_reference`. One program owns BLOCK pixels of one
image (grid = (cdiv(H*W, BLOCK), B): the B*H*W pixels are tiled without crossing an image, so loads
stay contiguous). It makes a few passes over its M logits (softmax max and sum, then the shaping
sums), then loops over the C channels and, inside, over M: it reads M eps + x + noise and writes
eps + x_prev per channel, recomputing each weight from the logits, which stay in cache. DRAM traffic
is therefore M logits + M*C eps + 2C reads and 2C (+ M weight) writes per pixel. The step index is
read from device memory when given as a tensor, so a CUDA graph can replay one launch for every step.

Triton is imported lazily: `import cdx.kernels` works without it. On CPU tensors the kernel runs only
under the interpreter (TRITON_INTERPRET=1), which is how CI tests it. The @triton.jit object is built
on first use for the mode in force then (compiled or interpreted), and the kernel calls no @jit
library function, so it does not matter whether triton was imported before TRITON_INTERPRET was set.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

from .checks import KernelUnavailableError, check_collaborate, make_outputs

_KERNELS: dict[bool, object] = {}  # interpret mode -> jitted kernel


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when triton imports (the kernel may still need a GPU or the interpreter)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install raising at import
        return False
    return True


def interpret_mode() -> bool:
    """Whether triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    try:
        import triton

        return bool(triton.knobs.runtime.interpret)
    except (ImportError, AttributeError):
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["step_const", "receiver"])
    def _collaborate_kernel(
        eps_ptr, logits_ptr, x_ptr, noise_ptr,  # (M,B,C,H,W), (M,B,1,H,W), (B,C,H,W), (B,C,H,W)
        coeffs_ptr, step_ptr, decay_ptr, scale_ptr,  # (S,6) f32, 0-d int, (S,M) f32, (M,) f32
        eps_out_ptr, x_out_ptr, w_out_ptr,  # (B,C,H,W), (B,C,H,W), (M,B,1,H,W) f32
        step_const, num_steps, M: tl.constexpr, C: tl.constexpr, HW, P, PC, receiver,  # P = B*H*W, PC = P*C
        BLOCK: tl.constexpr, STEP_FROM_PTR: tl.constexpr, HAS_DECAY: tl.constexpr,
        HAS_SCALE: tl.constexpr, STORE_W: tl.constexpr, EPS_BF16: tl.constexpr, X_BF16: tl.constexpr,
    ):
        # Only elementwise ops and loops (no tl.sum/tl.max): those are @jit library functions built
        # when triton.language is imported, which would tie the interpreter to the import order.
        # M and C are constexpr: the loops unroll, and the interpreter of Triton 3.6 cannot range() over a
        # runtime int with NumPy >= 2.5 (it holds one as a 1-element array; seen on the H200 image).
        hw = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] pixel in the image
        b = tl.program_id(1).to(tl.int64)
        pmask = hw < HW
        # Step row; a device step may be negative (python indexing); out of range gives NaN outputs.
        if STEP_FROM_PTR:
            step = tl.load(step_ptr).to(tl.int64)
            step = tl.where(step < 0, step + num_steps, step)
        else:
            step = step_const.to(tl.int64)
        valid = (step >= 0) & (step < num_steps)
        row = tl.where(valid, step, 0)
        nan = float("nan")
        ca = tl.where(valid, tl.load(coeffs_ptr + row * 6 + 0), nan)
        cb = tl.where(valid, tl.load(coeffs_ptr + row * 6 + 1), nan)
        cc = tl.where(valid, tl.load(coeffs_ptr + row * 6 + 2), nan)
        cd = tl.where(valid, tl.load(coeffs_ptr + row * 6 + 3), nan)
        ce = tl.where(valid, tl.load(coeffs_ptr + row * 6 + 4), nan)
        cs = tl.where(valid, tl.load(coeffs_ptr + row * 6 + 5), nan)

        # Softmax statistics over M, fp32, max-subtracted: w_m = exp(l_m - mx) / s.
        lbase = logits_ptr + b * HW + hw  # [BLOCK] pointers at modality 0 of (M,B,1,H,W)
        mx = tl.full([BLOCK], float("-inf"), tl.float32)
        lp = lbase
        for _ in range(M):
            mx = tl.maximum(mx, tl.load(lp, mask=pmask, other=0.0).to(tl.float32))
            lp += P
        s = tl.full([BLOCK], 0.0, tl.float32)
        lp = lbase
        for _ in range(M):
            s += tl.exp(tl.load(lp, mask=pmask, other=0.0).to(tl.float32) - mx)
            lp += P
        # Official shaping: w'_m = d_m w_m (m != r), w'_r = 1 - rest; w''_m = f_m w'_m / total.
        rest = tl.full([BLOCK], 0.0, tl.float32)
        if HAS_DECAY:
            lp = lbase
            for m in range(M):
                wm = tl.exp(tl.load(lp, mask=pmask, other=0.0).to(tl.float32) - mx) / s
                dm = tl.where(valid, tl.load(decay_ptr + row * M + m), nan)
                rest += tl.where(m == receiver, 0.0, dm * wm)
                lp += P
        total = tl.full([BLOCK], 1.0, tl.float32)
        if HAS_SCALE:
            total = tl.full([BLOCK], 0.0, tl.float32)
            lp = lbase
            for m in range(M):
                wm = tl.exp(tl.load(lp, mask=pmask, other=0.0).to(tl.float32) - mx) / s
                if HAS_DECAY:
                    dm = tl.where(valid, tl.load(decay_ptr + row * M + m), nan)
                    wm = tl.where(m == receiver, 1.0 - rest, dm * wm)
                total += tl.load(scale_ptr + m) * wm
                lp += P
        if STORE_W:
            lp = lbase
            wp = w_out_ptr + b * HW + hw
            for m in range(M):
                wm = tl.exp(tl.load(lp, mask=pmask, other=0.0).to(tl.float32) - mx) / s
                if HAS_DECAY:
                    dm = tl.where(valid, tl.load(decay_ptr + row * M + m), nan)
                    wm = tl.where(m == receiver, 1.0 - rest, dm * wm)
                if HAS_SCALE:
                    wm = tl.load(scale_ptr + m) * wm / total
                tl.store(wp, wm, mask=pmask)
                lp += P
                wp += P

        # Per channel: eps = sum_m w_m eps_m (modality order); x0 = (x - A eps) / B;
        # x_prev = C x0 + D eps + E x + sigma noise. Weights are recomputed from the (cached) logits.
        xoff = b * C * HW + hw  # [BLOCK] offsets into (B,C,H,W) at channel 0
        for _ in range(C):  # channel c: offsets advance by H*W
            e = tl.full([BLOCK], 0.0, tl.float32)
            lp = lbase
            ep = eps_ptr + xoff
            for m in range(M):
                wm = tl.exp(tl.load(lp, mask=pmask, other=0.0).to(tl.float32) - mx) / s
                if HAS_DECAY:
                    dm = tl.where(valid, tl.load(decay_ptr + row * M + m), nan)
                    wm = tl.where(m == receiver, 1.0 - rest, dm * wm)
                if HAS_SCALE:
                    wm = tl.load(scale_ptr + m) * wm / total
                e += wm * tl.load(ep, mask=pmask, other=0.0).to(tl.float32)
                lp += P
                ep += PC
            xv = tl.load(x_ptr + xoff, mask=pmask, other=0.0).to(tl.float32)
            nv = tl.load(noise_ptr + xoff, mask=pmask, other=0.0).to(tl.float32)
            x0 = (xv - ca * e) / cb
            xp = cc * x0 + cd * e + ce * xv + cs * nv
            # fp32 -> bf16 round-to-nearest-even on the bits (NaN stays quiet): the compiled .to() does
            # this, but triton's interpreter truncates, so both paths spell it out.
            if EPS_BF16:
                u = e.to(tl.uint32, bitcast=True)
                u = tl.where((u & 0x7FFFFFFF) > 0x7F800000, (u >> 16) | 0x40, (u + 0x7FFF + ((u >> 16) & 1)) >> 16)
                e = u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
            if X_BF16:
                u = xp.to(tl.uint32, bitcast=True)
                u = tl.where((u & 0x7FFFFFFF) > 0x7F800000, (u >> 16) | 0x40, (u + 0x7FFF + ((u >> 16) & 1)) >> 16)
                xp = u.to(tl.uint16).to(tl.bfloat16, bitcast=True)
            tl.store(eps_out_ptr + xoff, e.to(eps_out_ptr.dtype.element_ty), mask=pmask)
            tl.store(x_out_ptr + xoff, xp.to(x_out_ptr.dtype.element_ty), mask=pmask)
            xoff += HW

    return _collaborate_kernel


def _kernel():
    mode = interpret_mode()
    if mode not in _KERNELS:
        _KERNELS[mode] = _build_kernel()
    return _KERNELS[mode]


def _block_size(hw: int, pixels: int) -> int:
    """Pixels per program: 1024 on large batches, 256 on small ones (more programs than SMs),
    never much more than one image."""
    cap = 1024 if pixels >= 1024 * 256 else 256
    return max(16, min(cap, 1 << max(hw - 1, 0).bit_length()))


def collaborate_triton(eps, logits, x, noise, coeffs, step, decay=None, scale=None, receiver=-1,
                       return_weights=False, out=None):
    """Fused collaborate step (same contract as `collaborate_reference`, plus `out=` buffers)."""
    if not triton_available():
        raise KernelUnavailableError("the triton kernel needs `pip install triton`")
    shp = check_collaborate(eps, logits, x, noise, coeffs, step, decay, scale, receiver, return_weights, out)
    if eps.device.type not in ("cpu", "cuda"):
        raise KernelUnavailableError(f"the triton kernel does not run on {eps.device.type} tensors")
    if eps.device.type == "cpu" and not interpret_mode():
        raise KernelUnavailableError("the triton kernel runs on CPU tensors only with TRITON_INTERPRET=1")
    eps_out, x_out, w_out = make_outputs(eps, x, return_weights, out)
    hw = shp.h * shp.w
    if shp.pixels == 0:
        return (eps_out, x_out, w_out) if return_weights else (eps_out, x_out)
    if shp.b > 65535:
        raise KernelUnavailableError(f"the triton kernel takes B <= 65535 (grid y), got {shp.b}")
    block = _block_size(hw, shp.pixels)
    grid = (-(-hw // block), shp.b)
    from_ptr = shp.step_tensor is not None
    with torch.cuda.device(eps.device) if eps.device.type == "cuda" else contextlib.nullcontext():
        _kernel()[grid](
            eps, logits, x, noise,
            coeffs, shp.step_tensor if from_ptr else coeffs, decay if decay is not None else coeffs,
            scale if scale is not None else coeffs,
            eps_out, x_out, w_out if w_out is not None else eps_out,
            0 if from_ptr else shp.step, shp.num_steps, shp.m, shp.c, hw, shp.pixels, shp.pixels * shp.c,
            shp.receiver,
            BLOCK=block, STEP_FROM_PTR=from_ptr, HAS_DECAY=decay is not None, HAS_SCALE=scale is not None,
            STORE_W=w_out is not None, EPS_BF16=eps.dtype == torch.bfloat16, X_BF16=x.dtype == torch.bfloat16,
            num_warps=4 if block >= 512 else 2,
        )
    return (eps_out, x_out, w_out) if return_weights else (eps_out, x_out)
