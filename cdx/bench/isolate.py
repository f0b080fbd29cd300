"""Each backend measured in a process of its own, one after the other: backends measured side by side in
one process disturb each other (thread pools that stay awake, allocator and cache state), which once
recorded torch eager at 748 ms beside two other backends against 433 ms alone (10 steps, shipped model, an
idle AVX-512 EPYC). A fresh interpreter per backend (multiprocessing's "spawn") sees only its own pools."""
from __future__ import annotations

import multiprocessing
import sys


def _one(backend: str, ckpt, engine_dir, device, preset: str, batch: int, sampling, runs: int, warmup: int,
         stages: tuple, mask) -> tuple[list, dict, dict]:
    """In the child: make the runner, bench it, return (rows, detail, images)."""
    from ..backends import make_runner
    from .harness import bench_runners

    runner, desc = make_runner(backend, ckpt, engine_dir, device, feature_cache=sampling.feature_cache,
                               progress=lambda n: print(f"exporting {n} to ONNX (first use)", file=sys.stderr))
    print(desc, file=sys.stderr, flush=True)
    images: dict = {}
    rows, detail = bench_runners({backend: runner}, preset or runner.cfg.preset, batch, sampling, runs, warmup,
                                 stages, mask=mask, log=lambda s: print(s, file=sys.stderr, flush=True),
                                 images=images)
    return rows, detail, images


def _attempt(name: str, fn, skip_unusable: bool, skipped: dict, log):
    """fn(), or None where it raised a backend's one-line CdxError and unusable backends are skipped (the reason
    recorded in `skipped` and logged)."""
    from ..errors import CdxError

    try:
        return fn()
    except CdxError as e:
        if not skip_unusable:
            raise
        skipped[name] = str(e)
        log(f"skipped {name}: {e}")
        return None


def bench_isolated(names: list[str], ckpt, engine_dir, device, preset, batch: int, sampling, runs: int,
                   warmup: int, stages: tuple, mask=None, skip_unusable: bool = False,
                   log=print) -> tuple[list, dict, dict]:
    """(rows, detail, skipped) of every backend, each in its own process; an unusable backend is skipped (with
    `skip_unusable`) or raises its one-line error. Images of the end-to-end stage are compared with torch's."""
    from .harness import compare_images

    ctx = multiprocessing.get_context("spawn")
    rows, detail, skipped, images = [], {}, {}, {}
    for name in names:
        with ctx.Pool(1) as pool:
            out = _attempt(name, lambda: pool.apply(_one, (name, ckpt, engine_dir, device, preset, batch, sampling,
                                                           runs, warmup, stages, mask)), skip_unusable, skipped, log)
        if out is None:
            continue
        r, d, im = out
        rows += r
        detail.update(d)
        images.update(im)
    compare_images(images, detail, log)
    return rows, detail, skipped


def bench_backends(names: list[str], every: bool, ckpt, engine_dir, device, preset, batches: list[int], sampling,
                   runs: int, warmup: int, stages: tuple, mask=None, isolate: bool = True,
                   log=print) -> tuple[list, dict, dict]:
    """`cdx bench --backends`: every backend at every batch size (each in its own process with `isolate`, else
    side by side in this one), and per backend what an image costs (network evaluations, GFLOP) and the
    GFLOP/s it achieved end to end against this machine's matmul peak."""
    from ..backends import make_runner
    from ..errors import CdxError
    from .harness import bench_runners

    results, detail, skipped = [], {}, {}
    runners = {}
    if not isolate:
        for name in names:
            made = _attempt(name, lambda: make_runner(name, ckpt, engine_dir, device,
                                                      feature_cache=sampling.feature_cache,
                                                      progress=lambda n: log(f"exporting {n} to ONNX (first use)")),
                            every, skipped, log)
            if made is not None:
                runners[name], desc = made
                log(desc)
    for b in batches:
        if isolate:
            res, det, skip = bench_isolated([n for n in names if n not in skipped], ckpt, engine_dir, device, preset,
                                            b, sampling, runs, warmup, stages, mask, every, log)
            skipped.update(skip)
        elif runners:
            res, det = bench_runners(runners, preset or next(iter(runners.values())).cfg.preset, b, sampling, runs,
                                     warmup, stages, mask=mask, log=log)
        else:
            res, det = [], {}
        results += res
        detail.update(det if len(batches) == 1 else {f"{k} b={b}": v for k, v in det.items()})
    if not results:
        raise CdxError("no backend could run here: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return results, detail, skipped


def add_costs(detail: dict, results: list, ckpt, sampling) -> dict:
    """Each backend's evaluations and GFLOP per image and achieved GFLOP/s (end to end); the machine's peak."""
    import torch

    from ..models.bundle import load_bundle
    from .flops import evaluations, image_cost, matmul_peak, network_gflop

    model = load_bundle(ckpt)
    model.cfg = model.cfg.with_feature_cache(sampling.feature_cache)
    cost = image_cost(network_gflop(model), evaluations(model.cfg, sampling, [m.name for m in model.cfg.modalities]))
    for r in results:
        if r.stage == "end_to_end":
            key = r.backend if r.backend in detail else f"{r.backend} b={r.batch}"
            detail.setdefault(key, {}).update({
                "evaluations_per_image": cost["evaluations"], "gflop_per_image": cost["gflop"],
                "gflops_achieved": round(cost["gflop"] * r.batch / (r.median_ms / 1000), 2)})
    return {"fp32": round(matmul_peak(torch.float32), 1), "bf16": round(matmul_peak(torch.bfloat16), 1)}
