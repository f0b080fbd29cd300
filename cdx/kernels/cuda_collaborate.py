"""Fused collaborate step as a CUDA C kernel, compiled at run time with NVRTC (cuda-python).

The maths is `cdx.kernels.reference.collaborate_reference`. One thread owns one pixel of one image
(grid = (cdiv(H*W, 256), B)): it reads the M logits once, keeps the M weights in registers (M is a
template parameter), then loops over the C channels reading M eps + x + noise and writing eps + x_prev.
The step index is read from device memory when given as a tensor, so a CUDA graph can replay one
launch for every step.

`CUDA_SOURCE` is plain CUDA C with no #include (fp16/bf16 are converted with PTX `cvt` and bit
arithmetic), so NVRTC needs no header path. Each (dtypes, M) instance is an `extern "C"` kernel made
by `CDX_INSTANTIATE`, compiled on first use per compute capability and loaded once per device.
cuda-python is imported lazily: `import cdx.kernels` works without it.
"""
from __future__ import annotations

import ctypes
import functools
import threading

import torch

from .checks import KernelBuildError, KernelUnavailableError, check_collaborate, make_outputs

THREADS = 256  # threads per block (one pixel each)

CUDA_SOURCE = r"""
// cdx fused collaborate step; the maths is cdx/kernels/reference.py (paper, Algorithm 2).
typedef unsigned short cdx_u16;
struct cdx_half { cdx_u16 bits; };  // IEEE binary16, converted with PTX cvt (no cuda_fp16.h needed)
struct cdx_bf16 { cdx_u16 bits; };  // bfloat16, converted with bit arithmetic (any architecture)

#ifdef CDX_HOST_TEST  // the tests also build this body as host C++; their prelude supplies these two
float cdx_host_h2f(cdx_u16 h);
cdx_u16 cdx_host_f2h(float f);
#endif

__device__ __forceinline__ float cdx_load(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float cdx_load(const cdx_half* p, long long i) {
#ifdef CDX_HOST_TEST
  return cdx_host_h2f(p[i].bits);
#else
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i].bits));
  return f;
#endif
}
__device__ __forceinline__ float cdx_load(const cdx_bf16* p, long long i) {
  return __uint_as_float(((unsigned int)p[i].bits) << 16);
}

__device__ __forceinline__ void cdx_store(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void cdx_store(cdx_half* p, long long i, float v) {
#ifdef CDX_HOST_TEST
  p[i].bits = cdx_host_f2h(v);
#else
  cdx_u16 h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
  p[i].bits = h;
#endif
}
__device__ __forceinline__ void cdx_store(cdx_bf16* p, long long i, float v) {
  const unsigned int u = __float_as_uint(v);
  cdx_u16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) h = (cdx_u16)((u >> 16) | 0x40u);  // NaN stays a quiet NaN
  else h = (cdx_u16)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);              // round to nearest even
  p[i].bits = h;
}

// eps (M,B,C,H,W), logits (M,B,1,H,W), x/noise (B,C,H,W), coeffs (S,6) = A,B,C,D,E,sigma per step,
// decay (S,M) or null, scale (M,) or null, w_out (M,B,1,H,W) or null. step_mode: 0 = step_const,
// 1 = int32 at step_ptr, 2 = int64 at step_ptr. A step outside 0..S-1 (after python-style
// wrapping) gives NaN outputs rather than reading out of bounds.
template <typename TE, typename TL, typename TX, typename TN, int M>
__device__ __forceinline__ void cdx_collaborate_body(
    const TE* eps, const TL* logits, const TX* x, const TN* noise,
    const float* coeffs, const void* step_ptr, const float* decay, const float* scale,
    TE* eps_out, TX* x_out, float* w_out,
    long long step_const, int step_mode, long long num_steps, int receiver,
    long long C, long long HW, long long P) {
  const long long hw = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (hw >= HW) return;
  const long long b = blockIdx.y;
  const long long pix = b * HW + hw;  // pixel index in (B, H, W)

  long long step = step_const;
  if (step_mode == 1) step = *(const int*)step_ptr;
  else if (step_mode == 2) step = *(const long long*)step_ptr;
  if (step < 0) step += num_steps;
  const bool valid = step >= 0 && step < num_steps;
  const long long row = valid ? step : 0;
  const float nan = __int_as_float(0x7fc00000);
  float k[6];
#pragma unroll
  for (int i = 0; i < 6; ++i) k[i] = valid ? coeffs[row * 6 + i] : nan;

  // w_m = softmax_m(logits_m): fp32, max-subtracted.
  float w[M];
  float mx = __int_as_float(0xff800000);  // -inf
#pragma unroll
  for (int m = 0; m < M; ++m) {
    w[m] = cdx_load(logits, m * P + pix);
    mx = fmaxf(mx, w[m]);
  }
  float sum = 0.f;
#pragma unroll
  for (int m = 0; m < M; ++m) {
    w[m] = expf(w[m] - mx);
    sum += w[m];
  }
#pragma unroll
  for (int m = 0; m < M; ++m) w[m] = w[m] / sum;

  if (decay != 0) {  // w'_m = d_m w_m (m != r); w'_r = 1 - sum_{m != r} w'_m
    float rest = 0.f;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      if (m != receiver) {
        w[m] *= valid ? decay[row * M + m] : nan;
        rest += w[m];
      }
    }
#pragma unroll
    for (int m = 0; m < M; ++m)
      if (m == receiver) w[m] = 1.f - rest;
  }
  if (scale != 0) {  // w''_m = f_m w'_m / sum_j f_j w'_j
    float total = 0.f;
#pragma unroll
    for (int m = 0; m < M; ++m) {
      w[m] *= scale[m];
      total += w[m];
    }
#pragma unroll
    for (int m = 0; m < M; ++m) w[m] = w[m] / total;
  }
  if (w_out != 0) {
#pragma unroll
    for (int m = 0; m < M; ++m) w_out[m * P + pix] = w[m];
  }

  // Per channel: eps = sum_m w_m eps_m (modality order); x0 = (x - A eps) / B;
  // x_prev = C x0 + D eps + E x + sigma noise.
  const long long base = b * C * HW + hw;
  const long long mstride = P * C;
  for (long long c = 0; c < C; ++c) {
    const long long i = base + c * HW;
    float e = w[0] * cdx_load(eps, i);
#pragma unroll
    for (int m = 1; m < M; ++m) e += w[m] * cdx_load(eps, m * mstride + i);
    const float xv = cdx_load(x, i);
    const float x0 = (xv - k[0] * e) / k[1];
    const float xp = k[2] * x0 + k[3] * e + k[4] * xv + k[5] * cdx_load(noise, i);
    cdx_store(eps_out, i, e);
    cdx_store(x_out, i, xp);
  }
}

#define CDX_INSTANTIATE(NAME, TE, TL, TX, TN, M)                                                  \
  extern "C" __global__ void __launch_bounds__(256) NAME(                                         \
      const TE* eps, const TL* logits, const TX* x, const TN* noise, const float* coeffs,          \
      const void* step_ptr, const float* decay, const float* scale, TE* eps_out, TX* x_out,        \
      float* w_out, long long step_const, int step_mode, long long num_steps, int receiver,        \
      long long C, long long HW, long long P) {                                                   \
    cdx_collaborate_body<TE, TL, TX, TN, M>(eps, logits, x, noise, coeffs, step_ptr, decay, scale, \
                                            eps_out, x_out, w_out, step_const, step_mode,         \
                                            num_steps, receiver, C, HW, P);                       \
  }
"""

