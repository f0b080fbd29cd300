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
    """A runner whose collaborators are the fine-tuned ones; temporary exports are removed afterwards."""
    if backend == "torch":
        from .runner import TorchRunner

        yield TorchRunner(state.apply(model)), "backend: torch (cpu)"
        return
    from ..export.onnx_export import export_bundle
    from ..models.bundle import save_bundle

    tmp_root = cache_dir() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edit-", dir=tmp_root) as d:
        edited = state.apply(model)
        if backend == "tensorrt":
            runner = _trt_runner(model, engine_dir)  # its guidance checked before the export
        save_bundle(edited, Path(d) / "bundle")
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
        from .ort_runner import OrtRunner

        runner = OrtRunner(Path(d) / "onnx")
        yield runner, "backend: onnxruntime (fine-tuned collaborators re-exported to a temporary folder)"


def _trt_runner(model, engine_dir: Path):
    from .backends import _check_guidance
    from .trt import TensorRTRunner

    runner = TensorRTRunner(engine_dir)
    _check_guidance(runner, {m.name: m.guidance for m in model.cfg.modalities}, engine_dir)
    return runner


def edit_backend(backend: str, engine_dir: Path | None) -> str:
    """The backend an edit renders on (auto: TensorRT when engines are given, else ONNX Runtime); TensorRT is
    refused here, before the optimisation, when it cannot run."""
    if backend == "auto":
        backend = "onnxruntime" if engine_dir is None else "tensorrt"
    if backend == "tensorrt":
        from .backends import _trt_usable

        usable, why = _trt_usable(engine_dir)
        if not usable:
            raise CdxError(f"tensorrt backend unavailable: {why}")
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
