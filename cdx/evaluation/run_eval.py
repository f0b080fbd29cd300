"""`evaluate`: the paper's Tables 1 and 2 on synthetic faces (FD, text consistency, mask consistency per method).

Test conditions are ``n`` synthetic faces drawn from their own seed stream ``(CONDITION_SEED, seed, i)``; the
diffusion model trains on ``(1234, i)`` (``cdx.train.data``) and the eval networks on ``(7100, i)``, so none of
them was seen in training. Each face gives a caption, a 19-class label map and its true attributes.

* FD: Frechet distance between the 224-d eval-net features (``nets.EvalNets.features``) of the generated images
  and of ``n_ref`` real synthetic faces from a second stream ``(REFERENCE_SEED, seed, i)``. Like FID it is
  biased upwards for small ``n``: compare rows of one table (same ``n``), not tables of different ``n``.
* text acc: the attribute classifier's accuracy on the (image, attribute) pairs the caption states, over hair
  colour, skin, beard, age and lipstick (gender is only in the pronouns).
* mask acc: the face parser's pixel accuracy at 32x32 against the input mask NEAREST-resized to 32x32, the exact
  condition the model receives.

The ``real`` row scores the test faces themselves: the ceiling each method can reach with these eval networks.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..sampling.pipeline import decode
from ..models.modalities import kind_of
from ..sampling.runner import Runner
from ..sampling.settings import Sampling
from ..sampling.loop import draw_noise
from ..models.config import ModelConfig
from ..models.masks import one_hot
from ..models.tokenizer import Tokenizer
from ..synth import ALL_ATTRS, generate
from .methods import METHODS, Method, method_named, run_method
from .metrics import attribute_accuracy, fd, feature_stats, paired_ci, paired_fd_cis, pixel_accuracy
from .nets import CLASSIFIER_ATTRS, PARSE_SIZE, EvalNets, load_eval_nets, parse_target

CONDITION_SEED = 72000
REFERENCE_SEED = 73000


def synthetic_faces(key: tuple[int, ...], n: int) -> dict:
    """``n`` faces ``generate(key + (i,))``: images (n, 64, 64, 3), labels, captions, attrs and stated
    restricted to :data:`CLASSIFIER_ATTRS` (columns in that order)."""
    samples = [generate(tuple(key) + (i,)) for i in range(n)]
    return {
        "images": np.stack([s.image for s in samples]),
        "labels": np.stack([s.label for s in samples]),
        "captions": [s.caption for s in samples],
        "attrs": np.stack([s.attrs.as_vector() for s in samples])[:, [ALL_ATTRS.index(a) for a in CLASSIFIER_ATTRS]],
        "stated": np.array([[a in s.stated for a in CLASSIFIER_ATTRS] for s in samples], bool).reshape(n, -1),
    }


def score(nets: EvalNets, images: np.ndarray, faces: dict, ref_features: np.ndarray,
          counts: dict | None = None) -> dict:
    """FD against the reference features, text acc (stated attributes), mask acc (32x32 pixel accuracy).
    With `counts` (a dict) it also fills in the per-image counts behind the two accuracies (see `paired`)."""
    attrs, parsed, features = nets.attributes(images), nets.parse(images), nets.features(images)
    text_acc, per_attr = attribute_accuracy(attrs, faces["attrs"], faces["stated"], CLASSIFIER_ATTRS)
    if counts is not None:
        counts["features"] = features
        counts["text_acc"] = ((attrs == faces["attrs"]) & faces["stated"]).sum(1), faces["stated"].sum(1)
        hits = parsed == faces["parse"]
        counts["mask_acc"] = hits.reshape(len(hits), -1).sum(1), np.full(len(hits), hits[0].size)
    return {"fd": fd(features, ref_features), "text_acc": None if np.isnan(text_acc) else text_acc,
            "mask_acc": pixel_accuracy(parsed, faces["parse"]), "text_acc_per_attr": per_attr}


def paired(counts: dict[str, dict], reference: str, ref_features: np.ndarray | None = None,
           progress: Callable[[int, int], None] | None = None) -> dict[str, dict]:
    """For each other method: reference's score minus its own (text and mask accuracy; FD too when the real
    faces' features are given: negative = reference better), with a 95 % paired bootstrap interval over the
    test conditions ([difference, low, high]; an interval excluding 0 = a real difference). `progress(done,
    total)` follows the FD bootstrap's replicates."""
    others = {m: c for m, c in counts.items() if m != reference}
    fds = {} if ref_features is None else paired_fd_cis(
        counts[reference]["features"], {m: c["features"] for m, c in others.items()}, *feature_stats(ref_features),
        progress=progress)
    out = {}
    for m, c in others.items():
        out[m] = {"fd": [round(v, 3) for v in fds[m]]} if m in fds else {}
        for key in ("text_acc", "mask_acc"):
            (num_r, den), (num_m, _) = counts[reference][key], c[key]
            out[m][key] = [round(v, 5) for v in paired_ci(num_r, num_m, den)] if den.sum() > 0 else None
    return out


