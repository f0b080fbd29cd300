"""The backend registry: each backend registers its name, an availability check that says why not, and a
factory; `make_runner` is the one factory every command and the Python API use, and `auto` walks the
registry in order of measured speed for the device at hand.

Built in, in auto's order: tensorrt (engines given and usable) -> torch (the CUDA fast path: fp16, fused
kernel, CUDA graphs, 4 streams; auto picks it only where a CUDA device is present) -> onnxruntime (CUDA
provider with I/O binding where onnxruntime-gpu and a GPU are present, else the CPU: the embedded default).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import CdxError, InputError
from ..models.bundle import bundle_hash, load_bundle
from .export_cache import _guided_cfg, cached_export
from .runner import Runner


@dataclass(frozen=True)
class BackendRequest:
    """What a caller asks of a backend (None: the backend's default)."""

    checkpoint: Path | None = None
    engine_dir: Path | None = None
    device: str | None = None
    dtype: torch.dtype | None = None
    guidance: dict[str, float] | None = None
    freeu: tuple[float, float, float, float] | None = None  # FreeU's (b1, b2, s1, s2); None: the model's
    progress: Callable[[str], None] | None = None
    options: dict = field(default_factory=dict)  # backend-specific, e.g. {"streams": 4}


@dataclass(frozen=True)
class Backend:
    name: str
    why_not: Callable[[BackendRequest], str | None]  # None: usable for this request; else the reason
    factory: Callable[[BackendRequest], Runner]
    describe: Callable[[Runner], str]  # one line: what it runs on
    auto_why_not: Callable[[BackendRequest], str | None] | None = None  # auto's own test (default: why_not)


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend, before: str | None = None) -> None:
    """Add (or replace) a backend; `before` puts it ahead of another in auto's order."""
    items = [(k, v) for k, v in _REGISTRY.items() if k != backend.name]
    at = next((i for i, (k, _) in enumerate(items) if k == before), len(items))
    items.insert(at, (backend.name, backend))
    _REGISTRY.clear()
    _REGISTRY.update(items)


def backend_names() -> list[str]:
    """The registered backends in auto's order."""
    return list(_REGISTRY)


def backend_choices() -> list[str]:
    """What `--backend` accepts."""
    return ["auto", *_REGISTRY]


def choose_auto(req: BackendRequest) -> tuple[str, str]:
    """(backend, why): the first registered backend auto may use for `req`, and why the earlier ones were not."""
    passed = []
    for b in _REGISTRY.values():
        why = (b.auto_why_not or b.why_not)(req)
        if why is None:
            return b.name, f"auto chose {b.name}" + (f" ({'; '.join(passed)})" if passed else "")
        passed.append(f"not {b.name}: {why}")
    raise CdxError("no backend can run this request: " + "; ".join(passed))


def make_runner(backend: str, checkpoint: Path | None, engine_dir: Path | None = None, device: str | None = None,
                dtype: torch.dtype | None = None, progress=None, guidance: dict[str, float] | None = None,
                freeu: tuple | None = None, **options) -> tuple[Runner, str]:
    """Returns (runner, one-line description of the choice). `guidance` {modality: scale} overrides the
    bundle's classifier-free guidance scales (cdx.models.guidance), `freeu` (b1, b2, s1, s2) switches FreeU on
    the collaborators (cdx.models.freeu)."""
    req = BackendRequest(Path(checkpoint) if checkpoint is not None else None,
                         Path(engine_dir) if engine_dir is not None else None, device, dtype, guidance or None,
                         tuple(freeu) if freeu else None, progress, options)
    if device is not None:
        from ..devices import check_device

        check_device(device)
    note = ""
    if backend == "auto":
        backend, note = choose_auto(req)
    elif backend not in _REGISTRY:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(backend_choices())}")
    b = _REGISTRY[backend]
    why = b.why_not(req)
    if why is not None:
        raise CdxError(f"{backend} backend unavailable: {why}")
    runner = b.factory(req)
    return runner, f"backend: {b.describe(runner)}" + (f"; {note}" if note else "")


# ----------------------------------------------------------------------------- shared checks

def _check_built_in(runner, req: BackendRequest) -> None:
    """An export or engine folder has its guidance and FreeU built in: refuse a request for others."""
    _check_guidance(runner, req.guidance, req.engine_dir)
    if req.freeu is not None and runner.cfg.freeu != req.freeu:
        raise CdxError(f"{req.engine_dir} was exported with FreeU {runner.cfg.freeu or 'off'}, not {req.freeu}; run "
                       "from the checkpoint (--checkpoint) or export again")


