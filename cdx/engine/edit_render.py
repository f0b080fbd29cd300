"""Render an edit (the sampling half of Algorithm 3) on any backend, the fine-tuned collaborators in place."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np

from ..defaults import cache_dir
from ..errors import CdxError
from .pipeline import to_uint8
from .sampler import draw_noise, make_shaping, sample


@contextlib.contextmanager
def edited_runner(model, state, backend: str, engine_dir: Path | None):
    """A runner whose collaborators are the fine-tuned ones, made by the one backend factory (`make_runner`)
    from a temporary bundle (torch), its temporary export (onnxruntime) or the given engines refitted
    from that export (tensorrt); the temporary folders are removed afterwards."""
    from ..export.onnx_export import export_bundle
    from ..models.bundle import save_bundle
    from .backends import make_runner

    tmp_root = cache_dir() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edit-", dir=tmp_root) as d:
        edited = state.apply(model)
        if backend == "tensorrt":
            runner = _trt_runner(model, engine_dir)  # its guidance checked before the export
        save_bundle(edited, Path(d) / "bundle")
        if backend == "torch":
            yield make_runner("torch", Path(d) / "bundle", guidance=_guidance(model))
            return
        export_bundle(Path(d) / "bundle", Path(d) / "onnx", model=edited)
        if backend == "tensorrt":
            # TensorRT refits by ONNX initializer name, and the export names some weights itself (GroupNorm's
            # folded scale and shift, a guided UNet's wrapper prefix): refit from a re-export of the same graph
            for n in state.unets:
                if not runner.refit_from_onnx(f"{n}_unet", Path(d) / "onnx" / f"{n}_unet.onnx"):  # --refittable
                    raise CdxError(f"the {n}_unet engine in {engine_dir} shares no weight names with this cdx's "
                                   "export of the model; rebuild the engines (cdx export, cdx build-engine "
                                   "--refittable)")
            yield runner, f"backend: tensorrt on {engine_dir} (collaborators refitted from a re-export)"
            return
        runner, desc = make_runner(backend, None, Path(d) / "onnx")
        yield runner, f"{desc} (fine-tuned collaborators re-exported to a temporary folder)"


def _guidance(model) -> dict[str, float]:
    return {m.name: m.guidance for m in model.cfg.modalities}


def _trt_runner(model, engine_dir: Path):
    from .backends import make_runner

    return make_runner("tensorrt", None, engine_dir, guidance=_guidance(model))[0]


def edit_backend(backend: str, engine_dir: Path | None, checkpoint: Path | None = None) -> str:
    """The backend an edit renders on, chosen by the registry (auto: TensorRT when engines are given and
    usable, the torch CUDA path on a GPU, else ONNX Runtime); an unusable one is refused here, before the
    optimisation."""
    from .backends import BackendRequest, backend_choices, choose_auto, _REGISTRY

    req = BackendRequest(checkpoint=checkpoint or Path("bundle"), engine_dir=engine_dir)
    if backend == "auto":
        return choose_auto(req)[0]
    if backend not in _REGISTRY:
        raise CdxError(f"unknown backend {backend!r}; choose one of {', '.join(backend_choices())}")
    why = _REGISTRY[backend].why_not(req)
    if why is not None:
        raise CdxError(f"{backend} backend unavailable: {why}")
    return backend


def render_edit(model, ckpt, state, alphas, backend, engine_dir, seed, steps, eta, want_influence):
    """Images (A, H, W, 3) for each alpha with the same noise; the influence maps of the first alpha.
    `backend` is one :func:`edit_backend` resolved and checked (torch, onnxruntime or tensorrt)."""
    cfg = model.cfg
    table = cfg.step_table(steps, "ddim", eta)
    shaping = make_shaping(cfg, state.names, table, cfg.timesteps)
    x_T, noise = draw_noise(seed, 1, (cfg.latent_channels, *cfg.latent_size), table.num_steps)
    images, influence = [], None
    with edited_runner(model, state, backend, engine_dir) as (runner, desc):
        for i, alpha in enumerate(alphas):
            out = sample(runner, state.names, state.contexts(alpha), x_T, noise, table, shaping,
                         return_influence=want_influence and i == 0)
            if i == 0:
                influence = out.influence
            image = runner.run("vae_decoder", {"latent": out.z0})["image"]
            images.append(to_uint8(image)[0])
    return np.stack(images), influence, desc
