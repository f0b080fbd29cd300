"""The TensorRT backend: build plans from the ONNX export, check them, run them.

Importing this package never imports TensorRT; only building, running and verifying do.
"""
from .builder import BuildJob, build_engines, plan_builds
from .env import available, current_gpu, require_tensorrt, tensorrt_version
from .manifest import cache_key, check_engine_manifest, read_engine_manifest, timing_cache_name
from .profiles import parse_batch, profiles_for
from .runner import TensorRTRunner
from .verify import check_errors, verify_engines

__all__ = ["BuildJob", "TensorRTRunner", "available", "build_engines", "cache_key", "check_engine_manifest",
           "check_errors", "current_gpu", "parse_batch", "plan_builds", "profiles_for", "read_engine_manifest",
           "require_tensorrt", "tensorrt_version", "timing_cache_name", "verify_engines"]