def _check_guidance(runner, guidance: dict[str, float] | None, where: Path) -> None:
    """An export or engine folder has its guidance built in: refuse a request for other scales."""
    have = {m.name: m.guidance for m in runner.cfg.modalities}
    for name, scale in (guidance or {}).items():
        if name not in have:
            raise CdxError(f"--guidance: no modality named {name} in {where}")
        if have[name] != scale:
            raise CdxError(f"{where} was exported with guidance {name}={have[name]:g}, not {scale:g}; "
                           f"run from the checkpoint (--checkpoint) or export again")


def _dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "default"


def _cuda_visible() -> bool:
    return torch.cuda.is_available()


# ----------------------------------------------------------------------------- torch

def _torch_device(req: BackendRequest) -> torch.device:
    return torch.device(req.device or ("cuda" if _cuda_visible() else "cpu"))


def _torch_why_not(req: BackendRequest) -> str | None:
    if req.checkpoint is None:
        return "it needs a checkpoint bundle (--checkpoint)"
    if _torch_device(req).type != "cuda" and req.dtype not in (None, torch.float32):
        return f"--dtype {_dtype_name(req.dtype)} needs a CUDA device; on the CPU use fp32"
    return None


def _torch_auto_why_not(req: BackendRequest) -> str | None:
    if req.device is not None and torch.device(req.device).type != "cuda":
        return "auto uses torch only for the CUDA fast path"
    if not _cuda_visible():
        return "no CUDA device (auto uses torch only for the CUDA fast path)"
    return _torch_why_not(req)


def _torch_factory(req: BackendRequest) -> Runner:
    dev = _torch_device(req)
    model = load_bundle(req.checkpoint)
    model.cfg = _guided_cfg(model.cfg, req.guidance).with_freeu(req.freeu)
    if dev.type == "cuda":  # the fast path: SDPA attention, fused kernel, CUDA graphs, the step on 4 streams
        from .torch_cuda import cuda_runner

        return cuda_runner(model, req.dtype or torch.float16, dev, **req.options)
    from .runner import TorchRunner

    return TorchRunner(model, dev, req.dtype or torch.float32)


def _torch_describe(runner) -> str:
    extra = f", {runner.streams} streams" if getattr(runner, "streams", 1) > 1 else ""
    return f"torch ({runner.device}, {_dtype_name(runner.dtype)}{extra})"


# ----------------------------------------------------------------------------- onnxruntime

def _ort_why_not(req: BackendRequest) -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    if req.checkpoint is None and req.engine_dir is None:
        return "it needs --checkpoint or --engine-dir"
    if req.dtype not in (None, torch.float32):
        return (f"it runs the fp32 export; --dtype {_dtype_name(req.dtype)} is for the torch backend on CUDA and "
                "TensorRT engines")
    if req.device is not None and torch.device(req.device).type == "cuda":
        from .ort_runner import ort_providers

        if ort_providers()[0] != "CUDAExecutionProvider":
            return "--device cuda needs onnxruntime-gpu (its CUDA execution provider) and a CUDA device"
    return None


def _ort_factory(req: BackendRequest) -> Runner:
    from .ort_runner import OrtRunner

    providers = ["CPUExecutionProvider"] if req.device is not None and torch.device(req.device).type == "cpu" \
        else None
    if req.engine_dir is not None:
        expect = bundle_hash(req.checkpoint) if req.checkpoint is not None else None  # refuse a foreign export
        runner = OrtRunner(req.engine_dir, expect_bundle_hash=expect, providers=providers)
        _check_built_in(runner, req)
        return runner
    folder = cached_export(req.checkpoint, req.progress, req.guidance, req.freeu)
    return OrtRunner(folder, expect_bundle_hash=bundle_hash(req.checkpoint), providers=providers)


def _ort_describe(runner) -> str:
    return f"onnxruntime ({', '.join(runner.providers)}) on {runner.folder}"


# ----------------------------------------------------------------------------- tensorrt

def _trt_usable(engine_dir: Path | None) -> tuple[bool, str]:
    try:
        from .trt.backend import availability
    except ImportError:
        return False, "TensorRT runner not built into this install"
    return availability(engine_dir)


def _trt_why_not(req: BackendRequest) -> str | None:
    ok, why = _trt_usable(req.engine_dir)
    return None if ok else why


def _trt_factory(req: BackendRequest) -> Runner:
    from .trt.backend import factory

    runner = factory(req.engine_dir, device=req.device or "cuda")
    _check_built_in(runner, req)
    return runner


for _b in (
    Backend("tensorrt", _trt_why_not, _trt_factory, lambda r: f"tensorrt on {r.engine_dir}"),
    Backend("torch", _torch_why_not, _torch_factory, _torch_describe, _torch_auto_why_not),
    Backend("onnxruntime", _ort_why_not, _ort_factory, _ort_describe),
):
    register_backend(_b)

from . import openvino_backend  # noqa: E402,F401  (registers "openvino": its own module, issue 24)
from . import compiled_backend  # noqa: E402,F401  (registers "torch-compile": its own module, issue 24)
