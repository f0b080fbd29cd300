"""Registers the "openvino" backend (cdx/engine/openvino_runner.py) in the backend registry.

Auto's order on a CPU: after onnxruntime until a committed measurement shows openvino faster end to end
on this project's CPU (benchmarks/results/, docs/performance.md). Auto never picks it for CUDA (torch's
CUDA path comes first there) or for another dtype than fp32.
"""
from __future__ import annotations

import torch

from ..models.bundle import bundle_hash
from .backends import Backend, BackendRequest, _check_guidance, _dtype_name, register_backend
from .export_cache import cached_export


def _why_not(req: BackendRequest) -> str | None:
    from .openvino_runner import openvino_version

    if openvino_version() is None:
        return "openvino is not installed (pip install 'cdx[openvino]')"
    if req.checkpoint is None and req.engine_dir is None:
        return "it needs --checkpoint or --engine-dir"
    if req.device is not None and torch.device(req.device).type != "cpu":
        return f"it runs on the CPU only, not {req.device}"
    if req.dtype not in (None, torch.float32):
        return f"it runs the fp32 export; --dtype {_dtype_name(req.dtype)} is for the torch backend on CUDA"
    return None


def _auto_why_not(req: BackendRequest) -> str | None:
    if req.device is None and torch.cuda.is_available():
        return "a CUDA device is here (auto uses a GPU backend)"
    return _why_not(req)


def _factory(req: BackendRequest):
    from .openvino_runner import OpenVinoRunner

    threads = req.options.get("threads")
    if req.engine_dir is not None:
        expect = bundle_hash(req.checkpoint) if req.checkpoint is not None else None  # refuse a foreign export
        runner = OpenVinoRunner(req.engine_dir, expect_bundle_hash=expect, threads=threads)
        _check_guidance(runner, req.guidance, req.engine_dir)
        return runner
    folder = cached_export(req.checkpoint, req.progress, req.guidance)
    return OpenVinoRunner(folder, expect_bundle_hash=bundle_hash(req.checkpoint), threads=threads)


def _describe(runner) -> str:
    from .openvino_runner import openvino_version

    return f"openvino {openvino_version()} (CPU, {runner.precision}, {runner.threads} threads) on {runner.folder}"


register_backend(Backend("openvino", _why_not, _factory, _describe, _auto_why_not))
