"""Fused collaborate kernels vs the unfused torch reference: time per call and achieved bandwidth.

    python benchmarks/bench_kernel.py [--json PATH] [--dtype fp16] [--iters 200]
    python benchmarks/bench_kernel.py --cpu            # the CPU reference only

Cases: the official latent 3x64x64 with M = 2 (official shaping on) at B = 1, 4, 16, and a large B
whose traffic (about 2 GiB) dwarfs the L2 cache. Bandwidth counts only the bytes the step needs
(read M eps + M logits + x + noise, write eps + x_prev) against the theoretical peak of the device
and a measured device-to-device copy. "eager" times one Python call per step (launcher overhead
included); "graph" replays the call captured in a CUDA graph with the step read on the device, as
the sampler would run it. Times are medians of CUDA-event pairs after warm-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdx.kernels import available_kernels, collaborate_torch  # noqa: E402
from cdx.kernels.reference import collaborate_reference  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
OFFICIAL = (3, 64, 64)  # latent C, H, W
M = 2
STEPS = 50


def needed_bytes(m, b, c, h, w, eps_dtype, x_dtype) -> int:
    """Bytes a fused step must move: read M eps + M logits + x + noise, write eps + x_prev."""
    e, xs = torch.tensor([], dtype=eps_dtype).element_size(), torch.tensor([], dtype=x_dtype).element_size()
    pix = b * h * w
    return pix * (m * c * e + m * e + 2 * c * xs) + pix * c * (e + xs)


def make_inputs(b, eps_dtype, x_dtype, device):
    c, h, w = OFFICIAL
    g = torch.Generator(device=device).manual_seed(b)
    rnd = lambda *s, dt: torch.randn(*s, generator=g, device=device, dtype=torch.float32).to(dt)  # noqa: E731
    return dict(
        eps=rnd(M, b, c, h, w, dt=eps_dtype), logits=rnd(M, b, 1, h, w, dt=eps_dtype),
        x=rnd(b, c, h, w, dt=x_dtype), noise=rnd(b, c, h, w, dt=x_dtype),
        coeffs=torch.rand(STEPS, 6, generator=g, device=device) + 0.25,
        step=torch.tensor(STEPS // 2, device=device),
        decay=torch.rand(STEPS, M, generator=g, device=device), scale=torch.tensor([2.0, 1.0], device=device),
    )


def runner(kernel: str, inp: dict):
    """A no-argument call of one implementation, writing into fixed buffers where it can."""
    args = (inp["eps"], inp["logits"], inp["x"], inp["noise"], inp["coeffs"], inp["step"])
    kw = dict(decay=inp["decay"], scale=inp["scale"], receiver=-1)
    if kernel == "torch":
        return lambda: collaborate_reference(*args, **kw)
    out = (torch.empty_like(inp["x"], dtype=inp["eps"].dtype), torch.empty_like(inp["x"]))
    if kernel == "triton":
        from cdx.kernels.triton_collaborate import collaborate_triton as fn
    elif kernel == "cuda":
        from cdx.kernels.cuda_collaborate import collaborate_cuda as fn
    else:
        fn = collaborate_torch
    return lambda: fn(*args, **kw, out=out)


def time_events(fn, warmup: int, iters: int) -> float:
    """Median milliseconds of fn() between CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in pairs:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in pairs)


