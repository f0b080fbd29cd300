"""cdx end to end on a GPU, side by side: the reference path against the fast backends.

    python benchmarks/bench_gpu.py --out OUT              # official-256, batch 4 then 1, 50 DDIM steps
    python benchmarks/bench_gpu.py --dry-run --out OUT    # the same code on CPU: tiny preset, 2 steps

Variants (--variants, comma-separated; default: every one but torch-bf16-graph):
    eager-fp32                the reference path as the official code runs it: fp32 TorchRunner, bmm
                              attention, the unfused torch ops between the networks, a Python loop
    torch-fp16                CudaTorchRunner (fp16, SDPA), the plain loop, the fused kernel
    torch-fp16-graph          the same, each step replayed from a CUDA graph (cdx/engine/cuda_graph.py)
    torch-fp16-graph-loop     the whole loop captured in one graph
    torch-fp16-graph-streams  the step's networks on separate streams inside the graph
    torch-fp16-graph-unfused  the step graph with the unfused torch ops instead of the fused kernel
    torch-fp16-graph-cl       the step graph with channels-last weights
    torch-bf16-graph          bf16 instead of fp16
    tensorrt-fp16             TensorRTRunner on --engine-dir in the step graph (skipped unless tensorrt imports)

Weights are random (cdx.models.random_init's distribution, drawn on the device; no bundle on disk).
Per variant and batch: end-to-end latency (encoders, the loop, VAE decode, image copied to the host),
the loop per step, host time per step (issuing a step, no sync), the networks alone per step
(replayed from a graph), the time outside the networks, peak GPU memory, and the PSNR of the image
against a strict-fp32 reference (TF32 off) from the same seed and weights. Writes OUT/bench_gpu.json
(`cdx bench` format: machine + results, plus extras) and OUT/bench_gpu.md after every measurement.
On CPU (--device cpu / --dry-run) graph variants run the same step code eagerly; the numbers are
marked dry_run and measure nothing about a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cdx.engine import cuda_graph as CG  # noqa: E402
from cdx.engine.runner import TorchRunner  # noqa: E402
from cdx.engine.sampler import draw_noise, make_shaping, sample  # noqa: E402
from cdx.engine.torch_cuda import CudaTorchRunner  # noqa: E402
from cdx.kernels import collaborate_torch, select_kernel  # noqa: E402
from cdx.models.collab import CollaborativeModel  # noqa: E402
from cdx.models.random_init import randomize  # noqa: E402
from cdx.models.config import MASK_CLASSES, MASK_TOKENS, preset as get_preset  # noqa: E402

GOAL_SPEEDUP, GOAL_OUTSIDE_PCT, PSNR_MIN = 10.0, 2.0, 30.0


@dataclass(frozen=True)
class Variant:
    name: str
    runner: str  # key of the runner it uses: reference, fp16, fp16-cl, fp16-pad8, compile-fp16, bf16, tensorrt
    loop: str  # plain, step or loop
    streams: int = 1
    unfused: bool = False


VARIANTS = {v.name: v for v in (
    Variant("eager-fp32", "reference", "plain", unfused=True),
    Variant("torch-fp16", "fp16", "plain"),
    Variant("torch-fp16-graph", "fp16", "step"),
    Variant("torch-fp16-graph-loop", "fp16", "loop"),
    Variant("torch-fp16-graph-streams", "fp16", "step", streams=4),
    Variant("torch-fp16-graph-unfused", "fp16", "step", unfused=True),
    Variant("torch-fp16-graph-cl", "fp16-cl", "step"),
    Variant("torch-fp16-graph-streams-pad8", "fp16-pad8", "step", streams=4),  # heads padded: fused SDPA
    Variant("torch-compile-fp16-graph-streams", "compile-fp16", "step", streams=4),  # max-autotune in our graphs
    Variant("torch-bf16-graph", "bf16", "step"),
    Variant("tensorrt-fp16", "tensorrt", "step"),
)}
# max-autotune compiles official-256's UNets for minutes, past the device check's budget: ask for it by name
DEFAULT_VARIANTS = [n for n in VARIANTS if n not in ("torch-bf16-graph", "torch-compile-fp16-graph-streams")]


@dataclass
class Row:
    """One measurement, with the fields of `cdx.engine.bench.BenchResult` (the `cdx bench` JSON)."""

    backend: str
    preset: str
    device: str
    batch: int
    steps: int
    stage: str
    median_ms: float
    runs: int


class Skip(Exception):
    """A variant that cannot run here, with the reason."""


# ----------------------------------------------------------------------------- machine and model

def card_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def card_slug(dev: torch.device) -> str:
    return re.sub(r"[^a-z0-9]+", "-", card_name(dev).lower()).strip("-")


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def machine(dev: torch.device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "onnxruntime": _version("onnxruntime"),
            "torch_threads": torch.get_num_threads(), "triton": _version("triton"),
            "cuda_python": _version("cuda-python")}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), collaborate_kernel=select_kernel(dev),
                    matmul_tf32_default=torch.backends.cuda.matmul.allow_tf32,
                    cudnn_tf32_default=torch.backends.cudnn.allow_tf32)
    return info


@torch.no_grad()
def random_model(cfg, device: torch.device, seed: int = 0) -> CollaborativeModel:
    """The model with random_init's distribution, allocated and drawn on `device` (no default init):
    matrices N(0, 1/fan_in), norm weights 1 + 0.1 N, norm biases and other vectors 0.05 N."""
    with torch.device("meta"):
        model = CollaborativeModel(cfg)
    model = model.to_empty(device=device)
    randomize(model, seed)
    left = [name for name, _ in model.named_buffers()]
    if left:
        raise RuntimeError(f"buffers {left[:3]} would be left uninitialised by the meta-device build")
    return model.eval()


def weights_mb(runner) -> float | None:
    model = getattr(runner, "model", None)
    if model is None:
        return None
    return round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20, 1)


# ----------------------------------------------------------------------------- one request

@dataclass
class Request:
    names: list[str]
    conditions: dict  # modality name -> encoder inputs (host tensors)
    x_T: torch.Tensor
    noise: torch.Tensor
    table: object
    shaping: object


def make_request(cfg, batch: int, steps: int, seed: int) -> Request:
    """Random token ids and a random label map as the conditions; x_T and noise from the seed."""
    g = torch.Generator().manual_seed(seed)
    conditions = {}
    for m in cfg.modalities:
        if m.kind == "text":
            ids = torch.randint(1, m.text.vocab_size, (batch, m.text.max_seq_len), generator=g)
            conditions[m.name] = {"tokens": ids}
        else:
            ids = torch.randint(0, MASK_CLASSES, (batch, MASK_TOKENS), generator=g)
            onehot = torch.nn.functional.one_hot(ids, MASK_CLASSES).transpose(1, 2).contiguous()  # (B, 19, 1024)
            conditions[m.name] = {"mask": onehot}
    names = [m.name for m in cfg.modalities]
    table = cfg.step_table(steps)
    shaping = make_shaping(cfg, names, table, cfg.timesteps)
    x_T, noise = draw_noise(seed, batch, (cfg.latent_channels, *cfg.latent_size), table.num_steps)
    return Request(names, conditions, x_T, noise, table, shaping)


def encode(runner, req: Request) -> list[torch.Tensor]:
    return [runner.run(f"{n}_encoder", req.conditions[n])["context"] for n in req.names]


class LoopRun:
    """How a variant runs the N steps: the plain `sample`, or a GraphedLoop (eager on CPU)."""

    def __init__(self, variant: Variant, dev: torch.device):
        self.variant = variant
        self.mode = variant.loop if dev.type == "cuda" else "eager"
        self.combine = collaborate_torch if variant.unfused and variant.loop != "plain" else None

    def loop(self, runner, req: Request, contexts) -> CG.GraphedLoop:
        plan = CG.plan_loop(runner, req.names, contexts, req.x_T, req.noise, req.table, req.shaping)
        return CG.graphed_loop(runner, plan, self.mode, self.variant.streams, self.combine)

    def __call__(self, runner, req: Request, contexts):
        if self.variant.loop == "plain":
            return sample(runner, req.names, contexts, req.x_T, req.noise, req.table, req.shaping)
        return self.loop(runner, req, contexts)(req.x_T, req.noise, contexts, req.table, req.shaping)

    def timed(self, runner, req: Request, contexts, sync) -> tuple[float, float]:
        """(host ms, total ms) of the N steps; the host time stops when the last step is issued."""
        if self.variant.loop == "plain":
            sync()
            t0 = time.perf_counter()
            sample(runner, req.names, contexts, req.x_T, req.noise, req.table, req.shaping)
        else:
            loop = self.loop(runner, req, contexts)
            loop.load(req.x_T, req.noise, contexts, req.table, req.shaping)
            loop.prepare()
            sync()
            t0 = time.perf_counter()
            loop.replay()
        host = time.perf_counter() - t0
        sync()
        return host * 1000, (time.perf_counter() - t0) * 1000


def end_to_end(runner, run: LoopRun, req: Request) -> torch.Tensor:
    """Encoders, the loop, the VAE decoder, and the image on the host: (B, 3, H, W) float32."""
    contexts = encode(runner, req)
    res = run(runner, req, contexts)
    return runner.run("vae_decoder", {"latent": res.z0})["image"].float().cpu()


def networks_ms(runner, req: Request, contexts, streams: int, dev: torch.device, iters: int) -> float:
    """The step's networks alone, per step: replayed from a CUDA graph (eager on CPU)."""
    plan = CG.plan_loop(runner, req.names, contexts, req.x_T, req.noise, req.table, req.shaping)
    loop = CG.GraphedLoop(runner, plan, "eager", streams)
    loop.load(req.x_T, req.noise, contexts, req.table, req.shaping)  # step 0: t_0 is in range
    if dev.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            loop.networks()
        return (time.perf_counter() - t0) * 1000 / iters
    with torch.inference_mode():
        loop.networks()  # warm-up outside the capture
    graph = CG.capture(loop.networks, dev)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize(dev)
    del graph
    return start.elapsed_time(end) / iters


