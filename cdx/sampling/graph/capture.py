"""The collaborative loop with no host in it: one step (every collaborator and diffuser, then the fused
collaborate kernel) captured as a CUDA graph and replayed for every step, or the whole loop captured
at once.

Everything a step reads lives in static device buffers filled once per request (`GraphedLoop.load`):
x, the per-step tables packed in one float32 upload (`pack_tables`), the timesteps, the noise of every
step (N, B, C, h, w) and the contexts. The step index is a device int64 that the step itself reads
(t_i and noise_i are gathered by it, the fused kernel reads coeffs[i] through it) and increments at
its end, so the same graph serves every step. The step body (`GraphedLoop.step`) is the same code
whether it is captured or run eagerly, which is how the CPU tests check it against `sampler.sample`.
Influence reuse (the diffusers every K steps, their logits kept in the static stack between) is a schedule
known before the loop: mode "step" captures a second graph without the diffusers and replays it at the
steps in between, mode "loop" records each step as it will run.

Any runner whose networks can be launched on the current stream without synchronising qualifies: a
runner with `enqueue(network, inputs)` on a CUDA device (the torch runners, TensorRTRunner).
Where capture is impossible, `sample_graphed` runs the plain loop after a one-line notice.
"""
from __future__ import annotations

import warnings
import weakref
from collections import OrderedDict
from typing import Callable, Sequence

import numpy as np
import torch

from ...kernels import collaborate, select_kernel
from ..runner import Runner
from ..loop import LoopResult, Shaping, sample
from ...models.schedule import StepTable
from .plan import LoopPlan, _Buffers, pack_tables, plan_loop
from ..history import History
from ..step import CollaborativeStep

MODES = ("step", "loop", "eager")
CACHE_PER_RUNNER = 2  # captured loops kept per runner (each holds its graph's memory pool)


class GraphFallbackWarning(RuntimeWarning):
    """The CUDA-graph loop could not be used; the plain loop ran instead."""


# ----------------------------------------------------------------------------- capture

def launcher(runner: Runner, capturable: bool = True) -> Callable | None:
    """`f(network, inputs) -> outputs` launching on the current stream, or None if the runner has none.

    With capturable=False (eager replays) a runner's plain `run` is accepted too."""
    fn = getattr(runner, "enqueue", None)
    if callable(fn):
        return fn
    if not capturable and callable(getattr(runner, "run", None)):
        return runner.run
    return None


def unavailable_reason(runner: Runner) -> str | None:
    """Why this runner's loop cannot be captured here, or None."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    backend, dev = getattr(runner, "backend", type(runner).__name__), getattr(runner, "device", None)
    if dev is None or torch.device(dev).type != "cuda":
        return f"the {backend} runner runs on {dev}, not on a CUDA device"
    if launcher(runner) is None:
        return f"the {backend} runner cannot enqueue its networks on a stream"
    return None


def _abandon(graph) -> None:
    try:
        graph.capture_end()
    except RuntimeError:
        pass  # an invalidated capture refuses to end; the exception that invalidated it is re-raised


def capture(fn: Callable[[], object], device: torch.device):
    """Record the launches of `fn` on a fresh stream into a CUDA graph; nothing runs. Raises on failure."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device)
    torch.cuda.synchronize(device)
    with torch.cuda.device(device), torch.cuda.stream(stream), torch.inference_mode():
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            fn()
        except BaseException:
            _abandon(graph)
            raise
        graph.capture_end()
    return graph


# ----------------------------------------------------------------------------- the loop

