"""The fused collaborate kernels against the torch reference (cdx/kernels/reference.py).

Tolerances follow from the output dtype, judged against the same maths in float64 on the same
(already rounded) inputs: an fp32 output may differ by 1e-6 of the output's largest magnitude (fp32
arithmetic, far under 1e-5); an fp16/bf16 output by at most twice the error of torch computing the
whole step in that dtype. Inputs are fresh random tensors (a different seed per case, never zeros),
and output buffers are poisoned with NaN before each call, so an element the kernel forgets shows.

The Triton kernel runs on CPU under TRITON_INTERPRET=1, set per test by the `interpret` fixture. The
kernel object is built on first launch for the mode in force then (cdx.kernels.triton_collaborate),
so it does not matter whether triton was imported earlier in the pytest process, and other tests
never see the variable. GPU tests skip without CUDA; compile tests skip without nvcc / g++ /
cuda-python.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import zlib

import pytest
import torch

import cdx.kernels as K
from cdx.kernels import cuda_collaborate as CU
from cdx.kernels.checks import check_collaborate
from cdx.kernels.reference import collaborate_reference

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
from conftest import HAS_CUDA  # noqa: E402
needs_cuda = pytest.mark.gpu


@pytest.fixture
def interpret(monkeypatch):
    """Run triton kernels in its CPU interpreter for this test only."""
    pytest.importorskip("triton", reason="triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("CDX_KERNEL", raising=False)
    yield


@pytest.fixture(autouse=True)
def _no_forced_kernel(monkeypatch):
    monkeypatch.delenv("CDX_KERNEL", raising=False)


# ----------------------------------------------------------------------------- inputs and oracle

def make_case(m, b, c, h, w, dtype, seed, shaped=False, x_dtype=None, device="cpu", steps=7):
    """Fresh random inputs of one call; logits spread wide so the softmax is far from uniform."""
    g = torch.Generator().manual_seed(seed)
    x_dtype = x_dtype or dtype
    case = dict(
        eps=torch.randn(m, b, c, h, w, generator=g).to(dtype),
        logits=(3 * torch.randn(m, b, 1, h, w, generator=g)).to(dtype),
        x=torch.randn(b, c, h, w, generator=g).to(x_dtype),
        noise=torch.randn(b, c, h, w, generator=g).to(x_dtype),
        coeffs=torch.rand(steps, 6, generator=g) + 0.25,  # every column non-zero, B >= 0.25
        step=int(torch.randint(0, steps, (1,), generator=g)),
    )
    if shaped:
        case["decay"] = torch.rand(steps, m, generator=g) * 0.9 + 0.05
        case["scale"] = torch.rand(m, generator=g) * 2 + 0.5
        case["receiver"] = int(torch.randint(-m, m, (1,), generator=g))
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in case.items()}


def maths(case, dtype):
    """The collaborate step computed entirely in `dtype` (float64: the oracle; fp16/bf16: torch's
    own low-precision computation, the yardstick for low-precision outputs)."""
    t = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in case.items()}
    w = torch.softmax(t["logits"], dim=0)
    m = w.shape[0]
    if "decay" in t:
        r = t["receiver"] % m
        d = t["decay"][case["step"]]
        shaped = [w[i] * d[i] for i in range(m)]
        rest = sum((shaped[i] for i in range(m) if i != r), torch.zeros_like(w[0]))
        shaped[r] = 1 - rest
        fw = torch.stack(shaped) * t["scale"].view(m, 1, 1, 1, 1)
        w = fw / fw.sum(dim=0)
    e = (w * t["eps"]).sum(dim=0)
    a, b_, c_, d_, e_, s_ = t["coeffs"][case["step"]]
    x0 = (t["x"] - a * e) / b_
    x_prev = c_ * x0 + d_ * e + e_ * t["x"] + s_ * t["noise"]
    return e, x_prev, w


def assert_matches(case, got, check_weights):
    """Every element written (no NaN) and within the dtype-derived tolerance of the float64 maths."""
    case = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in case.items()}
    oracle = maths(case, torch.float64)
    names = ("eps", "x_prev", "weights")
    for i, (name, out) in enumerate(zip(names, got)):
        if name == "weights" and not check_weights:
            continue
        out = out.cpu()
        assert not torch.isnan(out).any(), f"{name}: {int(torch.isnan(out).sum())} elements not written"
        ref = oracle[i]
        err = (out.double() - ref).abs().max().item()
        if out.dtype == torch.float32:
            tol = 1e-6 * ref.abs().max().item()
        else:
            lp = maths(case, out.dtype)[i]
            tol = 2 * (lp.double() - ref).abs().max().item()
        assert err <= tol, f"{name} ({out.dtype}): max error {err:.3g} > tolerance {tol:.3g}"


def call(fn, case, return_weights, out=None):
    kw = {k: case[k] for k in ("decay", "scale", "receiver") if k in case}
    if out is not None:
        kw["out"] = out
    return fn(case["eps"], case["logits"], case["x"], case["noise"], case["coeffs"], case["step"],
              return_weights=return_weights, **kw)


def poisoned_out(case, return_weights):
    e, x = case["eps"], case["x"]
    out = [torch.full(x.shape, float("nan"), dtype=e.dtype, device=e.device),
           torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)]
    if return_weights:
        out.append(torch.full(case["logits"].shape, float("nan"), dtype=torch.float32, device=e.device))
    return tuple(out)


def run_checked(fn, case, return_weights):
    out = poisoned_out(case, return_weights)
    got = call(fn, case, return_weights, out=out)
    assert len(got) == (3 if return_weights else 2)
    assert all(g is o for g, o in zip(got, out)), "results must be the out= buffers"
    assert_matches(case, got, return_weights)
    return got


def _seed(*parts) -> int:
    """A distinct, reproducible seed per test case (str hashes are salted per process)."""
    return zlib.crc32(repr(parts).encode())


# ----------------------------------------------------------------------------- triton (interpreter)

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("shaped", [False, True], ids=["plain", "shaped"])
@pytest.mark.parametrize("return_weights", [False, True], ids=["", "weights"])
def test_kernel_triton_matches_reference(interpret, dtype, m, shaped, return_weights):
    from cdx.kernels.triton_collaborate import collaborate_triton

    case = make_case(m, 2, 3, 17, 23, dtype, seed=_seed(dtype, m, shaped, return_weights), shaped=shaped)
    run_checked(collaborate_triton, case, return_weights)
    # and the reference itself passes the same bar
    assert_matches(case, call(collaborate_reference, case, True), True)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 4, 1, 1), (1, 3, 8, 8), (2, 3, 33, 65), (1, 2, 64, 64)])
@pytest.mark.parametrize("m", [2, 3])
def test_kernel_triton_awkward_shapes(interpret, shape, m):
    from cdx.kernels.triton_collaborate import collaborate_triton

    case = make_case(m, *shape, torch.float32, seed=_seed("shape", shape, m), shaped=m == 3)
    run_checked(collaborate_triton, case, True)


@pytest.mark.parametrize("eps_dtype,x_dtype", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                               (torch.float32, torch.bfloat16)])
def test_kernel_triton_mixed_dtypes(interpret, eps_dtype, x_dtype):
    from cdx.kernels.triton_collaborate import collaborate_triton

    case = make_case(2, 2, 3, 17, 23, eps_dtype, seed=_seed("mixed", eps_dtype, x_dtype), shaped=True,
                     x_dtype=x_dtype)
    case["logits"] = case["logits"].to(torch.bfloat16 if eps_dtype == torch.float16 else torch.float16)
    run_checked(collaborate_triton, case, True)


def test_kernel_triton_real_schedules(interpret):
    """The official DDIM (eta=1) and DDPM tables at every step, first step included (B ~ 0.07)."""
    from cdx.models.schedule import alphas_cumprod, linear_betas, make_table
    from cdx.kernels.triton_collaborate import collaborate_triton

    acp = alphas_cumprod(linear_betas())
    for sampler, eta in (("ddim", 1.0), ("ddpm", 1.0)):
        table = make_table(acp, 5, sampler, eta)
        case = make_case(2, 1, 3, 17, 23, torch.float32, seed=_seed(sampler), shaped=True)
        case["coeffs"] = torch.from_numpy(table.coeffs)
        case["decay"] = torch.rand(table.num_steps, 2, generator=torch.Generator().manual_seed(3))
        for step in range(table.num_steps):
            case["step"] = step
            run_checked(collaborate_triton, case, True)


@pytest.mark.parametrize("step_dtype", [torch.int32, torch.int64])
def test_kernel_triton_step_tensor_equals_int(interpret, step_dtype):
    from cdx.kernels.triton_collaborate import collaborate_triton

    case = make_case(3, 2, 3, 17, 23, torch.float16, seed=_seed("step", step_dtype), shaped=True)
    s = case["coeffs"].shape[0]
    for step in (0, 4, s - 1, -1, -s):
        by_int = call(collaborate_triton, dict(case, step=step), True)
        by_tensor = call(collaborate_triton, dict(case, step=torch.tensor(step, dtype=step_dtype)), True)
        reference = call(collaborate_reference, dict(case, step=step), True)
        for a, b, r in zip(by_int, by_tensor, reference):
            assert torch.equal(a, b)
            assert a.dtype == r.dtype and a.shape == r.shape


def test_kernel_triton_device_step_out_of_range_gives_nan(interpret):
    """A device step cannot be checked without a sync: out of range poisons instead of reading past."""
    from cdx.kernels.triton_collaborate import collaborate_triton

    case = make_case(2, 1, 3, 5, 7, torch.float32, seed=11)
    got = call(collaborate_triton, dict(case, step=torch.tensor(99)), False)
    assert torch.isnan(got[1]).all()


def test_kernel_triton_in_place_x_out(interpret):
    from cdx.kernels.triton_collaborate import collaborate_triton

    case = make_case(2, 2, 3, 17, 23, torch.float32, seed=12, shaped=True)
    expect = call(collaborate_triton, case, False)
    x = case["x"].clone()
    eps_out = torch.full_like(expect[0], float("nan"))
    got = call(collaborate_triton, dict(case, x=x), False, out=(eps_out, x))
    assert got[1] is x and torch.equal(x, expect[1]) and torch.equal(eps_out, expect[0])


@pytest.mark.parametrize("dtype,flags", [(torch.float16, (True, True, True, True)),
                                         (torch.bfloat16, (False, False, False, False))])
def test_kernel_triton_compiles_for_gpu_without_one(monkeypatch, dtype, flags):
    """The compiled (not interpreted) path: triton lowers the kernel to PTX and a cubin for sm_90."""
    pytest.importorskip("triton", reason="triton is not installed")
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as exc:
        pytest.skip(f"this triton has no ASTSource/GPUTarget: {exc}")
    from cdx.kernels import triton_collaborate as TC

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_DEFAULT_FP_FUSION", "1")
    kernel = TC._kernel()
    t = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    step_from_ptr, has_decay, has_scale, store_w = flags
    sig = {"eps_ptr": f"*{t}", "logits_ptr": f"*{t}", "x_ptr": "*fp32", "noise_ptr": "*fp32",
           "coeffs_ptr": "*fp32", "step_ptr": "*i64" if step_from_ptr else "*fp32", "decay_ptr": "*fp32",
           "scale_ptr": "*fp32", "eps_out_ptr": f"*{t}", "x_out_ptr": "*fp32", "w_out_ptr": "*fp32"}
    sig.update({n: "i32" for n in ("step_const", "num_steps", "M", "C", "HW", "P", "PC", "receiver")})
    consts = dict(BLOCK=1024, STEP_FROM_PTR=step_from_ptr, HAS_DECAY=has_decay, HAS_SCALE=has_scale,
                  STORE_W=store_w, EPS_BF16=dtype == torch.bfloat16, X_BF16=False)
    sig.update({k: "constexpr" for k in consts})
    try:
        compiled = triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
                                  options=dict(num_warps=4))
    except (FileNotFoundError, PermissionError) as exc:  # no bundled ptxas
        pytest.skip(f"triton cannot run ptxas here: {exc}")
    assert ".entry _collaborate_kernel" in compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 1000


def test_kernel_triton_refuses_cpu_without_interpreter(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed")
    from cdx.kernels.triton_collaborate import collaborate_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    case = make_case(2, 1, 3, 5, 7, torch.float32, seed=13)
    with pytest.raises(K.KernelUnavailableError, match="TRITON_INTERPRET"):
        call(collaborate_triton, case, False)


# ----------------------------------------------------------------------------- dispatcher

def test_kernel_dispatch_cpu_defaults_to_torch_reference():
    assert K.select_kernel("cpu") == "torch"
    assert "torch" in K.available_kernels("cpu")
    case = make_case(3, 2, 3, 17, 23, torch.float32, seed=21, shaped=True)
    got = call(K.collaborate, case, True)
    for a, b in zip(got, call(collaborate_reference, case, True)):
        assert torch.equal(a, b)
    run_checked(K.collaborate, case, True)  # out= buffers on the torch path


def test_kernel_dispatch_forced_by_env(monkeypatch, interpret):
    case = make_case(2, 2, 3, 17, 23, torch.float16, seed=22, shaped=True)
    monkeypatch.setenv("CDX_KERNEL", "torch")
    assert K.select_kernel("cpu") == "torch"
    monkeypatch.setenv("CDX_KERNEL", "triton")
    assert "triton" in K.available_kernels("cpu")
    assert K.select_kernel("cpu") == "triton"
    run_checked(K.collaborate, case, True)
    monkeypatch.setenv("CDX_KERNEL", "cuda")
    with pytest.raises(K.KernelUnavailableError, match="CDX_KERNEL=cuda"):
        K.collaborate(case["eps"], case["logits"], case["x"], case["noise"], case["coeffs"], 0)
    monkeypatch.setenv("CDX_KERNEL", "tensorrt")
    with pytest.raises(K.KernelUnavailableError, match="expected one of"):
        K.select_kernel("cpu")


def test_kernel_dispatch_forced_triton_without_interpreter_fails(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("CDX_KERNEL", "triton")
    with pytest.raises(K.KernelUnavailableError, match="CDX_KERNEL=triton"):
        K.select_kernel("cpu")


def test_kernel_dispatch_auto_falls_back_when_cuda_build_fails(monkeypatch):
    """Auto choice: a kernel that cannot be built (nothing launched) warns once and hands over;
    a forced one raises."""
    def broken(*args, **kwargs):
        raise K.KernelBuildError("cannot build the cuda kernel for sm_99")

    monkeypatch.setattr(CU, "collaborate_cuda", broken)
    monkeypatch.setattr(K, "_BROKEN", set())
    monkeypatch.setattr(K, "select_kernel", lambda device=None: "torch" if ("cuda", str(device)) in K._BROKEN
                        else "cuda")
    case = make_case(2, 1, 3, 5, 7, torch.float32, seed=23, shaped=True)
    with pytest.warns(RuntimeWarning, match="falling back"):
        got = call(K.collaborate, case, False)
    for a, b in zip(got, call(collaborate_reference, case, False)):
        assert torch.equal(a, b)
    K._BROKEN.clear()
    monkeypatch.setenv("CDX_KERNEL", "cuda")
    with pytest.raises(K.KernelBuildError):
        call(K.collaborate, case, False)


def _bad_inputs():
    """(description, case edits) that every kernel must refuse with a ValueError."""
    base = make_case(2, 2, 3, 5, 7, torch.float32, seed=31, shaped=True)
    cl = base["x"].to(memory_format=torch.channels_last)
    return base, [
        ("logits with C channels", dict(logits=torch.randn(2, 2, 3, 5, 7))),
        ("x of wrong shape", dict(x=torch.randn(2, 3, 7, 5))),
        ("noise of wrong shape", dict(noise=torch.randn(1, 3, 5, 7))),
        ("eps without M", dict(eps=torch.randn(2, 3, 5, 7))),
        ("integer eps", dict(eps=torch.ones(2, 2, 3, 5, 7, dtype=torch.int32))),
        ("fp64 x", dict(x=base["x"].double())),
        ("coeffs (S, 5)", dict(coeffs=torch.rand(7, 5))),
        ("decay (S, M+1)", dict(decay=torch.rand(7, 3))),
        ("scale (M+1,)", dict(scale=torch.rand(3))),
        ("step out of range", dict(step=7)),
        ("float step", dict(step=1.0)),
        ("1-d step tensor", dict(step=torch.tensor([1]))),
        ("float step tensor", dict(step=torch.tensor(1.0))),
        ("x on another device", dict(x=base["x"].to("meta"))),
        ("channels-last x", dict(x=cl)),
        ("non-contiguous eps", dict(eps=base["eps"].transpose(3, 4).contiguous().transpose(3, 4))),
    ]


def test_kernel_dispatch_refuses_bad_inputs_on_every_kernel(monkeypatch, interpret):
    base, bad = _bad_inputs()
    for kernel in K.available_kernels("cpu"):
        monkeypatch.setenv("CDX_KERNEL", kernel)
        for what, edit in bad:
            with pytest.raises(ValueError) as info:
                call(K.collaborate, dict(base, **edit), False)
            assert isinstance(info.value, K.CollaborateInputError), what
            if what == "channels-last x":
                assert "channels-last" in str(info.value)
        with pytest.raises(ValueError, match="out must be a tuple of 3"):
            call(K.collaborate, base, True, out=poisoned_out(base, False))
        with pytest.raises(ValueError, match="x_out"):
            out = poisoned_out(base, False)
            call(K.collaborate, base, False, out=(out[0], out[1].half()))


def test_kernel_dispatch_m1_is_plain_update():
    """M = 1: the weight is 1 and the op is the sampler update of eps itself."""
    case = make_case(1, 2, 3, 17, 23, torch.float32, seed=41)
    e, x_prev, w = call(K.collaborate, case, True)
    assert torch.equal(w, torch.ones_like(w)) and torch.equal(e, case["eps"][0])
    a, b, c, d, e_, s = case["coeffs"][case["step"]]
    x0 = (case["x"] - a * case["eps"][0]) / b
    torch.testing.assert_close(x_prev, c * x0 + d * case["eps"][0] + e_ * case["x"] + s * case["noise"])


def test_kernel_import_does_not_need_triton_or_cuda_python():
    code = ("import sys; sys.modules['triton'] = None; sys.modules['cuda'] = None\n"
            "import cdx.kernels as K; print(K.available_kernels('cpu'), K.select_kernel('cpu'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "CDX_KERNEL"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "['torch'] torch"


# ----------------------------------------------------------------------------- CUDA C source

CUDA_INSTANCES = [(te, te, tx, tx, m) for te in DTYPES for tx in (te, torch.float32) for m in (1, 2, 5)]
CUDA_INSTANCES = list(dict.fromkeys(CUDA_INSTANCES)) + [
    (torch.bfloat16, torch.float16, torch.float32, torch.float16, 3)]


def test_kernel_cuda_source_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    src = tmp_path / "collaborate.cu"
    src.write_text(CU.kernel_source(CUDA_INSTANCES))
    res = subprocess.run([nvcc, "--cubin", "-arch=sm_80", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
                          str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    report = res.stdout + res.stderr
    for inst in CUDA_INSTANCES:
        assert f"'{CU.kernel_name(*inst)}'" in report
    spills = re.findall(r"(\d+) bytes stack frame", report)
    assert spills and all(s == "0" for s in spills), "weights must stay in registers (no stack frame)"


def test_kernel_cuda_source_compiles_with_nvrtc():
    if not CU.cuda_python_available():
        pytest.skip("cuda-python with NVRTC is not installed")
    for cc in ((8, 0), (9, 0)):
        for inst in (CUDA_INSTANCES[0], CUDA_INSTANCES[-1]):
            kind, image = CU.compile_kernel(CU.kernel_name(*inst), inst, cc)
            assert kind in ("cubin", "ptx") and len(image) > 1000


HOST_PRELUDE = r"""
#define CDX_HOST_TEST 1
#include <math.h>
#include <string.h>
#define __device__
#define __forceinline__ inline
#define __global__
#define __launch_bounds__(n)
struct cdx_dim3 { unsigned int x, y, z; };
static cdx_dim3 blockIdx, threadIdx, blockDim;
static inline float __uint_as_float(unsigned int u) { float f; memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; memcpy(&u, &f, 4); return u; }
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
float cdx_host_h2f(unsigned short h) { _Float16 v; memcpy(&v, &h, 2); return (float)v; }
unsigned short cdx_host_f2h(float f) { _Float16 v = (_Float16)f; unsigned short h; memcpy(&h, &v, 2); return h; }
"""

HOST_LAUNCH = r"""
#undef CDX_INSTANTIATE
#define CDX_INSTANTIATE(NAME, TE, TL, TX, TN, M)                                                  \
  extern "C" void NAME(const TE* eps, const TL* logits, const TX* x, const TN* noise,             \
      const float* coeffs, const void* step_ptr, const float* decay, const float* scale,          \
      TE* eps_out, TX* x_out, float* w_out, long long step_const, int step_mode,                  \
      long long num_steps, int receiver, long long C, long long HW, long long P,                  \
      unsigned int gx, unsigned int gy, unsigned int bx) {                                        \
    blockDim.x = bx;                                                                              \
    for (unsigned int j = 0; j < gy; ++j)                                                         \
      for (unsigned int i = 0; i < gx; ++i)                                                       \
        for (unsigned int t = 0; t < bx; ++t) {                                                   \
          blockIdx.x = i; blockIdx.y = j; threadIdx.x = t;                                        \
          cdx_collaborate_body<TE, TL, TX, TN, M>(eps, logits, x, noise, coeffs, step_ptr, decay,  \
              scale, eps_out, x_out, w_out, step_const, step_mode, num_steps, receiver, C, HW, P); \
        }                                                                                         \
  }
