"""`cdx serve` under load: images/s and p50/p95 latency for 1, 4, 8 and 16 concurrent clients, with dynamic
batching on (max batch 8) and off (max batch 1), side by side in one run.

Both apps are deployed at once on one local Ray instance (/on and /off, one model replica each, so an idle
one costs no CPU), and each client count runs off then on back to back, so that a change in what else the
machine runs falls on both alike. Each client is closed-loop: it sends its next request when the last one
is answered. Every request has its own seed, caption and example mask, the same steps.

    python benchmarks/serve_bench.py                       # this machine, the fastest backend here
    python benchmarks/serve_bench.py --gpus-per-replica 1  # the same on a GPU replica
Writes benchmarks/results/<date>-serve-<machine>.json and a .png plot beside it.
"""
from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["This woman has long blond hair.", "This man has a beard and short black hair.",
            "She is smiling and wears eyeglasses.", "This person is young and has brown hair."]
MODES = {"off": 1, "on": 8}  # max batch


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def deploy(args) -> str:
    """A local Ray instance with both apps; returns the base URL."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only (cdx.serve.local)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="cdxbench-", dir="/tmp"))
    import ray
    from ray import serve

    from cdx.serve.app import build_app
    from cdx.serve.local import check_port_free
    from cdx.serve.options import ServeOptions

    check_port_free("127.0.0.1", args.port)
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port}, logging_config={"log_level": "WARNING"})
    for mode, max_batch in MODES.items():
        o = ServeOptions(backend=args.backend, replicas=1, max_batch=max_batch, batch_wait_ms=args.batch_wait_ms,
                         max_items=max(8, max_batch), max_request_batch=1, max_queued=256,
                         cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica)
        print(f"deploying /{mode} (max batch {max_batch})", flush=True)
        serve.run(build_app(o), name=f"bench-{mode}", route_prefix=f"/{mode}",
                  logging_config={"log_level": "WARNING", "enable_access_log": False})
    return f"http://127.0.0.1:{args.port}"


def load(url: str, clients: int, per_client: int, steps: int, masks: list[str], seed0: int) -> dict:
    import httpx

    def client(c: int) -> list[dict]:
        out = []
        with httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0)) as h:
            for k in range(per_client):
                i = c * per_client + k
                body = {"text": CAPTIONS[i % len(CAPTIONS)], "mask": masks[i % len(masks)], "seed": seed0 + i,
                        "steps": steps}
                t = time.perf_counter()
                r = h.post(url + "/v1/generate", json=body)
                dt = time.perf_counter() - t
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: HTTP {r.status_code}: {r.text[:200]}")
                j = r.json()
                out.append({"latency_s": dt, "call_images": j["call_images"], **j["timings"]})
        return out

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(clients) as ex:
        rows = [row for rows in ex.map(client, range(clients)) for row in rows]
    wall = time.perf_counter() - t0
    lat = np.array([r["latency_s"] for r in rows])
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("queue_ms", "encode_ms", "loop_ms", "decode_ms")}
    return {"clients": clients, "requests": len(rows), "wall_s": wall, "images_per_s": len(rows) / wall,
            "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)),
            "mean_call_images": float(np.mean([r["call_images"] for r in rows])), "mean_ms": mean}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for mode, style in (("off", "o--"), ("on", "s-")):
        rows = result["runs"][mode]
        x = [r["clients"] for r in rows]
        label = f"batching {mode} (max batch {MODES[mode]})"
        a.plot(x, [r["images_per_s"] for r in rows], style, label=label)
        b.plot(x, [r["p50_s"] for r in rows], style, label=f"p50, {label}")
        b.plot(x, [r["p95_s"] for r in rows], style, alpha=0.4, label=f"p95, {label}")
    a.set(xlabel="concurrent clients", ylabel="images / s", xscale="log", xticks=CLIENTS, xticklabels=CLIENTS)
    b.set(xlabel="concurrent clients", ylabel="latency (s)", xscale="log", xticks=CLIENTS, xticklabels=CLIENTS)
    a.grid(alpha=0.3)
    b.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.legend(fontsize=7)
    fig.suptitle(f"cdx serve, {result['steps']} steps, {result['backend'].split(';')[0][:60]}\n{result['machine']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


CLIENTS = [1, 4, 8, 16]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--per-client", type=int, default=4, help="requests each client sends (at least 16 in all)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--batch-wait-ms", type=float, default=50.0)
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    masks = [base64.b64encode(m.read_bytes()).decode() for m in sorted((ROOT / "examples").glob("*.png"))]
    url = deploy(args)
    import httpx
    from ray import serve

    backend = httpx.get(url + "/on/v1/model", timeout=60).json()["backend"]
    result = {"machine": f"{cpu_name()}, {os.cpu_count()} cores", "backend": backend, "steps": args.steps,
              "batch_wait_ms": args.batch_wait_ms, "date": datetime.date.today().isoformat(),
              "runs": {m: [] for m in MODES}}
    try:
        for clients in CLIENTS:
            per = max(args.per_client, -(-16 // clients))
            for mode in MODES:  # off, then on, back to back
                row = load(f"{url}/{mode}", clients, per, args.steps, masks, seed0=1000 * clients)
                result["runs"][mode].append(row)
                print(f"{clients:2d} clients, batching {mode:3s}: {row['images_per_s']:.2f} images/s, p50 "
                      f"{row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, mean call {row['mean_call_images']:.1f} "
                      f"images, mean ms {json.dumps({k: round(v) for k, v in row['mean_ms'].items()})}", flush=True)
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
    on = {r["clients"]: r for r in result["runs"]["on"]}
    off = {r["clients"]: r for r in result["runs"]["off"]}
    result["speedup"] = {str(c): on[c]["images_per_s"] / off[c]["images_per_s"] for c in CLIENTS}
    print("images/s with batching / without:", {c: round(v, 2) for c, v in result["speedup"].items()})
    from cdx.io import atomic_write_text

    tag = "cpu" if args.gpus_per_replica == 0 else "gpu"
    out = args.out or ROOT / "benchmarks" / "results" / f"{result['date']}-serve-{tag}.json"
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