def _contexts(runner: Runner, cfg: ModelConfig, tokenizer: Tokenizer, faces: dict, lo: int, hi: int):
    """kind -> (modality name, context) for faces lo..hi, in model order (each encoder runs once per batch).
    The scored kinds are those with a metric in the modality registry (text and mask); others are not run."""
    out = {}
    for m in cfg.modalities:
        metric = kind_of(m.kind).metric
        if metric == "text_accuracy":
            ids, _ = tokenizer.encode(faces["captions"][lo:hi])
            ctx = runner.run(f"{m.name}_encoder", {"tokens": torch.from_numpy(ids)})["context"]
        elif metric == "mask_accuracy":
            ids = faces["parse"][lo:hi].reshape(hi - lo, PARSE_SIZE * PARSE_SIZE)  # the official 32x32 ids
            ctx = runner.run(f"{m.name}_encoder", {"mask": torch.from_numpy(one_hot(ids))})["context"]
        else:
            continue
        out[m.kind] = (m.name, ctx)
    return out


def evaluate(runner: Runner, cfg: ModelConfig, n: int = 128, seed: int = 0, sampling: Sampling | None = None,
             methods: Sequence[str | Method] | str = "all", batch: int = 16, nets: EvalNets | None = None,
             n_ref: int = 1024, progress: Callable[[str], None] | None = None,
             bootstrap_progress: Callable[[int, int], None] | None = None) -> dict:
    """Generate with each method from the same n test conditions and noise; score FD, text acc, mask acc.
    `cfg` is the model's config as sampled (its shaping), `sampling` the settings (default: 50 DDIM steps at
    the model's eta). `methods` are names of :data:`METHODS` or `Method` objects (a benchmark's own
    weighting); with `collaborative` among them, "paired" holds its accuracy differences to each other method."""
    def resolve(m):
        try:
            return method_named(m) if isinstance(m, str) else m
        except KeyError:
            return m

    chosen = list(METHODS.values()) if methods == "all" else [resolve(m) for m in methods]
    unknown = [m for m in chosen if not isinstance(m, Method)]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(str, unknown))}; choose from {', '.join(METHODS)}")
    by_name = {m.name: m for m in chosen}
    names = list(by_name)
    if n < 2 or batch < 1:
        raise ValueError(f"need n >= 2 and batch >= 1, got n={n}, batch={batch}")
    nets = nets or load_eval_nets()
    faces = synthetic_faces((CONDITION_SEED, seed), n)
    faces["parse"] = parse_target(faces["labels"])  # (n, 32, 32)
    ref_features = nets.features(synthetic_faces((REFERENCE_SEED, seed), max(n_ref, 2))["images"])

    sampling = (sampling or Sampling()).checked(cfg)
    table = sampling.table(cfg)
    x_T, noise = draw_noise(seed, n, (cfg.latent_channels, *cfg.latent_size), table.num_steps)  # shared by all
    tokenizer = Tokenizer()
    images = {m: [] for m in names}
    seconds = dict.fromkeys(names, 0.0)
    skipped = dict.fromkeys(names, 0)  # collaborator evaluations (per item) influence gating saved
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        modalities = _contexts(runner, cfg, tokenizer, faces, lo, hi)
        for m in names:
            t0 = time.perf_counter()
            res, _ = run_method(by_name[m], runner, modalities, x_T[lo:hi], noise[:, lo:hi].contiguous(), table, cfg,
                                **sampling.loop_options())
            skipped[m] += res.skipped * (hi - lo)  # a skipped call skips every item of its batch
            images[m].append(decode(runner, res.z0)[1])
            seconds[m] += time.perf_counter() - t0
            if progress is not None:
                progress(f"{m}: {hi}/{n}")
    result = {"n": n, "seed": seed, "steps": int(table.num_steps), "sampler": sampling.sampler,
              "spacing": sampling.spacing, "eta": table.eta,
              "gate": sampling.gate, "cache_interval": sampling.cache_interval,
              "n_ref": max(n_ref, 2), "shaping": bool(cfg.shaping),
              "guidance": {m.name: m.guidance for m in cfg.modalities},
              "real": score(nets, faces["images"], faces, ref_features), "methods": {}}
    counts = {m: {} for m in names}
    for m in names:
        result["methods"][m] = {**score(nets, np.concatenate(images[m]), faces, ref_features, counts[m]),
                                "seconds": round(seconds[m], 2),
                                "unet_calls_per_image": round(len(by_name[m].kinds) * table.num_steps
                                                              - skipped[m] / n, 3),
                                "full_unet_calls_per_image": len(by_name[m].kinds)
                                * -(-table.num_steps // sampling.cache_interval)}  # the others: shallow paths
    if "collaborative" in names and len(names) > 1:
        result["paired"] = paired(counts, "collaborative", ref_features, bootstrap_progress)
    return result


def markdown_table(result: dict) -> str:
    """Rows = methods (and the real test faces), columns = FD (lower is better), text acc, mask acc; with
    paired differences, three more columns: collaborative's score minus the row's, [95 % interval]."""
    guided = ", ".join(f"{k} {v:g}" for k, v in result.get("guidance", {}).items() if v != 1.0)
    pairs = result.get("paired") or {}
    head = "| method | FD (lower better) | text acc | mask acc |"
    rule = "| --- | ---: | ---: | ---: |"
    if pairs:
        head += " collaborative - row: FD | text | mask |"
        rule += " ---: | ---: | ---: |"
    spacing = "" if result.get("spacing", "uniform") == "uniform" else f"{result['spacing']}-spaced "
    lines = [f"n = {result['n']}, {result['steps']} {spacing}{result.get('sampler', 'ddim').upper()} steps "
             f"(eta {result.get('eta', 0.0):g}), "
             f"official shaping {'on' if result.get('shaping') else 'off'}, "
             f"guidance {guided or 'none'}, seed {result['seed']}, FD against "
             f"{result['n_ref']} real synthetic faces", "", head, rule]
    rows = list(result["methods"].items()) + [("real test faces (ceiling)", result["real"])]
    for name, r in rows:
        text = "n/a" if r["text_acc"] is None else f"{r['text_acc']:.3f}"
        line = f"| {name} | {r['fd']:.2f} | {text} | {r['mask_acc']:.3f} |"
        if pairs:
            p = pairs.get(name) or {}
            line += "".join(f" {_diff(p.get(k), 2 if k == 'fd' else 3)} |" for k in ("fd", "text_acc", "mask_acc"))
        lines.append(line)
    return "\n".join(lines) + "\n"


def _diff(d, digits: int = 3) -> str:
    return "" if not d else f"{d[0]:+.{digits}f} [{d[1]:+.{digits}f}, {d[2]:+.{digits}f}]"
