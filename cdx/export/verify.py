"""ONNX Runtime against torch on fresh random inputs, worst relative error per network."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.collab import CollaborativeModel
from .onnx_export import random_inputs


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def verify_export(model: CollaborativeModel, folder: str | os.PathLike, batch: int = 3, seed: int | None = None) -> dict:
    """Batch 3 on purpose: the graphs were traced at batch 2, so this also checks the dynamic axis."""
    from ..engine.ort_runner import OrtRunner
    from ..engine.runner import TorchRunner

    ort_runner = OrtRunner(Path(folder))
    ref = TorchRunner(model)
    g = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    worst = {}
    for name, spec in ort_runner.specs.items():
        inputs = random_inputs(spec, batch, g)
        ours, theirs = ort_runner.run(name, inputs), ref.run(name, inputs)
        worst[name] = max(relative_error(ours[t.name], theirs[t.name]) for t in spec.outputs)
    return worst
