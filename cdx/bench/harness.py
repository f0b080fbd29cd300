"""Latency benchmarks per network, per collaborative step and end to end, for several runners side by side.

The runners are timed in turn, one run of each per round (round robin), so that a machine shared with
other work slows every backend alike; each stage's number is the median over the rounds. Besides the
medians, a report says where the time goes: the encode / loop / decode split of a request, the networks'
own time inside the loop (calls per run x their median), what is left per step (per-call overhead and
the ops between the networks), the first call (compiling, cache import) and the threads each runner uses.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from ..evaluation.metrics import psnr
from ..export.onnx_export import random_inputs
from ..sampling.loop import draw_noise
from ..sampling.pipeline import generate, loop, loop_inputs
from ..sampling.request import make_request
from ..sampling.runner import Runner
from ..sampling.settings import Sampling

DEFAULT_TEXT = "This person has brown hair."


@dataclass
class BenchResult:
    backend: str
    preset: str
    device: str
    batch: int
    steps: int
    stage: str  # a network name, "step", "end_to_end", "first_call", or a breakdown of end_to_end
    median_ms: float
    runs: int


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def cpu_flags() -> list[str]:
    """The vector extensions that decide CPU kernel speed (from /proc/cpuinfo where there is one)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split()
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "vnni", "f16c")))


def cpu_model() -> str:
    try:
        return next(line for line in open("/proc/cpuinfo") if line.startswith("model name")).split(":")[1].strip()
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "cpu_flags": cpu_flags(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    for dist in ("onnxruntime", "openvino", "triton", "cuda-python", "tensorrt"):
        info[dist.replace("-", "_")] = _version(dist)
    info["env"] = {k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "GOMP_", "KMP_"))}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]  # how shared the machine was
    except OSError:
        pass
    if torch.cuda.is_available():
        from ..kernels import select_kernel

        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), collaborate_kernel=select_kernel("cuda"),
                    matmul_tf32_default=torch.backends.cuda.matmul.allow_tf32,
                    cudnn_tf32_default=torch.backends.cudnn.allow_tf32)
    return info