def time_graph(fn, warmup: int, iters: int) -> float | None:
    """Median milliseconds of one replay of fn() captured in a CUDA graph (None if not capturable)."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:  # e.g. an op that syncs during capture
        print(f"  (graph capture failed: {type(exc).__name__}: {str(exc)[:80]})")
        torch.cuda.synchronize()
        return None
    return time_events(graph.replay, warmup, iters)


def time_cpu(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_bandwidth_gbs(index: int) -> float | None:
    """Theoretical DRAM bandwidth: 2 (double data rate) x memory clock x bus width."""
    props = torch.cuda.get_device_properties(index)
    clock_khz, bus_bits = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if not (clock_khz and bus_bits):
        try:
            from cuda.bindings import driver
        except ImportError:
            try:
                from cuda import cuda as driver
            except ImportError:
                return None
        try:
            attr = driver.CUdevice_attribute
            _, clock_khz = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, index)
            _, bus_bits = driver.cuDeviceGetAttribute(attr.CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, index)
        except Exception:
            return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9 if clock_khz and bus_bits else None


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Measured device-to-device copy (read + write), the practical ceiling."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = time_events(lambda: dst.copy_(src), 3, 20)
    return 2 * nbytes / (ms * 1e-3) / 1e9


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="eps/logits dtype (x is fp32)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--cpu", action="store_true", help="time the torch reference on the CPU only")
    ap.add_argument("--large-gib", type=float, default=2.0, help="traffic of the large case")
    a = ap.parse_args(argv)
    eps_dtype, x_dtype = DTYPES[a.dtype], torch.float32
    c, h, w = OFFICIAL
    per_image = needed_bytes(M, 1, c, h, w, eps_dtype, x_dtype)
    results = dict(dtype=a.dtype, x_dtype="fp32", m=M, shape=OFFICIAL, rows=[])

    if a.cpu:
        results["device"] = "cpu"
        for b in (1, 4, 16):
            inp = make_inputs(b, eps_dtype, x_dtype, "cpu")
            ms = time_cpu(runner("torch", inp), 3, max(5, a.iters // 20))
            gbs = needed_bytes(M, b, c, h, w, eps_dtype, x_dtype) / (ms * 1e-3) / 1e9
            results["rows"].append(dict(batch=b, kernel="torch", mode="eager", ms=ms, gbs=gbs))
            print(f"cpu  B={b:<5} torch  eager {ms:9.3f} ms {gbs:8.2f} GB/s")
    else:
        if not torch.cuda.is_available():
            print("bench_kernel: no CUDA device here, nothing timed (pass --cpu for the CPU reference)")
            return 0
        index = torch.cuda.current_device()
        peak, copy = peak_bandwidth_gbs(index), copy_bandwidth_gbs()
        free, _ = torch.cuda.mem_get_info()
        large = int(min(a.large_gib * 2**30, free / 3) // per_image)
        results.update(device=torch.cuda.get_device_name(index), peak_gbs=peak, copy_gbs=copy)
        print(f"{results['device']}: peak {peak or float('nan'):.0f} GB/s, copy {copy:.0f} GB/s; "
              f"eps {a.dtype}, x fp32, M={M}, latent {c}x{h}x{w}")
        kernels = available_kernels("cuda")  # torch first, then the fused ones
        for b in (1, 4, 16, min(large, 65535)):
            inp = make_inputs(b, eps_dtype, x_dtype, "cuda")
            nbytes = needed_bytes(M, b, c, h, w, eps_dtype, x_dtype)
            for kernel in kernels:
                fn = runner(kernel, inp)
                for mode in ("eager", "graph"):
                    ms = time_events(fn, a.warmup, a.iters) if mode == "eager" else time_graph(fn, a.warmup, a.iters)
                    if ms is None:
                        continue
                    gbs = nbytes / (ms * 1e-3) / 1e9
                    row = dict(batch=b, kernel=kernel, mode=mode, ms=ms, gbs=gbs, bytes=nbytes,
                               pct_peak=100 * gbs / peak if peak else None, pct_copy=100 * gbs / copy)
                    results["rows"].append(row)
                    pct = f"{row['pct_peak']:5.1f}% peak" if peak else ""
                    print(f"B={b:<5} {kernel:6} {mode:5} {ms:9.4f} ms {gbs:8.1f} GB/s {pct} "
                          f"{row['pct_copy']:5.1f}% copy")
            del inp
            torch.cuda.empty_cache()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