# torch dtype -> (tag in the kernel name, C type in CUDA_SOURCE)
CTYPES = {
    torch.float32: ("f32", "float"),
    torch.float16: ("f16", "cdx_half"),
    torch.bfloat16: ("bf16", "cdx_bf16"),
}


def kernel_name(eps_dtype, logits_dtype, x_dtype, noise_dtype, m: int) -> str:
    tags = "_".join(CTYPES[d][0] for d in (eps_dtype, logits_dtype, x_dtype, noise_dtype))
    return f"cdx_collaborate_{tags}_m{m}"


def instance_line(instance) -> str:
    """`CDX_INSTANTIATE(name, TE, TL, TX, TN, M)` for (eps, logits, x, noise dtypes, M)."""
    *dtypes, m = instance
    ctypes_ = ", ".join(CTYPES[d][1] for d in dtypes)
    return f"CDX_INSTANTIATE({kernel_name(*instance)}, {ctypes_}, {int(m)})"


def kernel_source(instances) -> str:
    """CUDA_SOURCE plus one CDX_INSTANTIATE line per (eps, logits, x, noise dtypes, M)."""
    return "\n".join([CUDA_SOURCE, *(instance_line(i) for i in instances)]) + "\n"


# ---------------------------------------------------------------- cuda-python (lazy) ---------

