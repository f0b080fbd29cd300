"""How well a model follows real label maps (CelebAMask-HQ masks, say) next to its own synthetic ones.

For each mask file and seed it generates a face from the mask and a caption, parses the face with cdx's
eval face parser and scores the pixel accuracy against the mask at 32x32 (the condition the model gets, as
`cdx eval`'s mask accuracy). With `--synthetic-captions` seed s takes the caption of a synthetic condition
(the same one for every mask) and also scores `cdx eval`'s text accuracy on the attributes it states, so a
real mask and a synthetic one are compared under the same captions. It also prints each mask's share of
background, skin, hair and all face parts, next to the 5th-95th percentiles of the same shares over synthetic
training masks: a real mask outside them is outside what the model was trained on.

    python benchmarks/real_masks.py ../shared/examples/512_masks/*.png --seeds 4 [--synthetic-captions]
        [--grid grid.png] [--json r.json]

The grid shows each mask next to its faces; real masks are licensed data, so keep such grids out of the
repository.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from cdx.defaults import default_checkpoint
from cdx.backends.registry import make_runner
from cdx.sampling.pipeline import generate
from cdx.sampling.request import Request
from cdx.errors import CdxError
from cdx.evaluation.metrics import attribute_accuracy
from cdx.evaluation.nets import CLASSIFIER_ATTRS, load_eval_nets, parse_target
from cdx.evaluation.run_eval import synthetic_faces
from cdx.models.masks import FACE_PARTS, class_ids, colorize, load_label_map
from cdx.synth import generate as synth

SHARES = {"background": class_ids("background"), "skin": class_ids("skin"), "hair": class_ids("hair"),
          "face parts": FACE_PARTS}
CAPTION = "This woman has brown hair. She is in her thirties."
CAPTION_SEED = 74000  # the synthetic conditions whose captions --synthetic-captions uses


def shares(label: np.ndarray) -> dict[str, float]:
    return {k: float(np.isin(label, ids).mean()) for k, ids in SHARES.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("masks", nargs="+", type=Path)
    ap.add_argument("--caption", default=CAPTION)
    ap.add_argument("--synthetic-captions", action="store_true",
                    help="seed s: the caption of synthetic condition s instead of --caption; scores text accuracy")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--backend", default="onnxruntime", choices=["torch", "onnxruntime"])
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--synthetic", type=int, default=500, help="synthetic training masks for the percentiles")
    ap.add_argument("--grid", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    try:  # read every mask first: a bad file stops the run before any generation, in one line
        labels = [load_label_map(p) for p in args.masks]
    except CdxError as e:
        raise SystemExit(f"real_masks: {e}")
    runner, desc = make_runner(args.backend, Path(args.checkpoint) if args.checkpoint else default_checkpoint())
    nets = load_eval_nets()
    syn = [shares(synth((1234, i), size=64).label) for i in range(args.synthetic)]
    ranges = {k: [float(np.percentile([s[k] for s in syn], q)) for q in (5, 95)] for k in SHARES}
    conds = synthetic_faces((CAPTION_SEED,), args.seeds) if args.synthetic_captions else None
    captions = conds["captions"] if conds else [args.caption] * args.seeds
    out = {"backend": desc, "captions": captions, "synthetic_p5_p95": ranges, "masks": {}}
    rows = []
    for path, label in zip(args.masks, labels):
        target = parse_target(label[None])[0]
        accs, faces = [], []
        for seed in range(args.seeds):
            res = generate(runner, runner.cfg, Request(text=captions[seed], mask=str(path), seed=seed, steps=50))
            face = np.asarray(res.images[0])
            accs.append(float((nets.parse(face[None])[0] == target).mean()))
            faces.append(face)
        own = shares(label)
        out["masks"][path.name] = {"mask_acc": accs, "mean": float(np.mean(accs)), "shares": own}
        text = ""
        if conds:
            acc, per_attr = attribute_accuracy(nets.attributes(np.stack(faces)), conds["attrs"], conds["stated"],
                                               CLASSIFIER_ATTRS)
            out["masks"][path.name].update(text_acc=acc, text_acc_per_attr=per_attr)
            text = f"text acc {acc:.3f}, "
        rows.append([colorize(label)] + faces)
        outside = [k for k, v in own.items() if not ranges[k][0] <= v <= ranges[k][1]]
        print(f"{path.name}: {text}mask acc {np.mean(accs):.3f} (seeds {', '.join(f'{a:.3f}' for a in accs)}); "
              + ", ".join(f"{k} {v:.2f}" for k, v in own.items())
              + (f"; outside the synthetic 5-95 %: {', '.join(outside)}" if outside else ""))
    print("synthetic 5-95 %: " + ", ".join(f"{k} {lo:.2f}-{hi:.2f}" for k, (lo, hi) in ranges.items()))
    if args.grid:
        side = 128
        canvas = Image.new("RGB", (side * (args.seeds + 1), side * len(rows)))
        for r, row in enumerate(rows):
            for c, im in enumerate(row):
                canvas.paste(Image.fromarray(im).convert("RGB").resize((side, side), Image.NEAREST), (side * c, side * r))
        canvas.save(args.grid)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
