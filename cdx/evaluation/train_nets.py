"""Train the evaluation networks on synthetic faces and write them to ``cdx/data/eval_nets``.

    python -m cdx.evaluation.train_nets --out cdx/data/eval_nets            # about 10 minutes on one CPU thread

Training and held-out faces come from their own seeds (:data:`TRAIN_SEED`, :data:`VAL_SEED`), disjoint from the
diffusion model's training faces (``cdx.train.data``, seed 1234) and from ``cdx eval``'s test conditions.
Light noise / blur augmentation makes the networks a little more tolerant of generated images.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..train.data import synth_fingerprint
from ..synth import ALL_ATTRS, TEXT_ATTRS, generate_batch
from .nets import CLASSIFIER_ATTRS, AttributeClassifier, FaceParser, parse_target, save_eval_nets, to_input

TRAIN_SEED = 7100
VAL_SEED = 7101
ATTR_COLS = [ALL_ATTRS.index(a) for a in CLASSIFIER_ATTRS]  # columns of generate_batch's attrs
STATED_COLS = [TEXT_ATTRS.index(a) for a in CLASSIFIER_ATTRS]  # columns of generate_batch's stated


def make_split(seed: int, n: int) -> dict[str, np.ndarray]:
    images, labels, _, attrs, stated = generate_batch(seed, n)
    return {"images": images, "parse": parse_target(labels), "attrs": attrs[:, ATTR_COLS],
            "stated": stated[:, STATED_COLS]}


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per image: Gaussian noise (sigma up to 0.06 in [-1, 1] units) and, for a fifth of them, a light blur."""
    b = x.shape[0]
    sigma = 0.06 * torch.rand((b, 1, 1, 1), generator=g)
    x = x + sigma * torch.randn(x.shape, generator=g)
    k1 = torch.tensor([0.15, 0.7, 0.15])
    k = (k1[:, None] * k1[None, :]).expand(3, 1, 3, 3)  # (3, 1, 3, 3) depthwise
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    pick = (torch.rand((b, 1, 1, 1), generator=g) < 0.2).float()
    return pick * blurred + (1 - pick) * x


def _loss(net, x, split, idx):
    if isinstance(net, FaceParser):
        return F.cross_entropy(net(x), torch.from_numpy(split["parse"][idx]))
    target = torch.from_numpy(split["attrs"][idx])
    return sum(F.cross_entropy(v, target[:, j]) for j, v in enumerate(net(x).values()))


def train(net, split, epochs: int, batch: int, lr: float, seed: int, log=print) -> None:
    """AdamW with a linear warm-up and cosine decay over ``epochs`` passes of ``split``."""
    n = split["images"].shape[0]
    steps = epochs * (n // batch)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    net.train()
    step, t0, run = 0, time.time(), 0.0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g).numpy()
        for k in range(n // batch):
            idx = np.sort(order[k * batch:(k + 1) * batch])
            x = augment(to_input(split["images"][idx]), g)
            loss = _loss(net, x, split, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            value = loss.item()
            run = 0.98 * run + 0.02 * value if step > 1 else value
            if step % 50 == 0 or step == steps:
                log(f"  {type(net).__name__} epoch {epoch + 1}/{epochs} step {step}/{steps} loss {run:.4f} "
                    f"({time.time() - t0:.0f}s)")
    net.eval()


@torch.inference_mode()
def held_out(parser: FaceParser, classifier: AttributeClassifier, split) -> dict:
    """Parser pixel accuracy at 32x32; classifier accuracy per attribute, on all faces and where the caption states it."""
    x = to_input(split["images"])
    pred = torch.cat([parser(x[i:i + 256]).argmax(1) for i in range(0, x.shape[0], 256)]).numpy()
    out = torch.cat([torch.stack([v.argmax(1) for v in classifier(x[i:i + 256]).values()], 1)
                     for i in range(0, x.shape[0], 256)]).numpy()
    ok = out == split["attrs"]  # (n, A)
    stated = split["stated"]
    return {
        "n": int(x.shape[0]),
        "parser_pixel_acc": float((pred == split["parse"]).mean()),
        "classifier_acc": {a: float(ok[:, j].mean()) for j, a in enumerate(CLASSIFIER_ATTRS)},
        "classifier_acc_stated": {a: float(ok[stated[:, j], j].mean()) for j, a in enumerate(CLASSIFIER_ATTRS)},
        "classifier_acc_stated_mean": float(ok[stated].mean()),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="cdx/data/eval_nets")
    ap.add_argument("--train", type=int, default=12000, help="training faces")
    ap.add_argument("--val", type=int, default=1000, help="held-out faces")
    ap.add_argument("--parser-epochs", type=int, default=2)
    ap.add_argument("--classifier-epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.time()
    log = lambda m: print(m, flush=True)  # noqa: E731
    log(f"generating {args.train} training and {args.val} held-out faces")
    tr, va = make_split(TRAIN_SEED, args.train), make_split(VAL_SEED, args.val)
    parser, classifier = FaceParser(), AttributeClassifier()
    train(parser, tr, args.parser_epochs, args.batch, args.lr, seed=1, log=log)
    train(classifier, tr, args.classifier_epochs, args.batch, args.lr, seed=2, log=log)
    acc = held_out(parser, classifier, va)
    info = {"trained_by": "python -m cdx.evaluation.train_nets", "torch": torch.__version__,
            "synth": synth_fingerprint(),  # the generator's source hash: which faces these nets know
            "seeds": {"train": TRAIN_SEED, "held_out": VAL_SEED}, "train_faces": args.train,
            "epochs": {"parser": args.parser_epochs, "classifier": args.classifier_epochs},
            "seconds": round(time.time() - t0, 1), "held_out": acc}
    save_eval_nets(parser, classifier, args.out, info)
    log(f"held-out: parser pixel acc {acc['parser_pixel_acc']:.4f}; classifier "
        + ", ".join(f"{a} {v:.4f}" for a, v in acc["classifier_acc"].items()))
    log(f"wrote {args.out} ({info['seconds']:.0f}s)")
    return info


if __name__ == "__main__":
    main()
