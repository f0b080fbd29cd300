"""Each collaborator's eps error by noise level on training faces: where a model is imprecise.

    python benchmarks/eps_by_t.py [--checkpoint BUNDLE] [--n 64]

The x0 a DDIM step implies carries the eps error times sqrt((1 - abar_t) / abar_t), about 80x at
t = 999 with LDM's linear betas, so the high-noise column decides whether deterministic sampling from
pure noise stays on the data.
"""
from __future__ import annotations

import argparse

import torch

from cdx.defaults import default_checkpoint
from cdx.models.bundle import load_bundle
from cdx.train.autoencoder import posterior
from cdx.train.collaborator import q_sample, schedule
from cdx.train.data import FaceSet, build_arrays

TS = (999, 900, 800, 700, 500, 300, 100, 20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--data-seed", type=int, default=1234, help="the training set's seed (cdx train --data-seed)")
    args = ap.parse_args()
    model = load_bundle(args.checkpoint or default_checkpoint()).eval()
    cfg = model.cfg
    data = FaceSet(build_arrays(args.n, args.data_seed, cfg.image_size[0]))
    idx = torch.arange(args.n)
    acp = schedule(cfg)
    print("eps MSE by t: " + " ".join(f"{t:>7d}" for t in TS))
    with torch.no_grad():
        z0 = posterior(model.vae, data.image_batch(idx))[0] * cfg.scale_factor
        for m in cfg.modalities:
            ctx = model.encoders[m.name](data.condition_batch(m.kind, idx))
            row = []
            for t in TS:
                noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
                tt = torch.full((args.n,), t)
                eps = model.unets[m.name](q_sample(z0, tt, noise, acp), tt, ctx)
                row.append(float((eps - noise).pow(2).mean()))
            print(f"{m.name:>12s}: " + " ".join(f"{v:7.4f}" for v in row))


if __name__ == "__main__":
    main()
