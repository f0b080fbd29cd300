"""The OpenVINO backends (`runner.py`), registered: "openvino" (fp32),
"openvino-bf16" (bf16 arithmetic, on CPUs that have it natively) and "openvino-int8" (NNCF, `int8.py`).

Auto's order on a CPU: ahead of onnxruntime on an x86 CPU where openvino is installed, because it measures
faster end to end there (2-core AMD EPYC, shipped model, 10 steps: 285 ms against 341 ms with AVX2,
263 ms against 307 ms with AVX-512; benchmarks/results/2026-12-04-*cpu-backends-all.json), and bf16 ahead of
fp32 where the CPU has native bf16: 201 ms against 263 ms there, at fp32's `cdx eval` scores (n = 128: FD
45.87 against 45.65, text 0.828 and mask 0.866 alike; benchmarks/results/2026-12-04-avx512-eval-*.json). Auto
does not pick them on other CPUs (unmeasured), where a CUDA device is present (torch's CUDA path comes first
there) or for another dtype than fp32, and never picks int8, which costs quality (FD 51 there).
"""
from __future__ import annotations

import functools
import platform

import torch

from ...models.bundle import bundle_hash
from ...export.cache import cached_export
from ...privacy import telemetry_off
from .. import checks
from ..registry import Backend, BackendRequest, register_backend


def _why_not(req: BackendRequest) -> str | None:
    from .runner import openvino_version

    if openvino_version() is None:
        return "openvino is not installed (pip install 'cdx[openvino]')"
    if req.checkpoint is None and req.engine_dir is None:
        return "it needs --checkpoint or --engine-dir"
    if req.device is not None and torch.device(req.device).type != "cpu":
        return f"it runs on the CPU only, not {req.device}"
    if req.dtype not in (None, torch.float32):
        return f"it runs the fp32 export; --dtype {checks.dtype_name(req.dtype)} is for the torch backend on CUDA"
    return None


telemetry_off()  # before runner.py or int8.py import openvino (this package runs first): nothing in ~/intel

X86 = ("x86_64", "amd64", "i686", "x86")


def _auto_why_not(req: BackendRequest) -> str | None:
    if req.device is None and checks.cuda_visible():
        return "a CUDA device is here (auto uses a GPU backend)"
    if platform.machine().lower() not in X86:
        return f"auto picks it on x86 CPUs only, where it was measured faster (this is {platform.machine()})"
    return _why_not(req)


def _factory(req: BackendRequest, precision: str = "f32"):
    from .runner import OpenVinoRunner

    threads = req.options.get("threads")
    if threads is not None:
        from ...validate import check_int

        threads = check_int(threads, "threads", 1, 4096)
    if req.engine_dir is not None:
        expect = bundle_hash(req.checkpoint) if req.checkpoint is not None else None  # refuse a foreign export
        runner = OpenVinoRunner(req.engine_dir, expect_bundle_hash=expect, threads=threads, precision=precision)
        checks.check_built_in(runner, req)
        return runner
    folder = cached_export(req.checkpoint, req.progress, req.guidance, req.freeu, req.feature_cache)
    return OpenVinoRunner(folder, expect_bundle_hash=bundle_hash(req.checkpoint), threads=threads,
                          precision=precision)


@functools.lru_cache(maxsize=None)  # the CPU does not change; asked each time the registry is consulted
def native_bf16() -> bool:
    """Whether OpenVINO reports bf16 among this CPU's capabilities (AVX512-BF16 or AMX): elsewhere a bf16 hint
    is not run in bf16."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


NO_BF16 = "this CPU has no native bf16 (AVX512-BF16 or AMX), so OpenVINO would not run it in bf16"


def _bf16_why_not(req: BackendRequest) -> str | None:
    why = _why_not(req)
    return NO_BF16 if why is None and not native_bf16() else why


def _bf16_auto_why_not(req: BackendRequest) -> str | None:
    why = _auto_why_not(req)
    return NO_BF16 if why is None and not native_bf16() else why


def _describe(runner) -> str:
    from .runner import openvino_version

    precision = f"int8 {'+'.join(sorted(runner.int8))}, else {runner.precision}" if runner.int8 else runner.precision
    return f"openvino {openvino_version()} (CPU, {precision}, {runner.threads} threads) on {runner.folder}"


def _int8_why_not(req: BackendRequest) -> str | None:
    from .int8 import nncf_version

    if nncf_version() is None:
        return "nncf is not installed (pip install 'cdx[openvino]')"
    return _why_not(req)


def _int8_factory(req: BackendRequest):
    from .int8 import int8_models

    runner = _factory(req)
    runner.use_int8(int8_models(runner))
    return runner


OPTIONS = ("threads",)  # INFERENCE_NUM_THREADS (default: every core)
register_backend(Backend("openvino", _why_not, _factory, _describe, _auto_why_not, options=OPTIONS),
                 before="onnxruntime")
# bf16 changes the image a little at fp32's quality (README: its speed and quality beside fp32 and int8)
register_backend(Backend("openvino-bf16", _bf16_why_not, lambda req: _factory(req, "bf16"), _describe,
                         _bf16_auto_why_not, options=OPTIONS), before="openvino")
# int8 changes the image (its quality is measured by `cdx eval`, README): asked for by name, never by auto
register_backend(Backend("openvino-int8", _int8_why_not, _int8_factory, _describe,
                         lambda req: "auto does not pick it (8-bit changes the image); ask for --backend openvino-int8",
                         options=OPTIONS))
