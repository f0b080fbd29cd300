"""Exported graphs checked through polygraphy: its ONNX Runtime runner runs each graph, the reference's
outputs (a runner given by the caller: torch for `cdx export --verify`, the engines in cdx.backends.trt.verify) are loaded into its results as data, and its
comparator measures them. Worst error per network = max |test - reference| / max |reference|, worst output.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import CdxError
from .onnx_export import random_inputs

TOLERANCE = 1e-4  # worst relative error an fp32 export may have against torch (`cdx export --verify`)
VERIFIES = "verification compares through polygraphy"


def require_polygraphy(needed_for: str = VERIFIES) -> None:
    """A one-line CdxError when polygraphy is not installed."""
    if importlib.util.find_spec("polygraphy") is None:
        raise CdxError(f"{needed_for}, which is not installed: pip install polygraphy")


@contextlib.contextmanager
def polygraphy_logging(level: str = "CRITICAL"):
    """polygraphy prints its log (TensorRT's too) to stdout, where cdx prints its tables: only messages of
    `level` and above, on stderr. Its CRITICAL messages raise PolygraphyException, a one-line CdxError here."""
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    colors, G_LOGGER.colors = G_LOGGER.colors, False  # no "install colored" notice either
    try:
        with G_LOGGER.verbosity(getattr(G_LOGGER, level)), contextlib.redirect_stdout(sys.stderr):
            yield
    except PolygraphyException as e:
        raise CdxError(f"polygraphy: {first_line(e)}") from None
    finally:
        G_LOGGER.colors = colors


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def to_numpy(outputs: dict) -> dict[str, np.ndarray]:
    return {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in outputs.items()}


def onnxrt_run(onnx_path, feeds: dict[str, np.ndarray], providers=None, name: str = "onnxrt"):
    """polygraphy RunResults of one inference of `onnx_path` by its OnnxrtRunner."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator

    session = SessionFromOnnx(str(onnx_path), providers=providers or ["cpu"])
    return Comparator.run([OnnxrtRunner(session, name=name)], data_loader=[feeds])


def compare(run_results, tol: float, test: int = 0, ref: int = 1) -> tuple[float, bool]:
    """(worst relative error, polygraphy's verdict) of runner `test` against runner `ref` of `run_results`.

    The verdict is polygraphy's elementwise check with atol = tol * max|reference| per output and no
    relative tolerance, so it passes exactly when the worst error is at most `tol`. A shape mismatch,
    a missing output or a non-finite value is an infinite error."""
    from polygraphy import comparator as pc

    (test_name, [got]), (ref_name, [want]) = run_results[test], run_results[ref]
    scale = {k: max(float(np.abs(v).max(initial=0.0)), 1e-12) for k, v in want.items()}
    simple = getattr(pc, "SimpleCompareFunc", None) or pc.CompareFunc.simple  # a class from 0.53, a factory before
    func = simple(atol={k: tol * s for k, s in scale.items()}, rtol=0.0, check_error_stat="elemwise")
    results = pc.Comparator.compare_accuracy(run_results, comparisons=[(test, ref)], compare_func=func)
    passed = bool(results)
    acc = results if isinstance(results, pc.AccuracyResult) else results[0]  # polygraphy < 0.53 returns one
    worst = 0.0 if set(got) == set(want) else math.inf
    for per_output in acc[(test_name, ref_name)]:  # {output: its comparison} per iteration
        for out in want:
            res = per_output.get(out)  # False, not a result, when the shapes differ
            err = float(getattr(res, "max_absdiff", math.inf)) / scale[out]
            worst = max(worst, err if math.isfinite(err) else math.inf)
    return worst, passed and math.isfinite(worst)


def compare_with_onnxrt(onnx_path, inputs: dict, outputs: dict, name: str, tol: float,
                        reference: str = "data", providers=None) -> tuple[float, bool]:
    """Run `onnx_path` on `inputs` with polygraphy's ONNX Runtime runner and compare it with `outputs`,
    loaded as the results of a runner called `name`; the error is relative to `reference` ("data" or
    "onnxrt"). Returns compare()'s (worst error, verdict)."""
    require_polygraphy()
    with polygraphy_logging():
        runs = onnxrt_run(onnx_path, to_numpy(inputs), providers)
        runs.add([to_numpy(outputs)], runner_name=name)  # runner 1: the other side's outputs, as data
        return compare(runs, tol, *((0, 1) if reference == "data" else (1, 0)))


def verify_export(reference, folder: str | os.PathLike, batch: int = 3, seed: int | None = None,
                  providers=None) -> dict:
    """{network: worst error of ONNX Runtime against `reference`} (a runner: `run(network, inputs)`, e.g. the
    torch backend's). Batch 3 on purpose: the graphs were traced at batch 2, so this also checks the
    dynamic axis. `providers`: ONNX Runtime's (default its CPU provider)."""
    from ..models.config import ModelConfig
    from .manifest import read_export_manifest
    from .spec import network_specs

    require_polygraphy()
    folder = Path(folder)
    manifest = read_export_manifest(folder)
    specs = network_specs(ModelConfig.from_dict(manifest["config"]))  # the networks the export holds
    g = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    worst = {}
    for name, spec in specs.items():
        inputs = random_inputs(spec, batch, g)
        expect = reference.run(name, inputs)
        worst[name], _ = compare_with_onnxrt(folder / manifest["networks"][name]["file"], inputs, expect, "torch",
                                             TOLERANCE, providers=providers)
    return worst
