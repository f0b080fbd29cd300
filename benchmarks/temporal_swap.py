"""When does the diffusers' change over t matter? `collaborative` and `no_temporal` spliced at step s.

`no_temporal` reuses the diffusers' step-0 weights at every step (under each step's shaping); `collaborative`
runs them at every step. The two differ only in the weights of steps 1..N-1, so splicing them shows in which
steps the difference moves each metric:

* ``frozen_from_s``: the diffusers run at steps < s, their step-0 weights are reused from step s on
  (s = N is `collaborative`, s = 1 is `no_temporal`);
* ``frozen_until_s``: the step-0 weights are reused at steps < s, the diffusers run from step s on.

It also records, along `collaborative`'s own run, the mask's weight per step and label region: the diffusers'
raw weight, the raw weight of step 0, and both after the step's shaping. Under the official shaping the mask's
weight is ``S w k / (1 + (S - 1) w k)`` with the decay k(t) -> 0 at the end, so a change of the raw w moves
the mixed weight by ``S k / (1 + (S - 1) w k)^2``: the column `gain` (the derivative's mean per step).

    python benchmarks/temporal_swap.py --n 128 --seed 0 --backend onnxruntime --json swap.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from cdx.cli.options import parse_guidance
from cdx.defaults import default_checkpoint
from cdx.backends.registry import make_runner
from cdx.models.schedule import resolve_eta
from cdx.evaluation.methods import Method
from cdx.evaluation.nets import load_eval_nets
from cdx.evaluation.run_eval import CONDITION_SEED, evaluate, synthetic_faces
from cdx.models.masks import REGIONS


def spliced(name: str, s: int, diffusers_first: bool) -> Method:
    """The diffusers' weights at steps < s and the step-0 weights after (or the reverse)."""
    def make():
        first: list[torch.Tensor] = []

        def hook(i, eps, influence):
            if not first:
                first.append(influence.raw())
            live = (i < s) == diffusers_first
            return influence() if live else influence(first[0])

        return hook

    return Method(name, ("mask", "text"), make)


class Recorder:
    """`collaborative` (same weights) that records the mask's weights per step and region."""

    def __init__(self, labels: np.ndarray, mask_index: int, steps: int, batch: int):
        self.labels, self.mi, self.batch = labels, mask_index, batch
        self.sums = {k: np.zeros((steps, len(REGIONS))) for k in ("raw", "raw0", "mixed", "mixed0", "gain")}
        self.counts = np.zeros(len(REGIONS))
        self.generation = -1

    def method(self) -> Method:
        return Method("collaborative", ("mask", "text"), self._make)

    def _make(self):
        # evaluate() makes one hook per batch of conditions, in order: the g-th generation is batch g
        self.generation += 1
        lo = self.generation * self.batch
        first: list[torch.Tensor] = []
        where: list[np.ndarray] = []  # this batch's region masks at the latent size

        def hook(i, eps, influence):
            raw = influence.raw()
            if not first:
                first.append(raw)
            mixed, mixed0 = influence(), influence(first[0])
            dw = 1e-3  # the mixed weight's slope in the raw one, by a finite difference on the mask's share
            bumped = raw.clone()
            bumped[self.mi] = (raw[self.mi] + dw).clamp(max=1)
            bumped[1 - self.mi] = 1 - bumped[self.mi]
            gain = (influence(bumped)[self.mi] - mixed[self.mi]) / (bumped[self.mi] - raw[self.mi]).clamp_min(1e-9)
            maps = {"raw": raw[self.mi], "raw0": first[0][self.mi], "mixed": mixed[self.mi], "mixed0": mixed0[self.mi],
                    "gain": gain}
            maps = {k: v[:, 0].detach().cpu().numpy() for k, v in maps.items()}  # (B, h, w) each
            if not where:
                b, stride = raw.shape[1], self.labels.shape[-1] // raw.shape[-1]
                lab = self.labels[lo:lo + b, ::stride, ::stride]
                where.extend(np.isin(lab, ids) for ids in REGIONS.values())
                self.counts += [sel.sum() for sel in where]
            for j, sel in enumerate(where):
                for k, v in maps.items():
                    self.sums[k][i, j] += v[sel].sum()
            return mixed

        return hook

    def table(self) -> dict:
        return {k: (v / np.maximum(self.counts, 1)).round(4).tolist() for k, v in self.sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="bundle (default: the shipped model)")
    ap.add_argument("--backend", default="onnxruntime", choices=["torch", "onnxruntime"])
    ap.add_argument("--device", default=None)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--n-ref", type=int, default=1024)
    ints = lambda s: [int(v) for v in s.split(",") if v]
    ap.add_argument("--splits", type=ints, default=[10, 20, 30, 40], help="s of both splices")
    ap.add_argument("--from-splits", type=ints, default=None, help="s of frozen_from_s (default: --splits)")
    ap.add_argument("--until-splits", type=ints, default=None, help="s of frozen_until_s (default: --splits)")
    ap.add_argument("--guidance", action="append", default=[], help="MODALITY=SCALE (repeatable)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    runner, desc = make_runner(args.backend, Path(args.checkpoint) if args.checkpoint else default_checkpoint(), None,
                               args.device, guidance=parse_guidance(args.guidance) or None)
    cfg = runner.cfg
    kinds = [m.kind for m in cfg.modalities if m.kind in ("mask", "text")]
    labels = synthetic_faces((CONDITION_SEED, args.seed), args.n)["labels"]
    eta = resolve_eta(cfg.eta, None)
    num_steps = cfg.step_table(args.steps, "ddim", eta).num_steps
    rec = Recorder(labels, kinds.index("mask"), num_steps, args.batch)
    methods = [rec.method(), "no_temporal"]
    methods += [spliced(f"frozen_from_{s}", s, True) for s in
                (args.splits if args.from_splits is None else args.from_splits)]
    methods += [spliced(f"frozen_until_{s}", s, False) for s in
                (args.splits if args.until_splits is None else args.until_splits)]
    t0 = time.perf_counter()
    res = evaluate(runner, cfg, n=args.n, seed=args.seed, steps=args.steps, methods=methods, batch=args.batch,
                   nets=load_eval_nets(), n_ref=args.n_ref, eta=eta)
    out = {"backend": desc, "n": args.n, "seed": args.seed, "steps": args.steps,
           "seconds": round(time.perf_counter() - t0, 1), "regions": list(REGIONS),
           "region_pixels": rec.counts.tolist(), "weights_by_step": rec.table(),
           "methods": {m: {k: v[k] for k in ("fd", "text_acc", "mask_acc", "text_acc_per_attr")}
                       for m, v in res["methods"].items()},
           "paired": res.get("paired")}
    for m, v in out["methods"].items():
        p = (out["paired"] or {}).get(m, {})
        print(f"{m:18s} FD {v['fd']:6.2f} text {v['text_acc']:.3f} mask {v['mask_acc']:.3f}  "
              + "  ".join(f"{a} {x:.3f}" for a, x in v["text_acc_per_attr"].items())
              + (f"  collab-row text {p['text_acc'][0]:+.3f} mask {p['mask_acc'][0]:+.3f}" if p else ""))
    w = rec.table()
    for j, r in enumerate(REGIONS):
        print(r)
        for i in range(0, num_steps, 5):
            print(f"  step {i:2d} raw {w['raw'][i][j]:.3f} raw0 {w['raw0'][i][j]:.3f} "
                  f"mixed {w['mixed'][i][j]:.3f} mixed0 {w['mixed0'][i][j]:.3f} gain {w['gain'][i][j]:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
