"""Latency benchmarks per network, per collaborative step and end to end, for any runner."""
from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch

from ..export.onnx_export import random_inputs
from .pipeline import Request, generate
from .runner import Runner
from .sampler import draw_noise, make_shaping, sample
from .schedule import alphas_cumprod, linear_betas, make_table


@dataclass
class BenchResult:
    backend: str
    preset: str
    device: str
    batch: int
    steps: int
    stage: str  # a network name, "step" or "end_to_end"
    median_ms: float
    runs: int


def machine_info() -> dict:
    import onnxruntime

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def device_name(runner: Runner) -> str:
    if runner.device.type == "cuda":
        return torch.cuda.get_device_name(runner.device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _sync(runner: Runner) -> None:
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)


def time_median(fn: Callable[[], object], runner: Runner, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(runner)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(runner)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def bench_runner(runner: Runner, preset: str, batch: int, steps: int, runs: int, warmup: int,
                 stages: tuple[str, ...] = ("networks", "step", "end_to_end"), mask: str | None = None,
                 text: str = "This person has brown hair.", log: Callable[[str], None] | None = None
                 ) -> list[BenchResult]:
    cfg = runner.cfg
    dev = device_name(runner)
    results = []

    def record(stage, ms, n):
        results.append(BenchResult(runner.backend, preset, dev, batch, steps, stage, round(ms, 3), n))
        if log:
            log(f"{runner.backend:<12} {stage:<14} {ms:10.2f} ms")

    g = torch.Generator().manual_seed(0)
    if "networks" in stages:
        for name, spec in runner.specs.items():
            inputs = {k: v.to(runner.device) for k, v in random_inputs(spec, batch, g).items()}
            record(name, time_median(lambda: runner.run(name, inputs), runner, runs, warmup), runs)
    if "step" in stages:
        names = [m.name for m in cfg.modalities]
        contexts = [runner.run(f"{n}_encoder", random_inputs(runner.specs[f"{n}_encoder"], batch, g))["context"]
                    for n in names]
        table = cfg.step_table(1)
        shaping = make_shaping(cfg, names, table, cfg.timesteps)
        x_T, noise = draw_noise(0, batch, (cfg.latent_channels, *cfg.latent_size), 1)
        ms = time_median(lambda: sample(runner, names, contexts, x_T, noise, table, shaping), runner, runs, warmup)
        record("step", ms, runs)
    if "end_to_end" in stages:
        req = Request(text=text, mask=mask, seed=0, steps=steps, batch=batch)
        e2e_runs = max(1, min(runs, 3))
        ms = time_median(lambda: generate(runner, cfg, req), runner, e2e_runs, min(warmup, 1))
        record("end_to_end", ms, e2e_runs)
    return results


def report(results: list[BenchResult]) -> dict:
    return {"machine": machine_info(), "results": [asdict(r) for r in results]}


def table_text(results: list[BenchResult]) -> str:
    backends = sorted({r.backend for r in results}, key=[r.backend for r in results].index)
    stages = sorted({r.stage for r in results}, key=[r.stage for r in results].index)
    by = {(r.backend, r.stage): r.median_ms for r in results}
    lines = [f"{'stage':<16}" + "".join(f"{b:>14}" for b in backends)]
    for s in stages:
        lines.append(f"{s:<16}" + "".join(f"{by[(b, s)]:>11.1f} ms" if (b, s) in by else f"{'-':>14}"
                                          for b in backends))
    if len(backends) >= 2 and ("end_to_end" in stages):
        base = by.get((backends[0], "end_to_end"))
        for b in backends[1:]:
            if base and (b, "end_to_end") in by:
                lines.append(f"end-to-end speed-up of {b} over {backends[0]}: {base / by[(b, 'end_to_end')]:.2f}x")
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
