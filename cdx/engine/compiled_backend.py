"""Registers the "torch-compile" backend (cdx/engine/compiled.py) in the backend registry.

Auto never picks it: its first call of every network compiles for minutes on a CPU (inductor builds C++
kernels), which auto's "fastest usable here" should not spring on anyone; ask for it by name. Its
options: compile_mode (torch.compile's mode; default "default" on a CPU, "max-autotune-no-cudagraphs"
on CUDA), plus the torch backend's own (e.g. streams on CUDA).
"""
from __future__ import annotations

import dataclasses
import shutil

from .backends import (Backend, BackendRequest, _torch_describe, _torch_device, _torch_factory, _torch_why_not,
                       register_backend)


def _why_not(req: BackendRequest) -> str | None:
    why = _torch_why_not(req)
    if why is not None:
        return why
    if _torch_device(req).type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return "torch.compile on CUDA needs triton (pip install 'cdx[gpu]')"
        return None
    from torch._inductor import config

    cxx = config.cpp.cxx[0] if isinstance(config.cpp.cxx, tuple) else config.cpp.cxx
    if not any(shutil.which(c) for c in ([cxx] if cxx else ["g++", "c++", "clang++"])):
        return "torch.compile on a CPU needs a C++ compiler (g++ or clang++) on PATH"
    return None


def _auto_why_not(req: BackendRequest) -> str | None:
    return "auto does not pick it (its first call compiles for minutes); ask for --backend torch-compile"


def _factory(req: BackendRequest):
    from .compiled import CompiledRunner

    options = dict(req.options)
    mode = options.pop("compile_mode", None)
    base = _torch_factory(dataclasses.replace(req, options=options))
    return CompiledRunner(base, mode=mode)


def _describe(runner) -> str:
    return f"torch-compile (inductor {runner.mode}) over {_torch_describe(runner.base)}"


register_backend(Backend("torch-compile", _why_not, _factory, _describe, _auto_why_not))
