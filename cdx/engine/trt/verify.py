"""Check built engines against ONNX Runtime on the same random inputs: worst error per network."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import CdxError
from ...export.spec import NetworkSpec
from ...models.config import ModelConfig
from .manifest import read_onnx_manifest

# Largest acceptable worst_error, by engine precision (TF32 may be on for fp32 engines).
TOLERANCE = {"fp16": 2e-2, "fp32": 2e-3}


def random_inputs(spec: NetworkSpec, batch: int, cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs a network can meet in a run: N(0, 1) floats, valid timesteps, token ids and one-hot masks."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in spec.inputs:
        shape = t.concrete(batch)
        if t.dtype != "int64":
            feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        elif t.name == "t":
            feeds[t.name] = rng.integers(0, cfg.timesteps, shape, dtype=np.int64)
        elif t.name == "tokens":
            vocab = cfg.modality(spec.modality).text.vocab_size
            feeds[t.name] = rng.integers(0, vocab, shape, dtype=np.int64)
        elif t.name == "mask":  # (B, classes, tokens): one class per token
            labels = rng.integers(0, shape[1], (shape[0], shape[2]))
            feeds[t.name] = (labels[:, None, :] == np.arange(shape[1])[None, :, None]).astype(np.int64)
        else:
            feeds[t.name] = rng.integers(0, 2, shape, dtype=np.int64)
    return feeds


def worst_error(reference: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> float:
    """max |test - reference| over every output, relative to the reference's largest magnitude."""
    worst = 0.0
    for name, ref in reference.items():
        ref = np.asarray(ref, np.float64)
        got = np.asarray(test[name], np.float64)
        if got.shape != ref.shape or not np.isfinite(got).all():
            return float("inf")
        worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-6)))
    return worst


def ort_session(onnx_path):
    """An ONNX Runtime session on the CUDA provider where onnxruntime-gpu has it, else on CPU."""
    import onnxruntime as ort

    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(onnx_path), providers=providers)


def ort_outputs(session, spec: NetworkSpec, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [t.name for t in spec.outputs]
    return dict(zip(names, session.run(names, feeds)))


def verify_engines(engine_dir, onnx_dir, batch: int | None = None, seed: int = 0, networks=None) -> dict[str, float]:
    """{network: worst_error of its engine against ONNX Runtime}; batch defaults to the profile's OPT."""
    import torch

    from .runner import TensorRTRunner

    runner = TensorRTRunner(engine_dir, onnx_dir, networks=networks)
    onnx, _ = read_onnx_manifest(onnx_dir)
    errors = {}
    for name, spec in runner.specs.items():
        b = batch or next(iter(runner.manifest["networks"][name]["profiles"].values()))[1][0]
        feeds = random_inputs(spec, b, runner.cfg, seed)
        reference = ort_outputs(ort_session(Path(onnx_dir) / onnx["networks"][name]["file"]), spec, feeds)
        outs = runner.run(name, {k: torch.from_numpy(v).to(runner.device) for k, v in feeds.items()})
        errors[name] = worst_error(reference, {k: v.cpu().numpy() for k, v in outs.items()})
    return errors


def check_errors(errors: dict[str, float], engine_manifest: dict) -> None:
    """Raise CdxError naming every network whose error exceeds the tolerance of its precision."""
    bad = [f"{n} ({e:.2e} > {TOLERANCE[engine_manifest['networks'][n]['precision']]:.0e})"
           for n, e in errors.items() if not e <= TOLERANCE[engine_manifest["networks"][n]["precision"]]]
    if bad:
        raise CdxError(f"engines disagree with ONNX Runtime: {', '.join(bad)}")