def device_label(device: torch.device) -> str:
    """The card's name, or the CPU's model and core count."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"


def device_name(runner: Runner) -> str:
    return device_label(runner.device)


def _sync(runner: Runner) -> None:
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)


def timed(fn: Callable[[], object], runner: Runner) -> float:
    _sync(runner)
    t0 = time.perf_counter()
    fn()
    _sync(runner)
    return (time.perf_counter() - t0) * 1000


def bench_request(cfg, batch: int, sampling: Sampling | int, mask=None, text: str = DEFAULT_TEXT):
    """The end-to-end request: every modality of the model conditioned (a random label map where no mask
    is given, so that both collaborators and both diffusers run as in a real request)."""
    if mask is None and any(m.kind == "mask" for m in cfg.modalities):
        mask = np.random.default_rng(0).integers(0, 19, (32, 32)).astype(np.uint8)
    has = {m.kind for m in cfg.modalities}
    if not has <= {"text", "mask"}:
        raise ValueError(f"cdx bench conditions text and mask only, not {', '.join(sorted(has - {'text', 'mask'}))}")
    sampling = sampling if isinstance(sampling, Sampling) else Sampling(steps=sampling)  # a number: DDIM steps
    return make_request(cfg, text=text if "text" in has else None, mask=mask if "mask" in has else None, seed=0,
                        sampling=sampling, batch=batch)


def _step_call(runner: Runner, batch: int, g: torch.Generator):
    cfg = runner.cfg
    names = [m.name for m in cfg.modalities]
    contexts = [runner.run(f"{n}_encoder", random_inputs(runner.specs[f"{n}_encoder"], batch, g))["context"]
                for n in names]
    table = cfg.step_table(1)
    li = loop_inputs(cfg, table, names, contexts, draw_noise(0, batch, (cfg.latent_channels, *cfg.latent_size), 1))
    return lambda: loop(runner, li, cuda_graph=False)


def bench_runners(runners: dict[str, Runner], preset: str, batch: int, sampling: Sampling | int, runs: int,
                  warmup: int, stages: tuple[str, ...] = ("networks", "step", "end_to_end"), mask=None,
                  log: Callable[[str], None] | None = None, images: dict | None = None) -> tuple[list, dict]:
    """(results, where the time goes per backend) for every runner, stage by stage, round robin (`images`, a
    dict, receives each runner's end-to-end images)."""
    sampling = sampling if isinstance(sampling, Sampling) else Sampling(steps=sampling)  # a number: DDIM steps
    results: list[BenchResult] = []
    detail: dict[str, dict] = {name: {"threads": getattr(r, "threads", torch.get_num_threads())}
                               for name, r in runners.items()}

    def record(name, stage, ms, n):
        results.append(BenchResult(name, preset, device_name(runners[name]), batch, sampling.steps, stage,
                                   round(ms, 3), n))
        if log:
            log(f"{name:<16} {stage:<26} {ms:10.2f} ms")

    def rounds(calls: dict[str, Callable[[], object]], stage: str, n: int = runs, first: bool = False):
        for name, fn in calls.items():
            ms = timed(fn, runners[name])
            if first:
                record(name, "first_call" if stage == "end_to_end" else f"first_call_{stage}", ms, 1)
            for _ in range(max(0, warmup - 1)):
                fn()
        times = {name: [] for name in calls}
        for _ in range(n):
            for name, fn in calls.items():
                times[name].append(timed(fn, runners[name]))
        for name in calls:
            record(name, stage, statistics.median(times[name]), n)
        return {name: statistics.median(t) for name, t in times.items()}

    net_ms: dict[str, dict[str, float]] = {name: {} for name in runners}
    if "end_to_end" in stages:  # first: its first call is the cold start (compiling, cache import)
        req = None
        calls, breakdown = {}, {name: [] for name in runners}
        images = {} if images is None else images
        for name, r in runners.items():
            req = bench_request(r.cfg, batch, sampling, mask)

            def run(r=r, name=name, req=req):
                out = generate(r, req)
                breakdown[name].append(out.timings)
                images[name] = out.images

            calls[name] = run
        e2e = rounds(calls, "end_to_end", first=True)
        n_steps = req.num_steps
        for name in runners:
            timings = breakdown[name][-runs:]
            for key in ("encode_ms", "loop_ms", "decode_ms"):
                record(name, key.removesuffix("_ms"), statistics.median(t[key] for t in timings), runs)
            detail[name]["loop_steps"] = n_steps
            detail[name]["end_to_end_ms"] = e2e[name]
        compare_images(images, detail, log)
    if "networks" in stages:
        g = torch.Generator().manual_seed(0)
        for name, r in runners.items():
            for net, spec in r.specs.items():
                inputs = {k: v.to(r.device) for k, v in random_inputs(spec, batch, g).items()}
                times = [timed(lambda: r.run(net, inputs), r) for _ in range(warmup + runs)][warmup:]
                net_ms[name][net] = statistics.median(times)
                record(name, net, net_ms[name][net], runs)
    if "step" in stages:
        g = torch.Generator().manual_seed(0)
        step = rounds({name: _step_call(r, batch, g) for name, r in runners.items()}, "step")
        for name, r in runners.items():
            detail[name]["step_ms"] = step[name]
            per_step = sum(ms for net, ms in net_ms[name].items() if r.specs[net].kind in ("unet", "diffuser"))
            if per_step:
                detail[name]["networks_per_step_ms"] = round(per_step, 3)  # called one by one, each timed
                detail[name]["outside_networks_per_step_ms"] = round(step[name] - per_step, 3)
                loop = next((x.median_ms for x in results if (x.backend, x.stage) == (name, "loop")), None)
                if loop is not None:  # the loop's networks called one by one vs the loop as it ran
                    detail[name]["networks_in_loop_ms"] = round(per_step * detail[name]["loop_steps"], 3)
                    detail[name]["outside_networks_in_loop_ms"] = round(loop - detail[name]["networks_in_loop_ms"], 3)
    return results, detail


def compare_images(images: dict[str, np.ndarray], detail: dict, log=None) -> None:
    """Each backend's image against torch's (else the first one's): the same request and seed on every backend
    give the same image, to rounding; the PSNR goes into `detail`."""
    ref = "torch" if "torch" in images else next(iter(images), None)
    for name, im in images.items():
        if name != ref:
            db = psnr(np.asarray(im), np.asarray(images[ref]))
            detail[name][f"psnr_vs_{ref}_db"] = round(db, 2) if np.isfinite(db) else "identical"
            if log:
                log(f"{name:<16} image vs {ref}: " + (f"PSNR {db:.2f} dB" if np.isfinite(db) else "identical"))


def report(results: list[BenchResult], detail: dict | None = None, **extra) -> dict:
    return {"machine": machine_info(), "results": [asdict(r) for r in results], "where_the_time_goes": detail or {},
            **extra}


def table_text(results: list[BenchResult], reference: str = "torch") -> str:
    backends = sorted({r.backend for r in results}, key=[r.backend for r in results].index)
    stages = sorted({r.stage for r in results}, key=[r.stage for r in results].index)
    by = {(r.backend, r.stage): r.median_ms for r in results}
    lines = [f"{'stage':<26}" + "".join(f"{b:>16}" for b in backends)]
    for s in stages:
        lines.append(f"{s:<26}" + "".join(f"{by[(b, s)]:>13.1f} ms" if (b, s) in by else f"{'-':>16}"
                                          for b in backends))
    base_name = reference if reference in backends else backends[0]
    for stage in ("end_to_end", "step"):
        base = by.get((base_name, stage))
        for b in backends:
            if b != base_name and base and (b, stage) in by:
                lines.append(f"{stage} speed-up of {b} over {base_name}: {base / by[(b, stage)]:.2f}x")
    return "\n".join(lines)


def plot(results: list[BenchResult], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({r.backend for r in results}, key=[r.backend for r in results].index)
    stages = sorted({r.stage for r in results}, key=[r.stage for r in results].index)
    fig, ax = plt.subplots(figsize=(max(6, len(stages) * 1.2), 4))
    width = 0.8 / len(backends)
    for i, b in enumerate(backends):
        vals = [next((r.median_ms for r in results if r.backend == b and r.stage == s), 0) for s in stages]
        ax.bar([j + i * width for j in range(len(stages))], vals, width, label=b)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(stages))], stages, rotation=30, ha="right")
    ax.set_ylabel("median latency (ms)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