_LOCK = threading.Lock()
_BINARIES: dict[tuple, tuple[str, bytes]] = {}  # (cc, name) -> ("cubin" | "ptx", image)
_FUNCTIONS: dict[tuple, tuple] = {}  # (device index, name) -> (module, function, image buffer)
_CONTEXTS: dict[int, object] = {}  # device index -> retained primary context


def _bindings():
    """(nvrtc, driver) from cuda-python: cuda.bindings (>= 12.x/13) or the older `cuda` package."""
    try:
        from cuda.bindings import driver, nvrtc
    except ImportError:
        from cuda import cuda as driver  # cuda-python < 12.6
        from cuda import nvrtc
    return nvrtc, driver


@functools.lru_cache(maxsize=None)
def cuda_python_available() -> bool:
    """True when cuda-python imports and its NVRTC library loads (a GPU is still needed to launch)."""
    try:
        nvrtc, _ = _bindings()
        err, _, _ = nvrtc.nvrtcVersion()
        return err == nvrtc.nvrtcResult.NVRTC_SUCCESS
    except Exception:  # ImportError, or the shared library missing
        return False


def _check(err, what: str) -> None:
    nvrtc, driver = _bindings()
    if isinstance(err, nvrtc.nvrtcResult):
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise RuntimeError(f"{what} failed: {err.name}")
    elif err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}")


def compile_kernel(name: str, instance: tuple, cc: tuple[int, int]) -> tuple[str, bytes]:
    """NVRTC-compile one instance for compute capability cc: a cubin, or PTX for a newer GPU."""
    nvrtc, _ = _bindings()
    arch = cc[0] * 10 + cc[1]
    kind = "cubin"
    try:
        err, archs = nvrtc.nvrtcGetSupportedArchs()
        if err == nvrtc.nvrtcResult.NVRTC_SUCCESS and archs and arch not in archs:
            older = [a for a in archs if a <= arch]
            if not older:
                raise KernelUnavailableError(f"NVRTC cannot target sm_{arch} (supports {archs})")
            arch, kind = max(older), "ptx"  # the driver JIT-compiles this PTX for the newer GPU
    except AttributeError:  # very old cuda-python: just try the native architecture
        pass
    src = kernel_source([instance]).encode()
    err, prog = nvrtc.nvrtcCreateProgram(src, b"cdx_collaborate.cu", 0, [], [])
    _check(err, "nvrtcCreateProgram")
    try:
        target = f"sm_{arch}" if kind == "cubin" else f"compute_{arch}"
        opts = [f"--gpu-architecture={target}".encode(), b"--std=c++14"]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            log = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(f"NVRTC failed to compile {name} for {target}:\n{log.decode(errors='replace')}")
        if kind == "cubin":
            err, size = nvrtc.nvrtcGetCUBINSize(prog)
            _check(err, "nvrtcGetCUBINSize")
            image = b" " * size
            (err,) = nvrtc.nvrtcGetCUBIN(prog, image)
            _check(err, "nvrtcGetCUBIN")
        else:
            err, size = nvrtc.nvrtcGetPTXSize(prog)
            _check(err, "nvrtcGetPTXSize")
            image = b" " * size
            (err,) = nvrtc.nvrtcGetPTX(prog, image)
            _check(err, "nvrtcGetPTX")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return kind, image


def _ensure_context(index: int) -> None:
    """Make the device's primary context (the one torch uses) current on this thread."""
    _, driver = _bindings()
    ctx = _CONTEXTS.get(index)
    if ctx is None:
        (err,) = driver.cuInit(0)
        _check(err, "cuInit")
        err, dev = driver.cuDeviceGet(index)
        _check(err, "cuDeviceGet")
        err, ctx = driver.cuDevicePrimaryCtxRetain(dev)
        _check(err, "cuDevicePrimaryCtxRetain")
        _CONTEXTS[index] = ctx
    err, cur = driver.cuCtxGetCurrent()
    _check(err, "cuCtxGetCurrent")
    if int(cur) != int(ctx):
        (err,) = driver.cuCtxSetCurrent(ctx)
        _check(err, "cuCtxSetCurrent")


