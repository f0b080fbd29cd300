"""CUDA graphs through cuda-python's runtime API, the way the TensorRT demo captures its engines:
cudaStreamBeginCapture, the launches, cudaStreamEndCapture, cudaGraphInstantiate once, then one
cudaGraphLaunch per replay.

`TensorRTRunner.capture` returns one of these for cdx.sampling.graph.capture's GraphedLoop to replay: the
captured body is the loop's collaborative step on static buffers, which gathers t_i (and noise_i, the
step's coefficients) with the step index held in a device int64 and increments that index at its end,
so the same graph serves every step. The torch and ONNX Runtime runners keep torch.cuda.CUDAGraph.

torch's own capture routes allocations made while capturing to a private memory pool; a capture begun
through cuda-python does not, so a block torch hands out inside it could be reused by later work while
the graph still writes to it. The body must therefore allocate nothing (GraphedLoop's step writes into
its preallocated buffers, and TensorRT's engines into theirs); `capture` checks torch's allocation
counter and refuses a body that allocated.
"""
from __future__ import annotations

from typing import Callable

import torch

from ...errors import CdxError

NO_CUDA_PYTHON = "cuda-python is not installed: pip install cuda-python (the TensorRT runner's CUDA graphs use it)"


def cudart():
    """cuda-python's runtime module (`cuda.bindings.runtime` from 12.8 on, `cuda.cudart` before), or a
    one-line CdxError."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime
        except ImportError:
            raise CdxError(NO_CUDA_PYTHON) from None
    return runtime


def check(result, what: str):
    """cuda-python calls return (error, *values): the value(s), or a one-line CdxError naming the call."""
    err, *values = result
    if int(err) != 0:
        rt = cudart()
        ok, name = rt.cudaGetErrorName(err)
        name = name.decode() if int(ok) == 0 else f"error {int(err)}"
        raise CdxError(f"{what} failed: {name}")
    return values[0] if len(values) == 1 else tuple(values) or None


def _allocations(device: torch.device) -> int:
    return int(torch.cuda.memory_stats(device).get("allocation.all.allocated", 0))


class CudartGraph:
    """An instantiated CUDA graph; `replay()` launches it on torch's current stream, without syncing."""

    def __init__(self, graph, graph_exec, device: torch.device):
        self._rt, self.graph, self.graph_exec, self.device = cudart(), graph, graph_exec, device

    def replay(self) -> None:
        stream = torch.cuda.current_stream(self.device).cuda_stream
        check(self._rt.cudaGraphLaunch(self.graph_exec, stream), "cudaGraphLaunch")

    def close(self) -> None:
        exec_, graph, self.graph_exec, self.graph = self.graph_exec, self.graph, None, None
        if exec_ is not None:
            self._rt.cudaGraphExecDestroy(exec_)
        if graph is not None:
            self._rt.cudaGraphDestroy(graph)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the runtime may be gone already
            pass


def capture(fn: Callable[[], object], device: torch.device) -> CudartGraph:
    """Record the launches of `fn` on a fresh stream into a CUDA graph; nothing runs. Raises on failure
    (the capture is ended and discarded first). Call `fn` once before, outside any capture: TensorRT
    applies new input shapes, and torch initialises lazily, on a first launch."""
    rt = cudart()
    device = torch.device(device)
    stream = torch.cuda.Stream(device)
    handle = stream.cuda_stream
    torch.cuda.synchronize(device)
    before = _allocations(device)
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal  # as cdx's torch capture
    with torch.cuda.device(device), torch.cuda.stream(stream), torch.inference_mode():
        check(rt.cudaStreamBeginCapture(handle, mode), "cudaStreamBeginCapture")
        try:
            fn()
        except BaseException:
            err, graph = rt.cudaStreamEndCapture(handle)  # an invalidated capture ends with an error
            if int(err) == 0 and graph is not None:
                rt.cudaGraphDestroy(graph)
            raise
        graph = check(rt.cudaStreamEndCapture(handle), "cudaStreamEndCapture")
    if _allocations(device) != before:
        rt.cudaGraphDestroy(graph)
        raise CdxError("the captured step allocated device memory, which a cuda-python capture cannot "
                       "keep for the graph; every tensor it writes must be preallocated")
    try:
        graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
    except CdxError:
        rt.cudaGraphDestroy(graph)
        raise
    return CudartGraph(graph, graph_exec, device)
