"""How a GPU variant runs the loop (`LoopRun`: the plain loop or a GraphedLoop, eager on a CPU), end to end
through the recipe, and the settings it runs under; `variants.py` lists the variants and measures them."""
from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

import torch

from ..kernels import collaborate_torch
from ..sampling.graph.capture import GraphedLoop, capture, graphed_loop
from ..sampling.graph.plan import plan_loop
from ..sampling.pipeline import LoopInputs, decode, loop, prepare
from ..sampling.request import Request

if TYPE_CHECKING:
    from .variants import Variant


class LoopRun:
    """How a variant runs the N steps: the plain `sample`, or a GraphedLoop (eager on a CPU)."""

    def __init__(self, variant: Variant, dev: torch.device):
        self.variant = variant
        self.mode = variant.loop if dev.type == "cuda" else "eager"
        self.combine = collaborate_torch if variant.unfused and variant.loop != "plain" else None

    def loop(self, runner, li: LoopInputs) -> GraphedLoop:
        plan = plan_loop(runner, *li.args())
        return graphed_loop(runner, plan, self.mode, self.variant.streams, self.combine)

    def __call__(self, runner, li: LoopInputs):
        if self.variant.loop == "plain":
            return loop(runner, li, cuda_graph=False)
        return self.loop(runner, li)(li.x_T, li.noise, li.contexts, li.table, li.shaping)

    def timed(self, runner, li: LoopInputs, sync) -> tuple[float, float]:
        """(host ms, total ms) of the N steps; the host time stops when the last step is issued."""
        if self.variant.loop == "plain":
            sync()
            t0 = time.perf_counter()
            loop(runner, li, cuda_graph=False)
        else:
            graphed = self.loop(runner, li)
            graphed.load(li.x_T, li.noise, li.contexts, li.table, li.shaping)
            graphed.prepare()
            sync()
            t0 = time.perf_counter()
            graphed.replay()
        host = time.perf_counter() - t0
        sync()
        return host * 1000, (time.perf_counter() - t0) * 1000


def end_to_end(runner, run: LoopRun, req: Request) -> torch.Tensor:
    """Encoders, the loop, the VAE decoder, and the image on the host: (B, 3, H, W) float32."""
    res = run(runner, prepare(runner, req))
    return decode(runner, res.z0)[0].float().cpu()


def networks_ms(runner, li: LoopInputs, streams: int, dev: torch.device, iters: int) -> float:
    """The step's networks alone, per step: replayed from a CUDA graph (eager on a CPU)."""
    plan = plan_loop(runner, *li.args())
    graphed = GraphedLoop(runner, plan, "eager", streams)
    graphed.load(li.x_T, li.noise, li.contexts, li.table, li.shaping)  # step 0: t_0 is in range
    if dev.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            graphed.networks()
        return (time.perf_counter() - t0) * 1000 / iters
    with torch.inference_mode():
        graphed.networks()  # warm-up outside the capture
    graph = capture(graphed.networks, dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize(dev)
    del graph
    return start.elapsed_time(end) / iters


@contextlib.contextmanager
def settings(kernel: str | None = None, tf32: bool | None = None, cudnn_benchmark: bool | None = None):
    """Temporarily force the collaborate kernel (CDX_KERNEL), TF32 and cuDNN autotuning."""
    saved = (os.environ.get("CDX_KERNEL"), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    try:
        if kernel is not None:
            os.environ["CDX_KERNEL"] = kernel
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        if cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = cudnn_benchmark
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("CDX_KERNEL", None)
        else:
            os.environ["CDX_KERNEL"] = saved[0]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]
        torch.backends.cudnn.benchmark = saved[3]


def variant_settings(variant: Variant):
    if variant.runner == "reference":  # the official defaults: no autotuning, TF32 only where torch allows it
        return settings(kernel="torch", cudnn_benchmark=False)
    return settings(cudnn_benchmark=True)


def weights_mb(runner) -> float | None:
    model = getattr(runner, "model", None)
    if model is None:
        return None
    return round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1)
