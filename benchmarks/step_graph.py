"""One collaborative step as one graph against the per-network graphs, on ONNX Runtime and OpenVINO.

    python benchmarks/step_graph.py [--checkpoint BUNDLE] [--batch 1] [--runs 20] [--json OUT.json]

Per runtime, three ways to run the same step at a fresh random (x, t, contexts, noise) and the step row
of a 10-step DDIM table: `per-network` (the 2M graphs called one by one, the combine in torch: what the
backends do today), `networks-graph` (the 2M networks in one graph, the combine in torch) and `step-graph`
(networks and combine in one graph). Timed round robin (one call of each per round), medians; the
x_prev of every way is compared with the per-network one.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdx.defaults import default_checkpoint  # noqa: E402
from cdx.bench.harness import machine_info  # noqa: E402
from cdx.export.cache import cached_export  # noqa: E402
from cdx.backends.openvino.runner import OpenVinoRunner  # noqa: E402
from cdx.backends.ort import OrtRunner  # noqa: E402
from cdx.sampling.loop import make_shaping  # noqa: E402
from cdx.sampling.step import CollaborativeStep  # noqa: E402
from step_graph_model import StepGraph, example_inputs, export_step_graph, step_graph_path  # noqa: E402
from cdx.io import atomic_write_text  # noqa: E402
from cdx.kernels import collaborate  # noqa: E402
from cdx.models.bundle import load_bundle, verified_bundle_hash  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    ckpt = args.checkpoint or default_checkpoint()
    model = load_bundle(ckpt)
    cfg = model.cfg
    names = [m.name for m in cfg.modalities]
    table = cfg.step_table(10)
    shaping = make_shaping(cfg, names, table, cfg.timesteps)
    shaped, receiver = shaping is not None, shaping.receiver if shaping else -1
    digest = verified_bundle_hash(ckpt)
    folder = cached_export(ckpt)
    graphs = {}
    for combine in (False, True):
        path = step_graph_path(digest, cfg, names, args.batch, combine, shaped, receiver)
        if not path.is_file():
            export_step_graph(model, names, path, args.batch, combine, shaped, receiver)
        graphs[combine] = path
    g = torch.Generator().manual_seed(1)
    feed = example_inputs(model, names, args.batch, True, shaped, g)
    i = 3  # a step in the middle of the table
    coeffs = torch.from_numpy(table.coeffs)
    decay = torch.from_numpy(shaping.decay) if shaped else None
    scale = torch.from_numpy(shaping.scale) if shaped else None
    feed["row"] = coeffs[i]
    feed["t"] = torch.full((args.batch,), int(table.timesteps[i]))
    if shaped:
        feed["decay"], feed["scale"] = decay[i], scale
    x, t, noise = feed["x"], feed["t"], feed["noise"]
    contexts = [feed[f"context_{n}"] for n in names]
    net_feed = {k: feed[k] for k in ["x", "t", *[f"context_{n}" for n in names]]}

    calls = {}
    for runtime, runner in (("onnxruntime", OrtRunner(folder, providers=["CPUExecutionProvider"])),
                            ("openvino", OpenVinoRunner(folder))):
        step = CollaborativeStep.plain(runner.run, names, contexts, x)
        calls[f"{runtime}/per-network"] = lambda step=step: step(x, t, noise, coeffs, i, decay, scale, receiver)[1]
        nets = StepGraph(graphs[False], runtime)

        def networks_graph(nets=nets):
            out = nets(net_feed)
            return collaborate(out["eps"], out["logits"], x, noise, coeffs, i, decay, scale, receiver)[1]

        calls[f"{runtime}/networks-graph"] = networks_graph
        whole = StepGraph(graphs[True], runtime)
        calls[f"{runtime}/step-graph"] = lambda whole=whole: whole(feed)["x_prev"]
    ref = calls["onnxruntime/per-network"]()
    err = {k: float((fn() - ref).abs().max()) for k, fn in calls.items()}
    times = {k: [] for k in calls}
    for _ in range(args.runs):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1000)
    rows = {k: {"median_ms": round(statistics.median(v), 3), "max_abs_vs_ort_per_network": err[k]}
            for k, v in times.items()}
    for k, r in rows.items():
        print(f"{k:<30} {r['median_ms']:9.2f} ms   max|x_prev - ref| {r['max_abs_vs_ort_per_network']:.2e}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"machine": machine_info(), "checkpoint": str(ckpt),
                                                 "batch": args.batch, "runs": args.runs, "results": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
