"""The PyTorch backends: "torch" (the reference, fp32 on the CPU; on CUDA the fast path: fp16, fused kernel,
CUDA graphs, 4 streams; `eager.py`, `cuda.py`) and "torch-compile" (the same networks through inductor,
`compile.py`).

Auto picks "torch" only where a CUDA device is present, and never "torch-compile": its first call of every
network compiles for minutes on a CPU (inductor builds C++ kernels), which auto's "fastest usable here"
should not spring on anyone; ask for it by name. Its options: compile_mode (torch.compile's mode; default
"default" on a CPU, "max-autotune-no-cudagraphs" on CUDA), plus the torch backend's own (e.g. streams).
"""
from __future__ import annotations

import dataclasses
import shutil

import torch

from ...export.cache import guided_cfg
from ...models.bundle import load_bundle
from .. import checks
from ..registry import Backend, BackendRequest, Runner, register_backend


def torch_device(req: BackendRequest) -> torch.device:
    return torch.device(req.device or ("cuda" if checks.cuda_visible() else "cpu"))


def torch_why_not(req: BackendRequest) -> str | None:
    if req.checkpoint is None:
        return "it needs a checkpoint bundle (--checkpoint)"
    if torch_device(req).type != "cuda" and req.dtype not in (None, torch.float32):
        return f"--dtype {checks.dtype_name(req.dtype)} needs a CUDA device; on the CPU use fp32"
    return None


def _auto_why_not_torch(req: BackendRequest) -> str | None:
    if req.device is not None and torch.device(req.device).type != "cuda":
        return "auto uses torch only for the CUDA fast path"
    if not checks.cuda_visible():
        return "no CUDA device (auto uses torch only for the CUDA fast path)"
    return torch_why_not(req)


def torch_factory(req: BackendRequest) -> Runner:
    dev = torch_device(req)
    options = checked_options(req.options)  # on any device: on a CPU they change nothing, but are checked
    model = load_bundle(req.checkpoint)
    model.cfg = guided_cfg(model.cfg, req.guidance).with_freeu(req.freeu).with_feature_cache(req.feature_cache)
    if dev.type == "cuda":  # the fast path: SDPA attention, fused kernel, CUDA graphs, the step on 4 streams
        from .cuda import cuda_runner

        return cuda_runner(model, req.dtype or torch.float16, dev, **options)
    from .eager import TorchRunner

    return TorchRunner(model, dev, req.dtype or torch.float32)


# The options of the torch backend (CudaTorchRunner's keywords: the CUDA fast path; on a CPU they change nothing)
OPTIONS = ("streams", "pad_heads", "channels_last", "sdpa", "vae_dtype", "cudnn_benchmark", "fuse_norm_silu",
           "pair_unets")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def checked_options(options: dict) -> dict:
    """The torch backend's options, each checked (InputError naming it)."""
    from ...errors import InputError
    from ...validate import check_bool, check_int

    out = dict(options)
    for name, value in options.items():
        if name == "streams":
            out[name] = check_int(value, name, 1, 64)
        elif name == "pad_heads":
            out[name] = check_int(value, name, 0, 64)
        elif name == "vae_dtype":
            if value is not None and not isinstance(value, torch.dtype):
                raise InputError(f"vae_dtype {value!r}: expected a torch.dtype or None")
        elif name in OPTIONS:
            out[name] = check_bool(value, name) is True
    return out


def torch_describe(runner) -> str:
    extra = f", {runner.streams} streams" if getattr(runner, "streams", 1) > 1 else ""
    return f"torch ({runner.device}, {checks.dtype_name(runner.dtype)}{extra})"


def _compile_why_not(req: BackendRequest) -> str | None:
    why = torch_why_not(req)
    if why is not None:
        return why
    if torch_device(req).type == "cuda":
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


def _compile_auto_why_not(req: BackendRequest) -> str | None:
    return "auto does not pick it (its first call compiles for minutes); ask for --backend torch-compile"


def _compile_factory(req: BackendRequest):
    from .compile import CompiledRunner

    options = dict(req.options)
    mode = options.pop("compile_mode", None)
    if mode is not None and mode not in COMPILE_MODES:
        from ...errors import InputError

        raise InputError(f"compile_mode {mode!r}: choose one of {', '.join(COMPILE_MODES)}")
    base = torch_factory(dataclasses.replace(req, options=options))
    return CompiledRunner(base, mode=mode)


def _compile_describe(runner) -> str:
    return f"torch-compile (inductor {runner.mode}) over {torch_describe(runner.base)}"


def _from_model(model, scratch, req: BackendRequest, changed) -> Runner:
    """The torch runner of an in-memory model: saved as a bundle in `scratch`, loaded with its guidance."""
    from ...models.bundle import save_bundle

    save_bundle(model, scratch / "bundle")
    guidance = {m.name: m.guidance for m in model.cfg.modalities}
    return torch_factory(dataclasses.replace(req, checkpoint=scratch / "bundle", engine_dir=None, guidance=guidance))


register_backend(Backend("torch", torch_why_not, torch_factory, torch_describe, _auto_why_not_torch,
                         from_model=_from_model, options=OPTIONS))
register_backend(Backend("torch-compile", _compile_why_not, _compile_factory, _compile_describe,
                         _compile_auto_why_not, options=("compile_mode", *OPTIONS)))