class GraphedLoop:
    """Static buffers and one collaborative step that reads its index on the device.

    mode "step": the step is captured once and replayed N times; "loop": N steps captured in one graph;
    "eager": the step runs as plain launches (any device: the CPU emulation the tests use).
    streams > 1 spreads the 2M independent networks of a step over that many streams (CUDA only).
    combine defaults to the dispatcher `cdx.kernels.collaborate`; step_on_device (default: whether the
    chosen kernel reads the step from memory) passes the device step to it, else coeffs[i] and decay[i]
    are gathered on the device into one-row tables and the kernel is given step 0.
    """

    def __init__(self, runner: Runner, plan: LoopPlan, mode: str = "step", streams: int = 1,
                 combine: Callable | None = None, step_on_device: bool | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.runner, self.plan, self.mode = runner, plan, mode
        self.device = torch.device(runner.device)
        if mode != "eager" and self.device.type != "cuda":
            raise ValueError(f"mode {mode!r} needs a CUDA runner (this one runs on {self.device}); use 'eager'")
        self._launch = launcher(runner, capturable=mode != "eager")
        if self._launch is None:
            raise ValueError(f"the {getattr(runner, 'backend', type(runner).__name__)} runner cannot enqueue "
                             "its networks")
        self.combine = combine or collaborate
        if step_on_device is None:
            step_on_device = combine is None and select_kernel(self.device) != "torch"
        self.step_on_device = step_on_device
        self.buf = _Buffers(plan, self.device)
        self.history = History(self.buf.x) if self.buf.history is not None else None
        streams = [torch.cuda.Stream(self.device) for _ in range(streams)] if streams > 1 and \
            self.device.type == "cuda" else []
        pairs = runner.pair_calls(plan.names) if hasattr(runner, "pair_calls") else {}
        self._step = CollaborativeStep(self._launch, plan.names, self.buf.contexts, self.buf.eps, self.buf.logits,
                                       streams, self.combine, pairs)
        self.graph = self.graph_reuse = None  # the step's graph; with influence reuse, the one without diffusers

    def refreshes(self, i: int) -> bool:
        """Whether step i runs the dynamic diffusers (influence reuse: every K-th step from 0)."""
        return i % self.plan.influence_interval == 0

    def networks(self) -> None:
        """The step's 2M networks alone at (x, t_i), outputs into the stacks (what benchmarks time)."""
        b = self.buf
        torch.index_select(b.timesteps, 0, b.step, out=b.t)
        self._step.networks(b.x, b.t.expand(self.plan.batch))

    def step(self) -> None:
        """The collaborative step (step.py) on the static buffers at the device's step i; then i += 1 there."""
        b, p = self.buf, self.plan
        torch.index_select(b.timesteps, 0, b.step, out=b.t)  # t_i read on the device
        torch.index_select(b.noise, 0, b.step, out=b.noise_i)  # noise[i]: (1, B, C, h, w)
        if self.step_on_device:
            coeffs, decay, step = b.coeffs, b.decay, b.step0  # the kernel reads row i itself
        else:
            torch.index_select(b.coeffs, 0, b.step, out=b.coeffs_row)
            if b.decay is not None:
                torch.index_select(b.decay, 0, b.step, out=b.decay_row)
            coeffs, decay, step = b.coeffs_row, b.decay_row if b.decay is not None else None, 0
        out = (b.eps_out, b.x, b.w) if p.influence else (b.eps_out, b.x)
        if self.history is not None:
            b.x_in.copy_(b.x)  # the kernel updates x in place; the history terms need it as it was
        self._step(b.x, b.t.expand(p.batch), b.noise_i[0], coeffs, step, decay, b.scale, p.receiver,
                   return_weights=p.influence, out=out)
        if self.history is not None:
            torch.index_select(b.coeffs, 0, b.step, out=b.coeffs_row)
            torch.index_select(b.history, 0, b.step, out=b.history_row)
            self.history.apply(b.x, b.x_in, b.eps_out, b.coeffs_row[0], b.history_row[0])
        if p.influence:
            b.influence.index_copy_(0, b.step, b.w.unsqueeze(0))
        if p.trace:
            b.trace_eps.index_copy_(0, b.step, b.eps_out.unsqueeze(0))
            b.trace_x.index_copy_(0, b.step, b.x.unsqueeze(0))
        b.step.add_(1)

    def _run(self, refresh: bool) -> None:
        self._step.influence_refresh = refresh
        try:
            self.step()
        finally:
            self._step.influence_refresh = True

    def _body(self, refresh: bool = True) -> None:
        if self.mode == "loop":
            for i in range(self.plan.steps):
                self._run(self.refreshes(i))
        else:
            self._run(refresh)

    # -- host side
    def load(self, x_T: torch.Tensor, noise: torch.Tensor, contexts: Sequence[torch.Tensor], table: StepTable,
             shaping: Shaping | None = None) -> None:
        """Upload one request: tables, timesteps, x_T, all-steps noise, contexts; step = 0."""
        b, p = self.buf, self.plan
        packed, layout = pack_tables(table, shaping, p.m)
        if layout != p.layout or tuple(x_T.shape) != (p.batch, *p.latent) or len(contexts) != p.m:
            raise ValueError("this request does not fit the loop's buffer plan (make a new GraphedLoop)")
        if (shaping.receiver if shaping is not None else -1) != p.receiver:
            raise ValueError(f"receiver {shaping.receiver if shaping else -1} differs from the plan's {p.receiver}")
        b.tables.copy_(torch.from_numpy(packed), non_blocking=True)
        b.timesteps.copy_(torch.from_numpy(np.ascontiguousarray(table.timesteps, dtype=np.int64)), non_blocking=True)
        b.x.copy_(x_T, non_blocking=True)
        b.noise.copy_(noise, non_blocking=True)
        if self.history is not None:
            self.history.x0.zero_()
        for dst, src in zip(b.contexts, contexts):
            dst.copy_(src, non_blocking=True)
        b.step.zero_()

    def prepare(self) -> None:
        """Warm up once (lazy initialisation must not happen inside a capture), then capture. Needs load()."""
        if self.mode == "eager" or self.graph is not None:
            return
        b = self.buf
        x_loaded = b.x.clone()
        main = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(main)
        with torch.cuda.stream(side), torch.inference_mode():
            self.step()
        main.wait_stream(side)
        b.x.copy_(x_loaded)  # undo the warm-up step
        b.step.zero_()
        if self.history is not None:
            self.history.x0.zero_()
        # a runner may capture through its own API (TensorRT: cuda-python); else torch's CUDA graph
        record = getattr(self.runner, "capture", capture)
        self.graph = record(self._body, self.device)
        if self.mode == "step" and self.plan.influence_interval > 1:
            self.graph_reuse = record(lambda: self._body(refresh=False), self.device)

    def replay(self, callback: Callable[[int], None] | None = None) -> None:
        """Run the N steps from step 0 on the loaded request; no host synchronisation."""
        self.buf.step.zero_()
        n = self.plan.steps
        if self.mode == "eager":
            with torch.inference_mode():
                for i in range(n):
                    self._run(self.refreshes(i))
                    if callback is not None:
                        callback(i)
        elif self.mode == "step":
            for i in range(n):
                (self.graph if self.refreshes(i) else self.graph_reuse).replay()
                if callback is not None:
                    callback(i)  # the host runs ahead: the step is queued, not necessarily done
        else:
            self.graph.replay()
            for i in range(n if callback is not None else 0):
                callback(i)

    def result(self) -> LoopResult:
        b, p = self.buf, self.plan
        return LoopResult(
            z0=b.x.clone(),
            influence=b.influence.clone() if p.influence else None,
            trace={"eps": b.trace_eps.clone(), "x": b.trace_x.clone()} if p.trace else None,
        )

    def __call__(self, x_T, noise, contexts, table, shaping=None, callback=None) -> LoopResult:
        self.load(x_T, noise, contexts, table, shaping)
        self.prepare()
        self.replay(callback)
        return self.result()


# ----------------------------------------------------------------------------- the sampler entry point

_LOOPS: "weakref.WeakKeyDictionary[object, OrderedDict]" = weakref.WeakKeyDictionary()


def graphed_loop(runner: Runner, plan: LoopPlan, mode: str = "step", streams: int = 1,
                 combine: Callable | None = None) -> GraphedLoop:
    """The runner's loop for `plan` (captured graphs are kept, up to CACHE_PER_RUNNER per runner)."""
    key = (plan, mode, streams, combine)
    try:
        loops = _LOOPS.setdefault(runner, OrderedDict())
    except TypeError:  # a runner that cannot be weakly referenced is not cached
        return GraphedLoop(runner, plan, mode, streams, combine)
    if key in loops:
        loops.move_to_end(key)
        return loops[key]
    while len(loops) >= CACHE_PER_RUNNER:
        loops.popitem(last=False)
    loops[key] = GraphedLoop(runner, plan, mode, streams, combine)
    return loops[key]


def forget(runner: Runner) -> None:
    """Drop the runner's captured loops (call after replacing its weights' storage)."""
    _LOOPS.pop(runner, None)


def _notice(why: str) -> None:
    line = " ".join(str(why).split())[:240]
    warnings.warn(f"cuda graph: {line}; running the plain loop", GraphFallbackWarning, stacklevel=3)


def sample_graphed(
    runner: Runner,
    names: Sequence[str],
    contexts: Sequence[torch.Tensor],
    x_T: torch.Tensor,
    noise: torch.Tensor,
    table: StepTable,
    shaping: Shaping | None = None,
    return_influence: bool = False,
    trace: bool = False,
    callback: Callable[[int], None] | None = None,
    *,
    mode: str = "step",
    streams: int = 1,
    combine: Callable | None = None,
    influence_interval: int = 1,
) -> LoopResult:
    """`sampler.sample` replayed from a CUDA graph (same arguments, same result); the plain loop, after a
    one-line GraphFallbackWarning, where the loop cannot be captured."""
    plan = plan_loop(runner, names, contexts, x_T, noise, table, shaping, return_influence, trace,
                     influence_interval)
    why = unavailable_reason(runner)
    if why is None:
        try:
            loop = graphed_loop(runner, plan, mode, streams, combine)
            loop.load(x_T, noise, contexts, table, shaping)
            loop.prepare()
        except Exception as exc:  # capture refused (a sync inside a network, an unsupported op, ...)
            forget(runner)
            first = (str(exc).strip().splitlines() or [""])[0]
            why = f"capture failed ({type(exc).__name__}: {first})"
    if why is not None:
        _notice(why)
        return sample(runner, names, contexts, x_T, noise, table, shaping, return_influence, trace, callback,
                      influence_interval=influence_interval)
    loop.replay(callback)
    return loop.result()
