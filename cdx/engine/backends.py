"""Choosing and building a runner: torch, ONNX Runtime (export cached by bundle hash) or TensorRT."""
from __future__ import annotations

from pathlib import Path

import torch

from ..defaults import cache_dir
from ..errors import CdxError
from ..models.bundle import bundle_hash, load_bundle

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def cached_export(checkpoint: Path, progress=None, guidance: dict[str, float] | None = None) -> Path:
    """The ONNX export of `checkpoint` in the cache, made on first use (keyed by the bundle hash and the
    guidance scales that override the bundle's)."""
    from ..export.onnx_export import export_bundle

    digest = bundle_hash(checkpoint)
    if guidance:  # scales equal to the bundle's own are no override: they share its export
        from ..models.bundle import read_manifest
        from ..models.config import ModelConfig

        own = {m.name: m.guidance for m in ModelConfig.from_dict(read_manifest(checkpoint)["config"]).modalities}
        guidance = {n: s for n, s in guidance.items() if own.get(n) != s}
    key = digest[:24] + "".join(f"-{n}{s:g}" for n, s in sorted((guidance or {}).items()))
    folder = cache_dir() / "onnx" / key
    if not (folder / "manifest.json").is_file():
        model = load_bundle(checkpoint)
        if guidance:
            model.cfg = _guided_cfg(model.cfg, guidance)
        export_bundle(checkpoint, folder, model=model, progress=progress)
    return folder


def _guided_cfg(cfg, guidance: dict[str, float] | None):
    """`cfg` with the guidance scales replaced; an unknown modality is a one-line error."""
    if not guidance:
        return cfg
    try:
        return cfg.with_guidance(guidance)
    except KeyError as e:
        raise CdxError(f"--guidance: {e.args[0]}; this model has {', '.join(m.name for m in cfg.modalities)}") \
            from None


def _check_guidance(runner, guidance: dict[str, float] | None, where: Path) -> None:
    """An export or engine folder has its guidance built in: refuse a request for other scales."""
    have = {m.name: m.guidance for m in runner.cfg.modalities}
    for name, scale in (guidance or {}).items():
        if name not in have:
            raise CdxError(f"--guidance: no modality named {name} in {where}")
        if have[name] != scale:
            raise CdxError(f"{where} was exported with guidance {name}={have[name]:g}, not {scale:g}; "
                           f"run from the checkpoint (--checkpoint) or export again")


def _trt_usable(engine_dir: Path | None) -> tuple[bool, str]:
    if engine_dir is None:
        return False, "no TensorRT engines given (--engine-dir)"
    if not (engine_dir / "engines.json").is_file():
        return False, f"no engines.json in {engine_dir} (cdx build-engine writes one)"
    try:
        from .trt import available
    except ImportError:
        return False, "TensorRT runner not built into this install"
    return available()


def make_runner(backend: str, checkpoint: Path | None, engine_dir: Path | None = None, device: str | None = None,
                dtype: torch.dtype = torch.float32, progress=None, guidance: dict[str, float] | None = None):
    """Returns (runner, one-line description of the choice). `guidance` {modality: scale} overrides the
    bundle's classifier-free guidance scales (cdx.models.guidance)."""
    if backend not in BACKENDS:
        raise CdxError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        usable, why = _trt_usable(engine_dir)
        if usable:
            backend = "tensorrt"
        else:
            backend = "onnxruntime"
    if backend == "torch":
        if checkpoint is None:
            raise CdxError("the torch backend needs a checkpoint bundle (--checkpoint)")
        from .runner import TorchRunner

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if torch.device(dev).type != "cuda" and dtype != torch.float32:
            raise CdxError("--dtype fp16/bf16 needs a CUDA device; on the CPU use fp32")
        model = load_bundle(checkpoint)
        model.cfg = _guided_cfg(model.cfg, guidance)
        if torch.device(dev).type == "cuda":  # the fast path: SDPA attention, fused kernel, CUDA graphs
            from .torch_cuda import cuda_runner

            return cuda_runner(model, dtype, dev), f"backend: torch ({dev}, {str(dtype)[6:]})"
        return TorchRunner(model, dev, dtype), f"backend: torch ({dev}, {str(dtype)[6:]})"
    if backend == "onnxruntime":
        from .ort_runner import OrtRunner

        if engine_dir is not None:
            expect = bundle_hash(checkpoint) if checkpoint is not None else None  # refuse a foreign export
            runner = OrtRunner(engine_dir, expect_bundle_hash=expect)
            _check_guidance(runner, guidance, engine_dir)
            return runner, f"backend: onnxruntime ({', '.join(runner.providers)}) on {engine_dir}"
        if checkpoint is None:
            raise CdxError("the onnxruntime backend needs --checkpoint or --engine-dir")
        folder = cached_export(checkpoint, progress, guidance)
        runner = OrtRunner(folder, expect_bundle_hash=bundle_hash(checkpoint))
        return runner, f"backend: onnxruntime ({', '.join(runner.providers)}), export cached in {folder}"
    usable, why = _trt_usable(engine_dir)
    if not usable:
        raise CdxError(f"tensorrt backend unavailable: {why}")
    from .trt import TensorRTRunner

    runner = TensorRTRunner(engine_dir)
    _check_guidance(runner, guidance, engine_dir)
    return runner, f"backend: tensorrt on {engine_dir}"
