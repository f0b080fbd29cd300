"""Each collaborator's eps error by noise level on training faces: where a model is imprecise.

    python benchmarks/eps_by_t.py [--checkpoint BUNDLE] [--n 64] [--regions]

The x0 a DDIM step implies carries the eps error times sqrt((1 - abar_t) / abar_t), about 80x at
t = 999 with LDM's linear betas, so the high-noise column decides whether deterministic sampling from
pure noise stays on the data.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from cdx.defaults import default_checkpoint
from cdx.models import masks
from cdx.models.bundle import load_bundle
from cdx.train.autoencoder import posterior
from cdx.train.collaborator import q_sample, schedule
from cdx.train.prepare import prepare
from cdx.train.sources import synthetic

TS = (999, 900, 800, 700, 500, 300, 100, 20)
REGIONS = {name: masks.REGIONS[name] for name in ("skin", "mouth/lips", "hair", "background")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--data-seed", type=int, default=1234, help="the training set's seed (cdx train --data-seed)")
    ap.add_argument("--regions", action="store_true", help="per region: eps errors, optimal and learned mask share")
    args = ap.parse_args()
    model = load_bundle(args.checkpoint or default_checkpoint()).eval()
    cfg = model.cfg
    size = cfg.image_size[0]
    with tempfile.TemporaryDirectory() as tmp:  # the training set's first n faces, prepared as cdx train does
        data = prepare(synthetic(args.n, args.data_seed, size), cfg.modalities, size, Path(tmp))
        batch = data.inputs(data.batch(range(args.n)))  # "image" and each modality's encoder input
    acp = schedule(cfg)
    print("eps MSE by t: " + " ".join(f"{t:>7d}" for t in TS))
    with torch.no_grad():
        z0 = posterior(model.vae, batch["image"])[0] * cfg.scale_factor
        for m in cfg.modalities:
            ctx = model.encoders[m.name](batch[m.name])
            row = []
            for t in TS:
                noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
                tt = torch.full((args.n,), t)
                eps = model.unets[m.name](q_sample(z0, tt, noise, acp), tt, ctx)
                row.append(float((eps - noise).pow(2).mean()))
            print(f"{m.name:>12s}: " + " ".join(f"{v:7.4f}" for v in row))
        if args.regions:
            by_region(model, batch, z0, acp, args.n)


def by_region(model, batch, z0, acp, n) -> None:
    cfg = model.cfg
    kinds = {m.kind: m.name for m in cfg.modalities}
    mask, text = kinds["mask"], kinds["text"]
    ctx = {name: model.encoders[name](batch[name]) for name in kinds.values()}
    h = z0.shape[-1]
    ids = batch[mask].argmax(1)  # (n, 19, 1024) one-hot -> (n, 1024) class ids
    side = int(ids.shape[1] ** 0.5)
    labels = ids.reshape(n, side, side)[:, :: side // h, :: side // h].numpy()
    regions = {r: np.isin(labels, ids) for r, ids in REGIONS.items()}  # (n, h, w) each
    print("per region: eps MSE mask / text, optimal mask share w*, the diffusers' mean mask weight")
    for t in TS:
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(t))
        tt = torch.full((n,), t)
        xt = q_sample(z0, tt, noise, acp)
        e = {k: model.unets[k](xt, tt, ctx[k]) for k in (mask, text)}
        logits = torch.stack([model.diffusers[k](xt, tt, ctx[k]) for k in (mask, text)])
        w_mask = torch.softmax(logits, 0)[0, :, 0].numpy()  # (n, h, w)
        parts = []
        for r, where in regions.items():
            sel = torch.from_numpy(where)[:, None].expand_as(noise)
            d_m, d_t = (e[mask] - noise)[sel], (e[text] - noise)[sel]
            diff = d_m - d_t  # loss(w) = ||d_t + w diff||^2, minimised at w* = -<d_t, diff> / ||diff||^2
            w_star = float((-(d_t * diff).sum() / diff.pow(2).sum()).clamp(0, 1))
            learned = float(w_mask[where].mean())
            parts.append(f"{r} {float(d_m.pow(2).mean()):.4f}/{float(d_t.pow(2).mean()):.4f} "
                         f"w* {w_star:.2f} D {learned:.2f}")
        print(f"t {t:4d}: " + " | ".join(parts))


if __name__ == "__main__":
    main()
