"""Backends: one registry (`registry.py`) and one module or sub-package per backend, each ending in its
registration. Importing this package registers the built-in ones in auto's order: tensorrt (engines given and
usable) -> torch (the CUDA fast path, only where a GPU is) -> openvino (x86 CPUs, where installed; it puts
itself ahead of onnxruntime) -> onnxruntime (the embedded default). torch-compile, openvino-bf16 and
openvino-int8 are registered too, and auto never picks them.
"""
from .registry import (Backend, BackendRequest, backend_choices, backend_names, choose_auto, get_backend,
                       make_runner, register_backend, resolve_backend)
from . import trt, pytorch, ort, openvino  # noqa: E402,F401  (each registers itself; the order is auto's)

__all__ = ["Backend", "BackendRequest", "backend_choices", "backend_names", "choose_auto", "get_backend",
           "make_runner", "register_backend", "resolve_backend"]
