"""One collaborative step at a real size on the CPU, per OpenVINO precision, against torch eager fp32.

    python benchmarks/cpu_precision.py [--preset official-256] [--runs 3] [--calibration 4] [--json OUT.json]

The model has random weights (`cdx bench --preset`'s cached bundle), so this measures speed only; what
8 bits and bf16 do to the images is `cdx eval`'s to say, on a trained model (docs/cpu-backends.md).
Runners: torch eager fp32 (the reference), OpenVINO f32 (`--backend openvino`), OpenVINO bf16
(INFERENCE_PRECISION_HINT bf16: CPUs with AVX512-BF16 or AMX run it natively), OpenVINO with the
per-step networks quantized to int8 by NNCF (as `--backend openvino-int8` does, here calibrated on
`--calibration` random inputs per network instead of generated faces: enough for speed, not for
quality) and that int8 with bf16 for what stays floating point. Per runner: each network (median after a
warm-up) and the collaborative step, timed round robin beside torch's by `cdx.bench.harness.bench_runners`;
the JSON has the rows and, per runner, the step against the torch step measured beside it.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdx.cli.bench import random_bundle  # noqa: E402
from cdx.bench.harness import bench_runners, report, table_text  # noqa: E402
from cdx.export.cache import cached_export  # noqa: E402
from cdx.backends.openvino.int8 import quantize_network, quantized_networks  # noqa: E402
from cdx.backends.openvino.runner import OpenVinoRunner  # noqa: E402
from cdx.backends.pytorch.eager import TorchRunner  # noqa: E402
from cdx.export.onnx_export import random_inputs  # noqa: E402
from cdx.io import atomic_write_text  # noqa: E402
from cdx.models.bundle import load_bundle  # noqa: E402


def int8_models(runner: OpenVinoRunner, folder: Path, samples: int) -> dict[str, Path]:
    """NNCF int8 models of the per-step networks (batch 1), calibrated on random inputs, saved in `folder`
    (those already there are kept: the folder is this script's own)."""
    import openvino as ov

    g = torch.Generator().manual_seed(0)
    out = {}
    for name in quantized_networks(runner.specs):
        out[name] = folder / f"{name}.xml"
        if out[name].is_file():  # quantized by an earlier run into this folder
            continue
        spec = runner.specs[name]
        model = runner.core.read_model(str(runner.folder / runner.manifest["networks"][name]["file"]))
        model.reshape({t.name: list(t.concrete(1)) for t in spec.inputs})
        feeds = [{k: v.numpy() for k, v in random_inputs(spec, 1, g).items()} for _ in range(samples)]
        t0 = time.perf_counter()
        ov.save_model(quantize_network(name, model, feeds), str(out[name]), compress_to_fp16=False)
        print(f"quantized {name} in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="official-256")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--calibration", type=int, default=4, help="random inputs per network for NNCF")
    ap.add_argument("--int8-dir", type=Path, default=None,
                    help="keep the int8 models here (reused when they are there; default: a temporary folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    bundle = random_bundle(args.preset)
    folder = cached_export(bundle)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    torch_runner = TorchRunner(load_bundle(bundle))
    results, detail = bench_runners({"torch": torch_runner}, args.preset, 1, 1, args.runs, 1, ("networks",), log=log)
    with contextlib.ExitStack() as stack:
        int8_dir = args.int8_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        int8_dir.mkdir(parents=True, exist_ok=True)
        variants = {"openvino-f32": ("f32", False), "openvino-bf16": ("bf16", False),
                    "openvino-int8": ("f32", True), "openvino-int8-bf16": ("bf16", True)}
        int8 = None
        # One OpenVINO runner alive at a time: each compiled model holds its own activation memory (a
        # diffuser's 4096-token attention scores are 2 GB at batch 1), and four runners at once exhaust 24 GB.
        for name, (precision, quantized) in variants.items():
            runner = OpenVinoRunner(folder, cache=False, precision=precision)
            if quantized:
                if int8 is None:
                    int8 = int8_models(runner, int8_dir, args.calibration)
                runner.use_int8(int8)
            res, det = bench_runners({name: runner}, args.preset, 1, 1, args.runs, 1, ("networks",), log=log)
            results += res
            # the step, round robin against torch's, so that both see the same machine
            res, step = bench_runners({"torch": torch_runner, name: runner}, args.preset, 1, 1, args.runs, 1,
                                      ("step",), log=log)
            results += [r for r in res if r.backend == name]
            detail[name] = {**det[name], "step_ms": step[name]["step_ms"],
                            "torch_step_ms_beside_it": step["torch"]["step_ms"],
                            "step_speedup_over_torch": round(step["torch"]["step_ms"] / step[name]["step_ms"], 2)}
            del runner
            gc.collect()
    print(table_text(results))
    for name, d in detail.items():
        if "step_speedup_over_torch" in d:
            print(f"{name}: step {d['step_ms']:.0f} ms, torch beside it {d['torch_step_ms_beside_it']:.0f} ms: "
                  f"{d['step_speedup_over_torch']:.2f}x")
    if args.json:
        atomic_write_text(args.json, json.dumps(report(results, detail, runs=args.runs,
                                                       calibration_samples=args.calibration), indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