def psnr(ref: torch.Tensor, img: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), both clamped as they would be saved."""
    mse = ((img.clamp(-1, 1) - ref.clamp(-1, 1)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


@contextlib.contextmanager
def settings(kernel: str | None = None, tf32: bool | None = None, cudnn_benchmark: bool | None = None):
    """Temporarily force the collaborate kernel (CDX_KERNEL), TF32 and cuDNN autotuning."""
    saved = (os.environ.get("CDX_KERNEL"), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.benchmark)
    try:
        if kernel is not None:
            os.environ["CDX_KERNEL"] = kernel
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        if cudnn_benchmark is not None:
            torch.backends.cudnn.benchmark = cudnn_benchmark
        yield
    finally:
        if saved[0] is None:
            os.environ.pop("CDX_KERNEL", None)
        else:
            os.environ["CDX_KERNEL"] = saved[0]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]
        torch.backends.cudnn.benchmark = saved[3]


def variant_settings(variant: Variant):
    if variant.runner == "reference":  # the official defaults: no autotuning, TF32 only where torch allows it
        return settings(kernel="torch", cudnn_benchmark=False)
    return settings(cudnn_benchmark=True)


# ----------------------------------------------------------------------------- the run

class Bench:
    def __init__(self, args):
        self.args = args
        self.dev = torch.device(args.device)
        self.cfg = get_preset(args.preset)
        self.t_start = time.monotonic()
        self.runners: dict[str, object] = {}
        self.model32 = None
        self.refs: dict[int, torch.Tensor] = {}
        self.images: dict[tuple[str, int], torch.Tensor] = {}
        self.rows: list[Row] = []
        self.report = {
            "machine": machine(self.dev), "results": [], "dry_run": args.dry_run or self.dev.type != "cuda",
            "config": {"preset": args.preset, "steps": args.steps, "batches": args.batches, "runs": args.runs,
                       "warmup": args.warmup, "seed": args.seed, "variants": args.variants,
                       "date": datetime.date.today().isoformat()},
            "variants": {}, "memory_mb": {}, "checks": {}, "goal": {}, "notes": [],
        }

    # -- bookkeeping
    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def left_s(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t_start)

    def log(self, msg: str):
        print(f"[bench_gpu {time.monotonic() - self.t_start:6.1f}s] {msg}", flush=True)

    def record(self, variant: str, batch: int, stage: str, ms: float, runs: int):
        self.rows.append(Row(variant, self.args.preset, card_name(self.dev), batch, self.args.steps, stage,
                             round(ms, 3), runs))
        self.log(f"{variant:<26} b={batch} {stage:<22} {ms:10.3f} ms")

    def note(self, msg: str):
        self.report["notes"].append(msg)
        self.log(msg)

    def write(self):
        self.report["results"] = [asdict(r) for r in self.rows]
        self.report["goal"] = self.goal()
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("bench_gpu.json", json.dumps(self.report, indent=1, default=str)),
                           ("bench_gpu.md", self.markdown())):
            tmp = out / f".{name}.tmp"
            tmp.write_text(text)
            os.replace(tmp, out / name)

    # -- runners
    def runner(self, key: str):
        if key in self.runners:
            return self.runners[key]
        if self.model32 is None:
            t0 = time.perf_counter()
            self.model32 = random_model(self.cfg, self.dev, self.args.seed)
            self.note(f"built {self.args.preset} with random weights on {self.dev} in "
                      f"{time.perf_counter() - t0:.1f} s")
        if key == "reference":
            r = TorchRunner(self.model32, self.dev)
        elif key in ("fp16", "fp16-cl", "fp16-pad8", "bf16"):
            dt = torch.bfloat16 if key == "bf16" else torch.float16
            r = CudaTorchRunner(copy.deepcopy(self.model32), self.dev, dt, channels_last=key == "fp16-cl",
                                cudnn_benchmark=False, pad_heads=8 if key == "fp16-pad8" else 0)
        elif key == "compile-fp16":  # inductor max-autotune, captured by cdx's CUDA graphs like the eager nets
            from cdx.engine.compiled import CompiledRunner

            r = CompiledRunner(CudaTorchRunner(copy.deepcopy(self.model32), self.dev, torch.float16,
                                               cudnn_benchmark=False))
        elif key == "tensorrt":
            r = self.tensorrt_runner()
        else:
            raise ValueError(key)
        self.runners[key] = r
        return r

    def tensorrt_runner(self):
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise Skip("tensorrt is not importable here")
        if not self.args.engine_dir:
            raise Skip("no --engine-dir given (build engines with `cdx build-engine --fp16`)")
        from cdx.engine.trt import TensorRTRunner

        r = TensorRTRunner(self.args.engine_dir, device=self.dev)
        if r.cfg.preset != self.cfg.preset:
            raise Skip(f"the engines are for {r.cfg.preset}, not {self.cfg.preset}")
        return r

    # -- measurements
    def reference_image(self, batch: int, req: Request) -> torch.Tensor:
        if batch not in self.refs:
            ref_runner = self.runner("reference")
            with settings(kernel="torch", tf32=False, cudnn_benchmark=False):
                self.refs[batch] = end_to_end(ref_runner, LoopRun(VARIANTS["eager-fp32"], self.dev), req)
        return self.refs[batch]

    def measure(self, variant: Variant, batch: int, req: Request):
        args, name = self.args, variant.name
        runner = self.runner(variant.runner)
        run = LoopRun(variant, self.dev)
        runs = max(1, min(args.runs, 2)) if variant.runner == "reference" else args.runs
        with variant_settings(variant):
            if self.dev.type == "cuda":
                self.sync()
                torch.cuda.reset_peak_memory_stats(self.dev)
                base = torch.cuda.memory_allocated(self.dev)
            t0 = time.perf_counter()
            image = end_to_end(runner, run, req)  # first call: capture, autotuning, kernel compiles
            self.record(name, batch, "first_call", (time.perf_counter() - t0) * 1000, 1)
            for _ in range(max(0, args.warmup - 1)):
                end_to_end(runner, run, req)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                image = end_to_end(runner, run, req)
                times.append((time.perf_counter() - t0) * 1000)
            self.record(name, batch, "end_to_end", statistics.median(times), runs)
            if self.dev.type == "cuda":
                self.report["memory_mb"].setdefault(name, {})[str(batch)] = {
                    "peak_allocated": round(torch.cuda.max_memory_allocated(self.dev) / 2**20, 1),
                    "above_start": round((torch.cuda.max_memory_allocated(self.dev) - base) / 2**20, 1),
                    "weights": weights_mb(runner)}
            self.images[(name, batch)] = image

            contexts = encode(runner, req)
            host, total = zip(*(run.timed(runner, req, contexts, self.sync) for _ in range(runs)))
            n = req.table.num_steps
            step_ms, host_ms = statistics.median(total) / n, statistics.median(host) / n
            self.record(name, batch, "loop", statistics.median(total), runs)
            self.record(name, batch, "step", step_ms, runs)
            self.record(name, batch, "host_per_step", host_ms, runs)
            iters = max(3, runs) if self.dev.type == "cuda" else runs
            net_ms = networks_ms(runner, req, contexts, variant.streams, self.dev, iters)
            self.record(name, batch, "networks_per_step", net_ms, iters)
            self.record(name, batch, "outside_networks_per_step", step_ms - net_ms, runs)

        check = {}
        if variant.runner != "tensorrt":
            ref = self.reference_image(batch, req)
            check = {"psnr_db_vs_strict_fp32": round(psnr(ref, image), 2),
                     "max_abs_vs_strict_fp32": round((image - ref).abs().max().item(), 5)}
            if variant.runner != "reference":
                check["psnr_ok"] = check["psnr_db_vs_strict_fp32"] >= PSNR_MIN
        plain = self.images.get(("torch-fp16", batch))
        if plain is not None and variant.runner == "fp16" and name != "torch-fp16":
            check["max_abs_vs_torch-fp16_plain"] = round((image - plain).abs().max().item(), 5)
        self.report["checks"].setdefault(name, {})[str(batch)] = check

    # -- summaries
    def _ms(self, variant: str, batch: int, stage: str) -> float | None:
        for r in self.rows:
            if (r.backend, r.batch, r.stage) == (variant, batch, stage):
                return r.median_ms
        return None

    def goal(self) -> dict:
        batches = [int(b) for b in self.args.batches.split(",")]
        b = 4 if 4 in batches else max(batches)
        eager = self._ms("eager-fp32", b, "end_to_end")
        fast = {v: self._ms(v, b, "end_to_end") for v in VARIANTS if v != "eager-fp32"}
        fast = {v: ms for v, ms in fast.items() if ms is not None}
        goal = {"batch": b, "eager_fp32_ms": eager, "speedup_target": GOAL_SPEEDUP,
                "outside_networks_target_pct": GOAL_OUTSIDE_PCT}
        if fast:
            best = min(fast, key=fast.get)
            step, outside = self._ms(best, b, "step"), self._ms(best, b, "outside_networks_per_step")
            host = self._ms(best, b, "host_per_step")
            goal.update(best_variant=best, best_ms=fast[best])
            if eager:
                goal["speedup"] = round(eager / fast[best], 2)
                goal["speedup_met"] = goal["speedup"] >= GOAL_SPEEDUP
            if step and outside is not None:
                goal["outside_networks_pct"] = round(100 * outside / step, 2)
                goal["host_issue_pct"] = round(100 * host / step, 2) if host is not None else None
                goal["outside_networks_met"] = goal["outside_networks_pct"] < GOAL_OUTSIDE_PCT
        if self.report["dry_run"]:
            goal["note"] = "dry run on CPU: these numbers say nothing about a GPU"
        return goal

    def markdown(self) -> str:
        rep = self.report
        dry = " - DRY RUN on CPU, not a GPU measurement" if rep["dry_run"] else ""
        lines = [f"# bench_gpu: {card_name(self.dev)}", "",
                 f"preset {self.args.preset}, {self.args.steps} steps, batches {self.args.batches}, "
                 f"torch {torch.__version__}{dry}",
                 "", "| variant | batch | end to end ms | step ms | host/step ms | outside networks % | "
                 "peak MiB | PSNR dB |", "|---|---|---|---|---|---|---|---|"]
        seen = []
        for r in self.rows:
            if (r.backend, r.batch) not in seen:
                seen.append((r.backend, r.batch))
        for v, b in seen:
            step, out = self._ms(v, b, "step"), self._ms(v, b, "outside_networks_per_step")
            pct = f"{100 * out / step:.2f}" if step and out is not None else "-"
            mem = rep["memory_mb"].get(v, {}).get(str(b), {}).get("peak_allocated", "-")
            ps = rep["checks"].get(v, {}).get(str(b), {}).get("psnr_db_vs_strict_fp32", "-")
            fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
            lines.append(f"| {v} | {b} | {fmt(self._ms(v, b, 'end_to_end'))} | {fmt(step)} | "
                         f"{fmt(self._ms(v, b, 'host_per_step'))} | {pct} | {mem} | {ps} |")
        lines += ["", "goal: " + json.dumps(rep["goal"]), ""]
        lines += [f"- {v}: " + "; ".join(f"b={b} {s}" for b, s in st.items()) for v, st in rep["variants"].items()]
        lines += [f"- note: {n}" for n in rep["notes"]]
        return "\n".join(lines) + "\n"

    def run(self) -> int:
        args = self.args
        batches = [int(b) for b in args.batches.split(",")]
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in names if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        failed = 0
        for batch in batches:
            req = make_request(self.cfg, batch, args.steps, args.seed)
            for name in names:
                status = self.report["variants"].setdefault(name, {})
                if any(s.startswith("skipped") and "budget" not in s for s in status.values()):
                    status[str(batch)] = next(iter(status.values()))  # a variant that cannot run here
                    continue
                if self.left_s() < 0:
                    status[str(batch)] = f"skipped: the time budget of {args.budget_s:.0f} s is spent"
                    continue
                try:
                    self.measure(VARIANTS[name], batch, req)
                    status[str(batch)] = "ok"
                except Skip as why:
                    status[str(batch)] = f"skipped: {why}"
                    self.note(f"{name}: skipped ({why})")
                except Exception as exc:  # one variant failing must not lose the others
                    failed += 1
                    first = (str(exc).strip().splitlines() or [""])[0][:300]
                    status[str(batch)] = f"failed: {type(exc).__name__}: {first}"
                    self.note(f"{name} b={batch}: {status[str(batch)]}")
                    if self.dev.type == "cuda":
                        torch.cuda.synchronize(self.dev)
                self.write()
        self.write()
        self.log(f"wrote {Path(args.out) / 'bench_gpu.json'}; goal: {json.dumps(self.report['goal'])}")
        return 1 if failed else 0


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for bench_gpu.json and bench_gpu.md")
    ap.add_argument("--preset", default=None, help="model preset (default official-256; tiny in a dry run)")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu")
    ap.add_argument("--batches", default=None, help="comma-separated (default 4,1)")
    ap.add_argument("--steps", type=int, default=None, help="DDIM steps (default 50)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per measurement (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed end-to-end calls, the first included")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine-dir", default=None, help="TensorRT engine folder for tensorrt-fp16")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny preset, 2 steps, batch 1, 1 run")
    ap.add_argument("--tiny", action="store_true", help="the tiny preset (with --device cpu: a dry run)")
    args = ap.parse_args(argv)
    small = args.dry_run or args.tiny
    if args.dry_run:
        args.device = args.device or "cpu"
    args.device = args.device or "cuda"
    args.preset = args.preset or ("tiny" if small else "official-256")
    args.batches = args.batches or ("1" if args.dry_run else "4,1")
    args.steps = args.steps or (2 if args.dry_run else 50)
    args.runs = args.runs or (1 if args.dry_run else 3)
    args.dry_run = args.dry_run or args.device == "cpu"
    return args


def main(argv=None) -> int:
    args = parse(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device (torch.cuda.is_available() is False): nothing measured", flush=True)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.json").write_text(json.dumps(
            {"machine": machine(torch.device("cpu")), "results": [], "status": "no CUDA device"}, indent=1))
        return 3
    if dev.type == "cuda":
        torch.cuda.set_device(dev.index or 0)  # set_device refuses a device without an index
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
