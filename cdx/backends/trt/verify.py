"""Check built engines against ONNX Runtime on the same random inputs, through polygraphy: its ONNX
Runtime runner runs the exported graph, the engine's outputs are loaded as data, its comparator
measures them (cdx.export.verify). Worst error per network, relative to ONNX Runtime."""
from __future__ import annotations

from pathlib import Path

import torch

from ...errors import CdxError

# Largest acceptable worst error, by engine precision (TF32 is on for fp32 engines, as TensorRT's default).
TOLERANCE = {"fp16": 2e-2, "fp32": 2e-3}


def verify_engines(engine_dir, onnx_dir, batch: int | None = None, seed: int = 0, networks=None) -> dict[str, float]:
    """{network: worst error of its engine against ONNX Runtime}; batch defaults to the profile's OPT."""
    from ...export.onnx_export import random_inputs
    from ...export.verify import compare_with_onnxrt, require_polygraphy
    from ..ort import ort_providers
    from .manifest import read_onnx_manifest
    from .runner import TensorRTRunner

    require_polygraphy()
    runner = TensorRTRunner(engine_dir, onnx_dir, networks=networks)
    onnx, _ = read_onnx_manifest(onnx_dir)
    g = torch.Generator().manual_seed(seed)
    errors = {}
    for name, spec in runner.specs.items():
        entry = runner.manifest["networks"][name]
        b = batch or next(iter(entry["profiles"].values()))[1][0]
        inputs = random_inputs(spec, b, g)
        got = runner.run(name, {k: v.to(runner.device) for k, v in inputs.items()})
        errors[name], _ = compare_with_onnxrt(Path(onnx_dir) / onnx["networks"][name]["file"], inputs, got,
                                              "tensorrt", TOLERANCE[entry["precision"]], reference="onnxrt",
                                              providers=ort_providers())
    return errors


def check_errors(errors: dict[str, float], engine_manifest: dict) -> None:
    """Raise CdxError naming every network whose error exceeds the tolerance of its precision."""
    tol = {n: TOLERANCE[engine_manifest["networks"][n]["precision"]] for n in errors}
    bad = [f"{n} ({e:.2e} > {tol[n]:.0e})" for n, e in errors.items() if not e <= tol[n]]
    if bad:
        raise CdxError(f"engines disagree with ONNX Runtime: {', '.join(bad)}")
