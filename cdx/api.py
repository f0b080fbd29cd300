"""The public Python API: `cdx.Pipeline`.

    import cdx
    pipe = cdx.Pipeline.load()                   # the shipped model on the fastest backend here
    out = pipe(text="This woman has blond hair.", mask="mask.png", seed=0, steps=50)
    out.images[0].save("face.png")

Every bad value raises `cdx.InputError` (a `cdx.CdxError`) with a one-line message; a missing or stale
artifact raises `cdx.StaleArtifactError`, an unusable backend `cdx.CdxError`.
"""
from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from .errors import InputError
from .validate import check_bool
from .sampling.request import Request, check_guidance, check_memory, make_request

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Output:
    """What one call returns."""

    images: list  # PIL.Image.Image per item, H x W RGB
    seeds: list[int]  # the seed each item was drawn from
    modalities: list[str]  # the modalities that conditioned it, in the model's order
    timesteps: np.ndarray  # (N,) the t of each step, in sampling order
    timings: dict[str, float]  # encode_ms, loop_ms, decode_ms
    backend: str  # what it ran on, in one line
    influence: np.ndarray | None = None  # (N, M, B, h, w) float32 per-pixel weights, when asked
    intermediates: np.ndarray | None = None  # (N, B, H, W, 3) uint8 decoded predicted x0 per step, when asked
    arrays: np.ndarray = field(default=None, repr=False)  # (B, H, W, 3) uint8, the same pixels as `images`


def _dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