def _function(device: torch.device, name: str, instance: tuple):
    """The loaded CUfunction for `name` on `device` (compiled once per compute capability)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, name)
    hit = _FUNCTIONS.get(key)
    if hit is not None:
        return hit[1]
    with _LOCK:
        hit = _FUNCTIONS.get(key)
        if hit is not None:
            return hit[1]
        _, driver = _bindings()
        cc = torch.cuda.get_device_capability(index)
        try:
            if (cc, name) not in _BINARIES:
                _BINARIES[(cc, name)] = compile_kernel(name, instance, cc)
            _, image = _BINARIES[(cc, name)]
            _ensure_context(index)
            buf = ctypes.create_string_buffer(image)  # NUL-terminated (PTX needs it), kept alive below
            err, module = driver.cuModuleLoadData(ctypes.addressof(buf))
            _check(err, "cuModuleLoadData")
            err, fn = driver.cuModuleGetFunction(module, name.encode())
            _check(err, "cuModuleGetFunction")
        except Exception as exc:
            raise KernelBuildError(f"cannot build the cuda kernel {name} for sm_{cc[0]}{cc[1]}: {exc}") from exc
        _FUNCTIONS[key] = (module, fn, buf)
        return fn


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


def launch_geometry(shp) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(grid, block): one thread per pixel, blocks tile H*W of one image, grid y = B."""
    return (-(-(shp.h * shp.w) // THREADS), shp.b, 1), (THREADS, 1, 1)


def kernel_args(shp, eps, logits, x, noise, coeffs, decay, scale, eps_out, x_out, w_out) -> list:
    """The kernel's parameters as ctypes values, in the order of CDX_INSTANTIATE's signature."""
    if shp.step_tensor is None:
        step_mode = 0
    else:
        step_mode = 1 if shp.step_tensor.dtype == torch.int32 else 2
    return [
        _ptr(eps), _ptr(logits), _ptr(x), _ptr(noise), _ptr(coeffs), _ptr(shp.step_tensor),
        _ptr(decay), _ptr(scale), _ptr(eps_out), _ptr(x_out), _ptr(w_out),
        ctypes.c_longlong(shp.step if shp.step is not None else 0), ctypes.c_int(step_mode),
        ctypes.c_longlong(shp.num_steps), ctypes.c_int(shp.receiver),
        ctypes.c_longlong(shp.c), ctypes.c_longlong(shp.h * shp.w), ctypes.c_longlong(shp.pixels),
    ]


def collaborate_cuda(eps, logits, x, noise, coeffs, step, decay=None, scale=None, receiver=-1,
                     return_weights=False, out=None):
    """Fused collaborate step (same contract as `collaborate_reference`, plus `out=` buffers)."""
    shp = check_collaborate(eps, logits, x, noise, coeffs, step, decay, scale, receiver, return_weights, out)
    if eps.device.type != "cuda":
        raise KernelUnavailableError(f"the cuda kernel needs CUDA tensors, got {eps.device}")
    if not cuda_python_available():
        raise KernelUnavailableError("the cuda kernel needs cuda-python with NVRTC (`pip install cuda-python`)")
    eps_out, x_out, w_out = make_outputs(eps, x, return_weights, out)
    if shp.pixels == 0:
        return (eps_out, x_out, w_out) if return_weights else (eps_out, x_out)
    if shp.b > 65535:
        raise KernelUnavailableError(f"the cuda kernel takes B <= 65535 (grid y), got {shp.b}")
    instance = (eps.dtype, logits.dtype, x.dtype, noise.dtype, shp.m)
    name = kernel_name(*instance)
    index = eps.device.index if eps.device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        fn = _function(eps.device, name, instance)
        _ensure_context(index)
        args = kernel_args(shp, eps, logits, x, noise, coeffs, decay, scale, eps_out, x_out, w_out)
        params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        (gx, gy, gz), (bx, by, bz) = launch_geometry(shp)
        _, driver = _bindings()
        stream = driver.CUstream(torch.cuda.current_stream(index).cuda_stream)
        (err,) = driver.cuLaunchKernel(fn, gx, gy, gz, bx, by, bz, 0, stream, ctypes.addressof(params), 0)
        _check(err, "cuLaunchKernel")
    return (eps_out, x_out, w_out) if return_weights else (eps_out, x_out)
