"""Where each way of mixing the two collaborators lands on the text-accuracy / mask-accuracy trade-off.

Every two-modality method of `cdx eval` mixes the same two eps; they differ in the weights. This script scores,
on the same test conditions and noise (`cdx.evaluation.evaluate`):

* static mixes: the mask collaborator's weight fixed at w everywhere and at every step (w = 0.5 is
  `composable`; a mask-heavy static mix is what `no_temporal` becomes when the first step's weights favour the
  mask);
* the dynamic diffusers' weights under the official shaping with mask boost factors S (the bundle's setting is
  one of them), and without shaping.

    python benchmarks/mix_frontier.py --checkpoint B --n 256 --seed 1 --json frontier.json [--plot frontier.png]

A method that is better at mixing sits above and right of the static curve: more mask accuracy at the same text
accuracy. `--plot` redraws a saved JSON with `--from-json`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cdx.cli.options import parse_guidance
from cdx.defaults import default_checkpoint
from cdx.backends.registry import make_runner
from cdx.models.schedule import resolve_eta
from cdx.evaluation.methods import Method
from cdx.evaluation.nets import load_eval_nets
from cdx.evaluation.run_eval import evaluate
from cdx.train.assemble import sampling_config


def static(w_mask: float, kinds: list[str]) -> Method:
    """The mask collaborator at weight w_mask, the text one at 1 - w_mask, whatever the step and pixel."""
    share = {"mask": w_mask, "text": 1.0 - w_mask}

    def hook(i, eps, influence):
        one = torch.ones_like(eps[0, :, :1], dtype=torch.float32)
        return torch.stack([one * share[k] for k in kinds])

    return Method(f"static_{w_mask:g}", ("mask", "text"), lambda: hook)


def with_boost(cfg, scale: float | None):
    """cfg with the official shaping and mask boost `scale` (as `cdx train assemble --shaping-scale` writes it);
    None: no shaping."""
    return sampling_config(cfg, cfg.eta, scale is not None, None, scale)


def with_bias(cfg, scale: float):
    """cfg with the mask's influence multiplied by `scale` at every step (no decay): a constant bias log(scale)
    on the mask diffuser's logit, the text modality taking what the mask gives up (as `cdx train assemble
    --shaping-decay none --shaping-scale` writes it)."""
    return sampling_config(cfg, cfg.eta, True, None, scale, "none")


def run(args) -> dict:
    guidance = parse_guidance(args.guidance) or None
    runner, desc = make_runner(args.backend, Path(args.checkpoint) if args.checkpoint else default_checkpoint(), None,
                               args.device, guidance=guidance)
    cfg = runner.cfg
    eta = resolve_eta(cfg.eta, args.eta)
    kinds = [m.kind for m in cfg.modalities]
    nets = load_eval_nets()
    common = dict(n=args.n, seed=args.seed, steps=args.steps, batch=args.batch, nets=nets, n_ref=args.n_ref, eta=eta)
    points = []

    def add(kind, param, res, method):
        r = res["methods"][method]
        points.append({"kind": kind, "param": param, "fd": r["fd"], "text_acc": r["text_acc"],
                       "mask_acc": r["mask_acc"]})
        print(f"{kind:8s} {str(param):>6s}  FD {r['fd']:7.2f}  text {r['text_acc']:.3f}  mask {r['mask_acc']:.3f}",
              flush=True)

    t0 = time.perf_counter()
    statics = [static(w, kinds) for w in args.static]
    if statics:
        res = evaluate(runner, cfg, methods=statics, **common)
        for w, m in zip(args.static, statics):
            add("static", w, res, m.name)
    learned = [("learned", s, with_boost(cfg, s)) for s in args.boost]
    learned += [("bias", b, with_bias(cfg, b)) for b in args.bias]
    if not args.no_unshaped:
        learned.append(("learned", "none", with_boost(cfg, None)))
    for kind, param, c in learned:
        res = evaluate(runner, c, methods=args.methods, **common)
        for m in args.methods:
            add(kind if m == "collaborative" else f"{kind}:{m}", param, res, m)
    return {"checkpoint": args.checkpoint or "shipped", "backend": desc, "n": args.n, "seed": args.seed,
            "steps": args.steps, "eta": eta, "guidance": {m.name: m.guidance for m in cfg.modalities},
            "seconds": round(time.perf_counter() - t0, 1), "points": points}


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.4), dpi=120)
    styles = {"static": ("o-", "0.5", "static mix, mask weight w", "w="),
              "learned": ("s-", "C0", "dynamic diffusers + official shaping, boost S", "S="),
              "bias": ("D-", "C2", "dynamic diffusers, mask influence x b (no decay)", "b=")}
    for kind, (fmt, color, label, prefix) in styles.items():
        pts = [p for p in result["points"] if p["kind"] == kind and p["param"] != "none"]
        if not pts:
            continue
        ax.plot([p["text_acc"] for p in pts], [p["mask_acc"] for p in pts], fmt, color=color, label=label, ms=5)
        for p in pts:
            ax.annotate(f"{prefix}{p['param']:g}", (p["text_acc"], p["mask_acc"]), fontsize=7, color=color,
                        xytext=(4, -9 if kind == "static" else 4), textcoords="offset points")
    for p in result["points"]:
        if p["param"] == "none" and p["kind"] == "learned":
            ax.plot(p["text_acc"], p["mask_acc"], "*", color="C3", ms=11, label="dynamic diffusers alone (no shaping)")
        elif ":" in p["kind"]:
            ax.plot(p["text_acc"], p["mask_acc"], "x", color="0.2", ms=5)
            ax.annotate(p["kind"].split(":")[1], (p["text_acc"], p["mask_acc"]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("text accuracy")
    ax.set_ylabel("mask accuracy")
    g = ", ".join(f"{k} {v:g}" for k, v in result["guidance"].items() if v != 1)
    ax.set_title(f"n = {result['n']}, seed {result['seed']}, eta {result['eta']:g}, guidance {g or 'none'}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="bundle (default: the shipped model)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1, help="1 = held-out conditions (the README's table uses 0)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n-ref", type=int, default=512)
    ap.add_argument("--eta", type=float, default=None)
    ap.add_argument("--guidance", action="append", default=[], help="MODALITY=SCALE (repeatable)")
    ap.add_argument("--static", type=lambda s: [float(v) for v in s.split(",") if v], default=[0.1, 0.25, 0.5, 0.75, 0.9])
    ap.add_argument("--boost", type=lambda s: [float(v) for v in s.split(",") if v], default=[2, 4, 8, 16, 32, 64])
    ap.add_argument("--bias", type=lambda s: [float(v) for v in s.split(",") if v], default=[],
                    help="mask influence factors applied at every step without decay (1 = no shaping)")
    ap.add_argument("--methods", type=lambda s: s.split(","), default=["collaborative"],
                    help="cdx eval methods scored at each learned setting (collaborative first)")
    ap.add_argument("--no-unshaped", action="store_true", help="skip the diffusers' weights without shaping")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--from-json", action="append", default=[],
                    help="only redraw the plot of saved results (repeatable: the points of runs on the same "
                         "conditions, n and seed, are drawn together)")
    args = ap.parse_args()
    if args.from_json:
        runs = [json.loads(Path(f).read_text()) for f in args.from_json]
        if len({(r["n"], r["seed"], r["eta"]) for r in runs}) > 1:
            raise SystemExit("--from-json: the results differ in n, seed or eta; draw them separately")
        result = {**runs[0], "points": [p for r in runs for p in r["points"]]}
    else:
        result = run(args)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    if args.plot:
        plot(result, args.plot)


if __name__ == "__main__":
    main()
