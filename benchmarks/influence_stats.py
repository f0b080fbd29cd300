"""Where and when the dynamic diffusers give weight to the text collaborator: the mean text weight
by label region and by phase of a 50-step run, over 16 held-out synthetic conditions.

    python benchmarks/influence_stats.py
"""
import os
import tempfile

import numpy as np
import torch

from cdx.defaults import default_checkpoint
from cdx.backends.registry import make_runner
from cdx.sampling.pipeline import generate
from cdx.sampling.request import Request
from cdx.models.masks import REGIONS, save_label_map
from cdx.synth import generate as synth
torch.set_num_threads(1)
runner, _ = make_runner("torch", default_checkpoint())
regions = REGIONS
acc = {r: [] for r in regions}
per_t = []
with tempfile.TemporaryDirectory() as d:
    for k in range(16):
        s = synth((93000, 100 + k), size=64)
        p = os.path.join(d, "m.png"); save_label_map(p, s.label)
        res = generate(runner, runner.cfg, Request(text=s.caption, mask=p, seed=k, steps=50, save_influence=True))
        w = res.loop.influence.float()  # (steps, M, B, 1, h, w)
        ti = res.modalities.index("text")
        wt = w[:, ti, 0, 0].numpy()  # (steps, 16, 16)
        lab = s.label[::4, ::4]  # 64 -> 16, nearest
        per_t.append(wt.mean(axis=(1, 2)))
        for r, ids in regions.items():
            m = np.isin(lab, ids)
            if m.any():
                acc[r].append(wt[:, m].mean(axis=1))  # (steps,)
per_t = np.mean(per_t, axis=0)
n = len(per_t)
print("mean text weight, whole image, by step (t 981 -> 1): first 10 %.3f, middle %.3f, last 10 %.3f, all %.3f"
      % (per_t[:10].mean(), per_t[10:-10].mean(), per_t[-10:].mean(), per_t.mean()))
for r, v in acc.items():
    v = np.mean(v, axis=0)
    print(f"{r:12s} first 10 {v[:10].mean():.3f}  middle {v[10:-10].mean():.3f}  last 10 {v[-10:].mean():.3f}")
