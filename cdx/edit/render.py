"""Render an edit (the sampling half of Algorithm 3) on any backend, the fine-tuned collaborators in place."""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np

from ..backends import BackendRequest, resolve_backend
from ..backends.registry import runner_of_model
from ..defaults import cache_dir
from ..sampling.pipeline import decode, loop, loop_inputs
from ..sampling.loop import draw_noise


@contextlib.contextmanager
def edited_runner(model, state, backend: str, engine_dir: Path | None):
    """(runner, description) whose collaborators are the fine-tuned ones, made by the backend registry from a
    temporary folder (the backend's own way of running an in-memory model, or an export of it); the folder
    is removed afterwards."""
    tmp_root = cache_dir() / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edit-", dir=tmp_root) as d:
        changed = [f"{n}_unet" for n in state.unets]
        req = BackendRequest(checkpoint=Path(d) / "bundle", engine_dir=engine_dir)  # where a bundle would go
        runner, desc = runner_of_model(backend, state.apply(model), Path(d), changed, req)
        yield runner, f"{desc} (fine-tuned collaborators from a temporary folder)"


def edit_backend(backend: str, engine_dir: Path | None, checkpoint: Path | None = None) -> str:
    """The backend an edit renders on, chosen by the registry (auto: TensorRT when engines are given and
    usable, the torch CUDA path on a GPU, else the CPU default); an unusable one is refused here, before the
    optimisation."""
    req = BackendRequest(checkpoint=checkpoint or Path("bundle"), engine_dir=engine_dir)
    return resolve_backend(backend, req)[0].name


def render_edit(model, state, alphas, backend, engine_dir, seed, sampling, want_influence):
    """Images (A, H, W, 3) for each alpha with the same noise; the influence maps of the first alpha.
    `backend` is one :func:`edit_backend` resolved and checked; `sampling` the checked settings."""
    cfg = sampling.config(model.cfg)
    table = sampling.table(model.cfg)
    noise = draw_noise(seed, 1, (cfg.latent_channels, *cfg.latent_size), table.num_steps)
    images, influence = [], None
    with edited_runner(model, state, backend, engine_dir) as (runner, desc):
        for i, alpha in enumerate(alphas):
            res = loop(runner, loop_inputs(cfg, table, state.names, state.contexts(alpha), noise),
                       return_influence=want_influence and i == 0, cuda_graph=False, **sampling.loop_options())
            if i == 0:
                influence = res.influence
            images.append(decode(runner, res.z0)[1][0])
    return np.stack(images), influence, desc, table.timesteps
