"""The fewer-evaluations frontier (docs/fast-sampling.md): quality (`cdx eval --methods collaborative`) and
latency (`cdx bench --stages end_to_end`, each configuration in its own process) of each sampling
configuration, on the shipped model and ONNX Runtime, then one plot.

    python benchmarks/fast_frontier.py --n 256 --seed 1 --out benchmarks/results/fast-frontier.json
    python benchmarks/fast_frontier.py --plot-only --out benchmarks/results/fast-frontier.json

Each configuration runs as `cdx` subprocesses (a fresh interpreter, undisturbed by the others); a
configuration already in --out is kept, so an interrupted study resumes. Quality is deterministic; latency
wants a quiet machine (say which in the report)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# (sampler, steps, cache interval, influence interval, spacing): the configurations the study measures
CONFIGS = [
    ("ddim", 50, 1, 1, "uniform"), ("ddim", 50, 1, 2, "uniform"), ("ddim", 30, 1, 1, "uniform"),
    ("ddim", 20, 1, 1, "uniform"), ("ddim", 20, 1, 2, "uniform"), ("ddim", 15, 1, 1, "uniform"),
    ("ddim", 12, 1, 2, "uniform"), ("ddim", 10, 1, 1, "uniform"),
    ("ddim", 12, 1, 2, "quad"), ("ddim", 10, 1, 2, "quad"),
    ("dpmpp-2m", 10, 1, 1, "uniform"), ("dpmpp-2m", 15, 1, 1, "uniform"), ("dpmpp-2m", 20, 1, 1, "uniform"),
    ("dpmpp-3m", 10, 1, 1, "uniform"), ("dpmpp-3m", 15, 1, 1, "uniform"),
    ("dpmpp-2m-sde", 12, 1, 1, "uniform"), ("dpmpp-2m-sde", 15, 1, 1, "uniform"),
    ("dpmpp-2m-sde", 20, 2, 1, "uniform"),
]


def key(c) -> str:
    return f"{c[0]}-{c[1]}-c{c[2]}-i{c[3]}" + ("" if c[4] == "uniform" else f"-{c[4]}")


def flags(c) -> list[str]:
    return ["--sampler", c[0], "--steps", str(c[1]), "--cache-interval", str(c[2]), "--influence-interval", str(c[3]),
            "--spacing", c[4]]


def cdx(*args) -> dict:
    """Run `cdx ARGS --json F` in a subprocess and return F's contents."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "r.json"
        subprocess.run([sys.executable, "-m", "cdx", *args, "--json", str(out)], check=True)
        return json.loads(out.read_text())


def measure(c, n: int, seed: int, runs: int) -> dict:
    ev = cdx("eval", "--methods", "collaborative", "--n", str(n), "--seed", str(seed), "--backend", "onnxruntime",
             *flags(c))["methods"]["collaborative"]
    b = cdx("bench", "--backends", "onnxruntime", "--stages", "end_to_end", "--runs", str(runs), *flags(c))
    e2e = next(r["median_ms"] for r in b["results"] if r["stage"] == "end_to_end")
    cost = b["where_the_time_goes"]["onnxruntime"]
    return {"fd": ev["fd"], "text_acc": ev["text_acc"], "mask_acc": ev["mask_acc"],
            "unet_calls": ev.get("unet_calls_per_image"), "evaluations": cost.get("evaluations_per_image"),
            "gflop": cost.get("gflop_per_image"), "end_to_end_ms": e2e}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric, label in zip(axes, ("fd", "text_acc", "mask_acc"), ("FD (lower is better)", "text accuracy",
                                                                        "mask accuracy")):
        for k, r in results.items():
            if "@" in k:  # another draw's row: the plot shows seed 1
                continue
            x = r["evaluations"]
            ax.scatter(x, r[metric], s=18)
            ax.annotate(k, (x, r[metric]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image (collaborators and diffusers)")
        ax.set_ylabel(label)
    fig.suptitle("shipped model, cdx eval --methods collaborative; configuration = "
                 "sampler-steps-cache-influence[-spacing]")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results = doc.get("results", doc)  # a file with notes beside its rows keeps them under "results"
    if not args.plot_only:
        for c in CONFIGS:
            if key(c) not in results:
                results[key(c)] = measure(c, args.n, args.seed, args.runs)
                args.out.write_text(json.dumps(doc if "results" in doc else results, indent=1))
    plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