class Pipeline:
    """A loaded model on one backend. Call it to generate; it keeps its runner (and its sessions, graphs
    and exports) between calls. Use `Pipeline.load` to make one."""

    def __init__(self, runner, description: str, make: Callable[[Mapping[str, float] | None], tuple]):
        self.runner, self.description = runner, description
        self._make = make  # (guidance, feature cache) -> (runner, description): a runner for other settings
        self._runners: dict[tuple, tuple] = {}
        # one Pipeline may be called from several threads: the runners are made under `_lock`, and a runner
        # that is not safe to share (CUDA graphs and streams, engine contexts, ...) runs one call at a time
        self._lock, self._serial = threading.Lock(), threading.Lock()

    @classmethod
    def load(cls, checkpoint: str | os.PathLike | None = None, backend: str = "auto", device: str | None = None,
             dtype: str | torch.dtype | None = None, engine_dir: str | os.PathLike | None = None,
             guidance: Mapping[str, float] | None = None, freeu: Sequence[float] | str | None = None,
             progress: Callable[[str], None] | None = None, **options) -> "Pipeline":
        """Load a bundle (None: the shipped model) on a backend ("auto": the fastest usable here, see
        `cdx.backends`). `engine_dir` runs an export or TensorRT engine folder; `guidance`
        {modality: scale} overrides the bundle's classifier-free guidance; `freeu` (b1, b2, s1, s2) or
        "b1,b2,s1,s2" switches FreeU on the collaborators' decoders; `progress` gets one-line notices
        (first-use export). `options` go to the backend, which declares their names (e.g. streams=4 for the torch
        CUDA path, threads=2 for openvino): a name it does not take is refused."""
        from .defaults import default_checkpoint
        from .backends.registry import make_runner

        ckpt, eng = _path(checkpoint, "checkpoint"), _path(engine_dir, "engine_dir")
        if not isinstance(backend, str):
            raise InputError(f"backend {backend!r}: expected a backend name (a string), e.g. 'auto'")
        if device is not None and not isinstance(device, (str, torch.device)):
            raise InputError(f"device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        if progress is not None and not callable(progress):
            raise InputError("progress must be callable as progress(message)")
        if ckpt is None and eng is None:
            ckpt = default_checkpoint()
        dt = _dtype(dtype)
        fu = _freeu(freeu)

        def exporting(network):  # the first-use export names each network as it goes
            progress(f"exporting {network} to ONNX (first use)")

        def make(g, feature_cache=None):
            return make_runner(backend, ckpt, eng, device, dt, progress=exporting if progress else None,
                               guidance=dict(g) if g else None, freeu=fu, feature_cache=feature_cache, **options)

        if guidance is not None:
            guidance = check_guidance(config_of(ckpt, eng), guidance)
        runner, desc = make(guidance)
        return cls(runner, desc, make)

    # -- what the model is
    @property
    def cfg(self):
        return self.runner.cfg

    @property
    def modalities(self) -> list[str]:
        return [m.name for m in self.cfg.modalities]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.cfg.image_size

    def _runner_for(self, guidance, feature_cache: int | None = None):
        """The runner for other guidance scales or with the feature-cache networks (made once, then kept)."""
        own = {m.name: m.guidance for m in self.cfg.modalities}
        wanted = {n: s for n, s in check_guidance(self.cfg, guidance).items() if own[n] != s} if guidance else {}
        if not wanted and feature_cache is None:
            return self.runner, self.description
        key = (tuple(sorted(wanted.items())), feature_cache)
        if key not in self._runners:
            self._runners[key] = self._make({**own, **wanted}, feature_cache)
        return self._runners[key]

    def __call__(self, text: str | Sequence[str] | None = None, mask: Any = None, seed: int | Sequence[int] = 0,
                 batch: int | None = None, guidance: Mapping[str, float] | None = None,
                 return_influence: bool = False, callback: Callable[[int, int], None] | None = None,
                 conditions: Mapping[str, Any] | None = None, return_intermediates: bool = False,
                 cuda_graph: bool | None = None, **sampling) -> Output:
        """Generate faces. `text` a caption; `mask` a label-map PNG path, a PIL label map or an (H, W) array
        of class ids 0..18; `conditions` {modality: value} any modality by name. Each may be a list, one per
        item; `seed` too (a single seed with batch=n gives seeds seed..seed+n-1). Item i draws its noise
        from its own generator, so it is the image its request gives alone. The sampling settings are
        keywords: steps=50, sampler="ddim", eta=None and shaping=None (None: the model's), the fields of
        `cdx.sampling.settings.Sampling`. `callback(i, total)` after each step; `guidance` {modality: scale}
        for this call (an export is made for new scales on first use); `return_intermediates` adds each
        step's decoded predicted x0."""
        if conditions is not None and not isinstance(conditions, Mapping):
            raise InputError(f"conditions: expected a mapping of modality name to value, e.g. {{'sketch': "
                             f"'sketch.png'}}, got {type(conditions).__name__}")
        return_influence = bool(check_bool(return_influence, "return_influence"))
        return_intermediates = bool(check_bool(return_intermediates, "return_intermediates"))
        cuda_graph = check_bool(cuda_graph, "cuda_graph")
        req = make_request(self.cfg, text=text, mask=mask, conditions=conditions, seed=seed, batch=batch,
                           return_influence=return_influence, return_intermediates=return_intermediates,
                           cuda_graph=cuda_graph, **sampling)
        return self.generate(req, guidance=guidance, callback=callback)

    def generate(self, request: Request, guidance: Mapping[str, float] | None = None,
                 callback: Callable[[int, int], None] | None = None) -> Output:
        """Run a request made by `cdx.sampling.request.make_request` (what `__call__` does after checking)."""
        from PIL import Image

        from .sampling.pipeline import generate

        if callback is not None and not callable(callback):
            raise InputError("callback must be callable as callback(step, total)")
        with self._lock:
            runner, desc = self._runner_for(guidance, request.sampling.feature_cache)
        check_memory(runner.cfg, request, torch.device(runner.device))
        total = request.num_steps
        with contextlib.nullcontext() if getattr(runner, "thread_safe", False) is True else self._serial:
            result = generate(runner, request, callback=(lambda i: callback(i, total)) if callback else None)
        influence = None
        if result.loop.influence is not None:  # (N, M, B, 1, h, w) -> (N, M, B, h, w)
            influence = result.loop.influence[:, :, :, 0].float().cpu().numpy()
        return Output(images=[Image.fromarray(a) for a in result.images], seeds=list(result.seeds),
                      modalities=result.modalities, timesteps=result.timesteps, timings=result.timings,
                      backend=desc, influence=influence, intermediates=result.intermediates, arrays=result.images)


def config_of(checkpoint: str | os.PathLike | None = None, engine_dir: str | os.PathLike | None = None):
    """The ModelConfig of a bundle (None: the shipped one) or of an export / engine folder, read from its
    manifest alone (nothing is loaded): enough to check a request before the model is."""
    from .defaults import default_checkpoint
    from .errors import StaleArtifactError
    from .models.bundle import read_manifest
    from .models.config import ModelConfig

    if checkpoint is not None or engine_dir is None:
        return ModelConfig.from_dict(read_manifest(checkpoint if checkpoint is not None else default_checkpoint())
                                     ["config"])
    folder = Path(engine_dir)
    if (folder / "engines.json").is_file():
        from .backends.trt.manifest import read_engine_manifest

        return ModelConfig.from_dict(read_engine_manifest(folder)["config"])
    from .export.manifest import read_export_manifest

    if not (folder / "manifest.json").is_file():
        raise StaleArtifactError(f"{folder}: neither an export (manifest.json) nor an engine folder (engines.json)")
    return ModelConfig.from_dict(read_export_manifest(folder, verify_files=False)["config"])


def _path(value, what: str) -> Path | None:
    """A path argument (str or os.PathLike) as a Path; anything else is an InputError."""
    if value is None:
        return None
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{what} {value!r}: expected a folder path (str or os.PathLike)")
    try:
        return Path(value)
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} {value!r}: not a path ({e})") from None


def _freeu(freeu) -> tuple[float, float, float, float] | None:
    """FreeU's factors, checked (cdx.models.freeu.FreeU); None: off."""
    if freeu is None:
        return None
    from .models.freeu import FreeU, parse_freeu

    if isinstance(freeu, str):
        f = parse_freeu(freeu)
    else:
        values = list(freeu) if isinstance(freeu, (list, tuple)) else []
        if len(values) != 4:
            raise InputError(f"freeu {freeu!r}: give four numbers b1, b2, s1, s2 (official: 1.1, 1.2, 1, 1)")
        f = FreeU(*values)
    return (f.b1, f.b2, f.s1, f.s2)
