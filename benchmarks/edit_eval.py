"""Editing on synthetic faces, where the truth is known (issue: `cdx edit`, the paper's Algorithm 3).

For each test face: change one text-only attribute (hair colour) and one mask region (bangs or the
mouth) in the ground truth, render the target label map with the same layout seed, edit the face with
`cdx.edit.optimise` towards (new caption, new mask), and score every --alpha with the `cdx eval` networks:

* text_edit: the classifier reads the new hair colour (edit strength, text);
* mask_acc: parser pixel accuracy against the new mask (edit strength, mask);
* keep_psnr: PSNR to the input face outside the edited regions (hair, and wherever the label changed);
* keep_attrs: the classifier agrees with the face's unchanged attributes (skin, beard, lipstick).

    python benchmarks/edit_eval.py --checkpoint BUNDLE --faces 6 --alphas 0.0,0.4,0.7,1.0 --json edit.json
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from cdx.defaults import default_checkpoint
from cdx.sampling.pipeline import encode_conditions, to_uint8
from cdx.sampling.request import Request
from cdx.backends.pytorch.eager import TorchRunner
from cdx.sampling.loop import draw_noise, make_shaping, sample
from cdx.models.schedule import resolve_eta
from cdx.evaluation.nets import CLASSIFIER_ATTRS, load_eval_nets
from cdx.models.bundle import load_bundle
from cdx.models.masks import label_map_to_ids, save_label_map
from cdx.edit.optimise import EditConfig, run_edit
from cdx.synth import HAIR, LEVELS, generate, render_with

KEEP = ("skin", "beard", "lipstick")


def target_of(sample, rng):
    """The edited ground truth: another hair colour, and bangs toggled (or the mouth changed if bald)."""
    attrs = sample.attrs
    colours = [c for c in range(len(LEVELS["hair_color"])) if c != attrs.hair_color]
    new = attrs.replace(hair_color=int(rng.choice(colours)))
    if attrs.hair_length != 0:
        new = new.replace(bangs=1 - attrs.bangs)
    else:
        new = new.replace(mouth=(attrs.mouth + 1) % len(LEVELS["mouth"]))
    image, label = render_with(new, new, sample.layout_seed, sample.colour_seed, size=64)
    caption = f"This {LEVELS['gender'][attrs.gender]} has {LEVELS['hair_color'][new.hair_color]} hair."
    return new, image, label, caption


def psnr(a, b, where):
    if where.sum() == 0:
        return float("nan")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64))[where] ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--faces", type=int, default=6)
    ap.add_argument("--alphas", default="0.0,0.4,0.7,1.0")
    ap.add_argument("--embed-steps", type=int, default=EditConfig.embed_steps)
    ap.add_argument("--finetune-steps", type=int, default=EditConfig.finetune_steps)
    ap.add_argument("--embed-lr", type=float, default=EditConfig.embed_lr)
    ap.add_argument("--finetune-lr", type=float, default=EditConfig.finetune_lr)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the model's)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--work", default="/tmp/cdx_edit_eval")
    args = ap.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    ckpt = args.checkpoint or default_checkpoint()
    model = load_bundle(ckpt)
    cfg = model.cfg
    nets = load_eval_nets()
    rng = np.random.default_rng(args.seed)
    eta = resolve_eta(cfg.eta, args.eta)
    table = cfg.step_table(args.steps, "ddim", eta)
    rows = {a: {"text_edit": [], "mask_acc": [], "keep_psnr": [], "keep_attrs": []} for a in alphas}
    import os

    os.makedirs(args.work, exist_ok=True)
    t0 = time.time()
    for k in range(args.faces):
        s = generate((91000, args.seed, k), size=64)
        new, target_image, target_label, caption = target_of(s, rng)
        mask_path = f"{args.work}/target_{k}.png"
        save_label_map(mask_path, target_label)
        names, contexts = encode_conditions(TorchRunner(model), cfg, Request(text=caption, mask=mask_path))
        image = torch.from_numpy(s.image.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        state = run_edit(model, image, dict(zip(names, contexts)),
                         EditConfig(args.embed_steps, args.embed_lr, args.finetune_steps, args.finetune_lr,
                                    seed=args.seed + k))
        runner = TorchRunner(state.apply(model))
        shaping = make_shaping(cfg, state.names, table, cfg.timesteps)
        x_T, noise = draw_noise(args.seed + k, 1, (cfg.latent_channels, *cfg.latent_size), table.num_steps)
        target_ids = label_map_to_ids(target_label).reshape(32, 32)
        changed = (s.label != target_label) | (s.label == HAIR) | (target_label == HAIR)
        for a in alphas:
            z = sample(runner, state.names, state.contexts(a), x_T, noise, table, shaping).z0
            out = to_uint8(runner.run("vae_decoder", {"latent": z})["image"])[0]
            pred = nets.attributes(out[None])[0]
            parsed = nets.parse(out[None])[0]
            rows[a]["text_edit"].append(float(pred[CLASSIFIER_ATTRS.index("hair_color")] == new.hair_color))
            rows[a]["mask_acc"].append(float((np.asarray(parsed) == target_ids).mean()))
            rows[a]["keep_psnr"].append(psnr(out, s.image, ~changed))
            keep = [float(pred[CLASSIFIER_ATTRS.index(n)] == getattr(s.attrs, n)) for n in KEEP]
            rows[a]["keep_attrs"].append(float(np.mean(keep)))
        print(f"face {k}: {time.time() - t0:.0f} s", flush=True)
    summary = {str(a): {m: float(np.nanmean(v)) for m, v in r.items()} for a, r in rows.items()}
    print("| alpha | text edit (hair colour) | mask acc (new mask) | PSNR outside edits | unchanged attrs kept |")
    print("|---:|---:|---:|---:|---:|")
    for a, r in summary.items():
        print(f"| {a} | {r['text_edit']:.2f} | {r['mask_acc']:.3f} | {r['keep_psnr']:.1f} dB | {r['keep_attrs']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"faces": args.faces, "args": vars(args), "eta": eta, "alphas": summary}, f, indent=1)


if __name__ == "__main__":
    main()
