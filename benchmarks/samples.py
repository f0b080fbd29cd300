"""A grid of generated faces next to their masks and captions (for the README).

    python benchmarks/samples.py --out docs/samples.png --n 6 --steps 50

Conditions come from held-out synthetic faces (seed stream 93000, never used in training); each row
shows the input mask, the face cdx generates from (caption, mask), and the caption underneath.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from cdx.defaults import default_checkpoint
from cdx.backends.registry import make_runner
from cdx.sampling.pipeline import generate
from cdx.sampling.request import Request
from cdx.models.masks import colorize, save_label_map
from cdx.synth import generate as synth


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--backend", default="onnxruntime")
    args = ap.parse_args()
    runner, desc = make_runner(args.backend, args.checkpoint or default_checkpoint())
    print(desc)
    tile, text_h = 128, 46
    sheet = Image.new("RGB", (args.n * (2 * tile + 8), tile + text_h), "white")
    draw = ImageDraw.Draw(sheet)
    with tempfile.TemporaryDirectory() as d:
        for k in range(args.n):
            s = synth((93000, k), size=64)
            path = os.path.join(d, f"m{k}.png")
            save_label_map(path, s.label)
            face = generate(runner, runner.cfg, Request(text=s.caption, mask=path, seed=k, steps=args.steps)).images[0]
            x = k * (2 * tile + 8)
            sheet.paste(Image.fromarray(colorize(s.label)).resize((tile, tile), Image.NEAREST), (x, 0))
            sheet.paste(Image.fromarray(face).resize((tile, tile), Image.BICUBIC), (x + tile, 0))
            words, lines, line = s.caption.split(), [], ""
            for w in words:
                if len(line) + len(w) + 1 > 42:
                    lines.append(line)
                    line = w
                else:
                    line = f"{line} {w}".strip()
            lines.append(line)
            draw.multiline_text((x + 2, tile + 2), "\n".join(lines[:3]), fill=(0, 0, 0))
            print(f"{k}: {s.caption}")
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
