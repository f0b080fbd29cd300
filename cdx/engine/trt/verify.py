"""Check built engines against ONNX Runtime on the same random inputs: worst error per network."""
from __future__ import annotations

import torch

from ...errors import CdxError

# Largest acceptable worst_error, by engine precision (TF32 may be on for fp32 engines).
TOLERANCE = {"fp16": 2e-2, "fp32": 2e-3}


def worst_error(reference: dict[str, torch.Tensor], test: dict[str, torch.Tensor]) -> float:
    """max |test - reference| over every output, relative to the reference's largest magnitude;
    inf for a wrong shape or a non-finite value."""
    worst = 0.0
    for name, ref in reference.items():
        ref, got = ref.detach().double().cpu(), test[name].detach().double().cpu()
        if got.shape != ref.shape or not torch.isfinite(got).all():
            return float("inf")
        worst = max(worst, float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)))
    return worst


def verify_engines(engine_dir, onnx_dir, batch: int | None = None, seed: int = 0, networks=None) -> dict[str, float]:
    """{network: worst_error of its engine against ONNX Runtime}; batch defaults to the profile's OPT."""
    from ...export.onnx_export import random_inputs
    from ..ort_runner import OrtRunner
    from .runner import TensorRTRunner

    runner = TensorRTRunner(engine_dir, onnx_dir, networks=networks)
    reference = OrtRunner(onnx_dir)
    g = torch.Generator().manual_seed(seed)
    errors = {}
    for name, spec in runner.specs.items():
        b = batch or next(iter(runner.manifest["networks"][name]["profiles"].values()))[1][0]
        inputs = random_inputs(spec, b, g)
        got = runner.run(name, {k: v.to(runner.device) for k, v in inputs.items()})
        errors[name] = worst_error(reference.run(name, inputs), got)
    return errors


def check_errors(errors: dict[str, float], engine_manifest: dict) -> None:
    """Raise CdxError naming every network whose error exceeds the tolerance of its precision."""
    tol = {n: TOLERANCE[engine_manifest["networks"][n]["precision"]] for n in errors}
    bad = [f"{n} ({e:.2e} > {tol[n]:.0e})" for n, e in errors.items() if not e <= tol[n]]
    if bad:
        raise CdxError(f"engines disagree with ONNX Runtime: {', '.join(bad)}")
