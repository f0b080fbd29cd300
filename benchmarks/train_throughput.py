"""Training throughput of every stage on this machine: optimizer steps per second and samples per second.

    python benchmarks/train_throughput.py [--presets tiny,small] [--steps 12] [--threads 2] [--device cpu]

Each stage runs `--steps` steps at its `cdx train` default batch (vae 8, collaborator 32, diffusers 32) on
synthetic faces prepared once; the first `--warmup` steps are not timed. One process (for torchrun, the
per-process rate times the number of processes is an upper bound).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from cdx.cli.train import STAGES
from cdx.models.config import preset
from cdx.train import loop
from cdx.train.autoencoder import VaeConfig, train_vae
from cdx.train.collaborator import CollabConfig, train_collaborator
from cdx.train.diffusers import train_diffusers
from cdx.train.prepare import prepare
from cdx.train.sources import synthetic


def timed(fn, tc: loop.TrainConfig, warmup: int) -> float:
    """Steps per second of `fn(tc)` after `warmup` steps (the loop's own clock, per step)."""
    stamps = []
    real = loop.ema_update

    def stamp(*args, **kw):  # called once per optimizer step, after it
        real(*args, **kw)
        stamps.append(time.perf_counter())

    loop.ema_update = stamp
    try:
        fn(tc)
    finally:
        loop.ema_update = real
    return (len(stamps) - 1 - warmup) / (stamps[-1] - stamps[warmup])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}")
    print(f"{'preset':<8} {'stage':<18} {'batch':>5} {'steps/s':>8} {'samples/s':>10}")
    for name in args.presets.split(","):
        cfg = preset(name)
        size = cfg.image_size[0]
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            data = prepare(synthetic(256, 1234, size), cfg.modalities, size, work / "data")
            base = loop.TrainConfig(steps=args.steps, warmup=0, device=args.device, log_every=0, ckpt_every=0,
                                    amp="none")
            runs = [("vae", lambda tc: train_vae(cfg, data, tc, VaeConfig(scale_images=64), work))]
            runs += [(f"collaborator:{m.name}", lambda tc, m=m: train_collaborator(cfg, m.name, data, tc,
                                                                                    CollabConfig(), work))
                     for m in cfg.modalities]
            runs += [("diffusers", lambda tc: train_diffusers(cfg, data, tc, work))]
            for stage, fn in runs:
                batch = STAGES[stage.split(":")[0]]["batch"]
                rate = timed(fn, dataclasses.replace(base, batch=batch), args.warmup)
                print(f"{name:<8} {stage:<18} {batch:>5} {rate:8.2f} {rate * batch:10.1f}", flush=True)


if __name__ == "__main__":
    main()
