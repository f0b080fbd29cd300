"""The TensorRT backend: build plans from the ONNX export, check them, run them; registered as "tensorrt"
(first in auto's order: engines given and usable win).

Importing this package never imports TensorRT; only building, running and verifying do.
"""
from __future__ import annotations

from pathlib import Path

from .. import checks
from ..registry import Backend, BackendRequest, Runner, register_backend
from .builder import BuildJob, build_engines, plan_builds
from .env import available, current_gpu, require_tensorrt, tensorrt_version
from .manifest import MANIFEST, cache_key, check_engine_manifest, read_engine_manifest, timing_cache_name
from .profiles import parse_batch, profiles_for
from .runner import TensorRTRunner
from .verify import check_errors, verify_engines

__all__ = ["BuildJob", "TensorRTRunner", "available", "build_engines", "cache_key", "check_engine_manifest",
           "check_errors", "current_gpu", "parse_batch", "plan_builds", "profiles_for", "read_engine_manifest",
           "require_tensorrt", "tensorrt_version", "timing_cache_name", "verify_engines"]


def availability(engine_dir=None) -> tuple[bool, str]:
    """(True, what) when engines in `engine_dir` can run here, else (False, one-line reason)."""
    if engine_dir is None:
        return False, "no TensorRT engines given (--engine-dir)"
    if not (Path(engine_dir) / MANIFEST).is_file():
        return False, f"no {MANIFEST} in {engine_dir} (cdx build-engine writes one)"
    return available()


def factory(engine_dir, device="cuda", networks=None):
    """The runner of an engine folder, checked against its manifest (see TensorRTRunner)."""
    from .runner import TensorRTRunner

    return TensorRTRunner(engine_dir, device=device, networks=networks)


def _trt_usable(engine_dir: Path | None) -> tuple[bool, str]:
    return availability(engine_dir)


def _trt_why_not(req: BackendRequest) -> str | None:
    ok, why = _trt_usable(req.engine_dir)
    return None if ok else why


def _trt_factory(req: BackendRequest) -> Runner:
    runner = factory(req.engine_dir, device=req.device or "cuda")
    checks.check_built_in(runner, req)
    return runner


def _from_model(model, scratch: Path, req: BackendRequest, changed) -> Runner:
    """The given engines with the changed networks refitted from a re-export of `model`. TensorRT refits by
    ONNX initializer name, and the export names some weights itself (GroupNorm's folded scale and shift, a
    guided UNet's wrapper prefix), so the weights come from a re-export of the same graph."""
    import dataclasses

    from ...errors import CdxError
    from ..registry import export_model

    guidance = {m.name: m.guidance for m in model.cfg.modalities}
    runner = _trt_factory(dataclasses.replace(req, checkpoint=None, guidance=guidance))  # checked before exporting
    onnx = export_model(model, scratch)
    for network in changed:
        if not runner.refit_from_onnx(network, onnx / f"{network}.onnx"):  # engines built --refittable
            raise CdxError(f"the {network} engine in {req.engine_dir} shares no weight names with this cdx's export "
                           "of the model; rebuild the engines (cdx export, cdx build-engine --refittable)")
    return runner


register_backend(Backend("tensorrt", _trt_why_not, _trt_factory, lambda r: f"tensorrt on {r.engine_dir}",
                         from_model=_from_model))