"""


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory):
    """The CUDA kernel body built as host C++ (g++), one thread at a time, to check its logic."""
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not on PATH")
    d = tmp_path_factory.mktemp("cuda_host")
    probe = d / "probe.cpp"
    probe.write_text("int main() { _Float16 h = (_Float16)1.5f; return (int)(float)h - 1; }")
    if subprocess.run([gxx, str(probe), "-o", str(d / "probe")], capture_output=True).returncode != 0:
        pytest.skip("g++ lacks _Float16")
    src = d / "host.cpp"
    src.write_text(HOST_PRELUDE + CU.CUDA_SOURCE + HOST_LAUNCH
                   + "\n".join(CU.instance_line(i) for i in CUDA_INSTANCES) + "\n")
    lib = d / "libhost.so"
    res = subprocess.run([gxx, "-O1", "-shared", "-fPIC", "-Wno-unknown-pragmas", "-o", str(lib), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return ctypes.CDLL(str(lib))


def run_host(lib, case, return_weights, out):
    """Launch the host build exactly as collaborate_cuda packs its arguments."""
    args = [case[k] for k in ("eps", "logits", "x", "noise", "coeffs", "step")]
    shaping = {k: case[k] for k in ("decay", "scale", "receiver") if k in case}
    shp = check_collaborate(*args, **shaping, return_weights=return_weights, out=out)
    w_out = out[2] if return_weights else None
    inst = (case["eps"].dtype, case["logits"].dtype, case["x"].dtype, case["noise"].dtype, shp.m)
    cargs = CU.kernel_args(shp, *args[:5], case.get("decay"), case.get("scale"), out[0], out[1], w_out)
    (gx, gy, _), (bx, _, _) = CU.launch_geometry(shp)
    getattr(lib, CU.kernel_name(*inst))(*cargs, ctypes.c_uint(gx), ctypes.c_uint(gy), ctypes.c_uint(bx))
    return out


@pytest.mark.parametrize("inst", CUDA_INSTANCES, ids=lambda i: CU.kernel_name(*i)[16:])
def test_kernel_cuda_body_on_host_matches_reference(host_kernels, inst):
    te, tl_, tx, tn, m = inst
    for shaped, return_weights, step_kind in ((False, False, "int"), (True, True, "int32"),
                                              (True, False, "int64")):
        case = make_case(m, 2, 3, 17, 23, te, seed=_seed("host", inst, shaped), shaped=shaped, x_dtype=tx)
        case["logits"], case["noise"] = case["logits"].to(tl_), case["noise"].to(tn)
        if step_kind != "int":
            case["step"] = torch.tensor(case["step"] - 7, dtype=getattr(torch, step_kind))  # negative
        out = poisoned_out(case, return_weights)
        got = run_host(host_kernels, case, return_weights, out)
        if step_kind != "int":
            case["step"] = int(case["step"]) % 7
        assert_matches(case, got, return_weights)


def test_kernel_cuda_body_on_host_bad_step_gives_nan(host_kernels):
    inst = CUDA_INSTANCES[0]
    case = make_case(inst[-1], 1, 3, 5, 7, torch.float32, seed=51)
    case["step"] = torch.tensor(7, dtype=torch.int64)
    got = run_host(host_kernels, case, False, poisoned_out(case, False))
    assert torch.isnan(got[1]).all()


# ----------------------------------------------------------------------------- on a GPU

def _gpu_kernels():
    if not HAS_CUDA:
        return ["triton", "cuda"]  # reported as skipped
    return [k for k in ("triton", "cuda") if k in K.available_kernels("cuda")] or ["none"]


@needs_cuda
@pytest.mark.parametrize("kernel", _gpu_kernels())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("m", [1, 2, 3, 5])
def test_kernel_gpu_matches_reference(monkeypatch, kernel, dtype, m):
    if kernel == "none":
        pytest.skip("neither triton nor cuda-python is installed")
    monkeypatch.setenv("CDX_KERNEL", kernel)
    for shaped in (False, True):
        for shape in ((2, 3, 17, 23), (4, 3, 64, 64)):
            case = make_case(m, *shape, dtype, seed=_seed("gpu", kernel, dtype, m, shaped, shape),
                             shaped=shaped, device="cuda", x_dtype=torch.float32 if shaped else dtype)
            run_checked(K.collaborate, case, True)
            got = call(K.collaborate, case, False)
            for a, b in zip(got, call(K.collaborate, dict(case, step=torch.tensor(case["step"], device="cuda")),
                                      False)):
                assert torch.equal(a, b)


@needs_cuda
@pytest.mark.parametrize("kernel", _gpu_kernels())
def test_kernel_gpu_cuda_graph_replays_every_step(monkeypatch, kernel):
    if kernel == "none":
        pytest.skip("neither triton nor cuda-python is installed")
    monkeypatch.setenv("CDX_KERNEL", kernel)
    case = make_case(2, 2, 3, 64, 64, torch.float16, seed=61, shaped=True, device="cuda",
                     x_dtype=torch.float32)
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    out = poisoned_out(case, True)
    call(K.collaborate, dict(case, step=step), True, out=out)  # warm-up: compile and load outside capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call(K.collaborate, dict(case, step=step), True, out=out)
    for i in range(case["coeffs"].shape[0]):
        step.fill_(i)
        for buf in out:
            buf.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(dict(case, step=i), out, True)
