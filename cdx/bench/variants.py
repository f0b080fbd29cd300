"""The GPU variants of the collaborative loop, as data, measured side by side by `cdx bench --variants`.

A variant is a runner (how the networks are built: precision, attention, fused ops) and a loop (the plain
Python loop, one CUDA graph per step, or the whole loop in one graph) with a number of streams:

    eager-fp32                the reference path as the official code runs it: fp32 TorchRunner, bmm
                              attention, the unfused torch ops between the networks, a Python loop
    torch-fp16                CudaTorchRunner (fp16, SDPA), the plain loop, the fused kernel
    torch-fp16-graph          the same, each step replayed from a CUDA graph (cuda_graph.py)
    torch-fp16-graph-loop     the whole loop captured in one graph
    torch-fp16-graph-streams  the step's networks on separate streams inside the graph
    torch-fp16-graph-unfused  the step graph with the unfused torch ops instead of the fused kernel
    torch-fp16-graph-cl       the step graph with channels-last weights
    ...-streams-pad8          attention heads zero-padded to a multiple of 8, so SDPA's fused kernels engage
    ...-streams-gnsilu        GroupNorm+SiLU as one Triton kernel (cdx.kernels.group_norm_silu)
    ...-streams-paired        the text and mask UNets as one call (cdx.models.paired_unet)
    torch-compile-fp16-...    inductor max-autotune inside cdx's graphs (by name only: compiles for minutes)
    torch-bf16-graph          bf16 instead of fp16 (by name only)
    tensorrt-fp16             TensorRTRunner on --engine-dir in the step graph (skipped unless tensorrt imports)

Weights are random (random_init's distribution, drawn on the device). Per variant and batch: end to end
(encoders, the loop, VAE decode, the image on the host), the loop per step, host time per step (issuing a
step, no sync), the networks alone per step, the time outside them, peak GPU memory, and the PSNR of the
image against a strict-fp32 reference (TF32 off) from the same seed and weights. On a CPU the graph
variants run the same step code eagerly: a dry run, marked so, that measures nothing about a GPU.
"""
from __future__ import annotations

import copy
import datetime
import importlib.util
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..backends.pytorch.cuda import CudaTorchRunner
from ..backends.pytorch.eager import TorchRunner
from ..evaluation.metrics import psnr
from ..models.random_init import random_model
from ..sampling.pipeline import prepare, to_uint8
from ..sampling.request import Request
from .harness import BenchResult, bench_request, device_label, report
from .loops import LoopRun, end_to_end, networks_ms, settings, variant_settings, weights_mb

GOAL_SPEEDUP, GOAL_OUTSIDE_PCT, PSNR_MIN = 10.0, 2.0, 30.0


@dataclass(frozen=True)
class Variant:
    name: str
    runner: str  # a key of RUNNERS, or "reference" / "tensorrt"
    loop: str  # plain, step or loop
    streams: int = 1
    unfused: bool = False


# The fast runners: CudaTorchRunner options (dtype, then keyword arguments) per key
RUNNERS = {
    "fp16": (torch.float16, {}),
    "fp16-cl": (torch.float16, {"channels_last": True}),
    "fp16-pad8": (torch.float16, {"pad_heads": 8}),
    "fp16-gnsilu": (torch.float16, {"fuse_norm_silu": True}),
    "fp16-paired": (torch.float16, {"pair_unets": True}),
    "compile-fp16": (torch.float16, {}),
    "bf16": (torch.bfloat16, {}),
}

VARIANTS = {v.name: v for v in (
    Variant("eager-fp32", "reference", "plain", unfused=True),
    Variant("torch-fp16", "fp16", "plain"),
    Variant("torch-fp16-graph", "fp16", "step"),
    Variant("torch-fp16-graph-loop", "fp16", "loop"),
    Variant("torch-fp16-graph-streams", "fp16", "step", streams=4),
    Variant("torch-fp16-graph-unfused", "fp16", "step", unfused=True),
    Variant("torch-fp16-graph-cl", "fp16-cl", "step"),
    Variant("torch-fp16-graph-streams-pad8", "fp16-pad8", "step", streams=4),
    Variant("torch-fp16-graph-streams-gnsilu", "fp16-gnsilu", "step", streams=4),
    Variant("torch-fp16-graph-streams-paired", "fp16-paired", "step", streams=4),
    Variant("torch-compile-fp16-graph-streams", "compile-fp16", "step", streams=4),
    Variant("torch-bf16-graph", "bf16", "step"),
    Variant("tensorrt-fp16", "tensorrt", "step"),
)}
# max-autotune compiles official-256's UNets for minutes, past the device check's budget: ask for it by name
DEFAULT_VARIANTS = [n for n in VARIANTS if n not in ("torch-bf16-graph", "torch-compile-fp16-graph-streams")]


class Skip(Exception):
    """A variant that cannot run here, with the reason."""


def variant_names(spec: str) -> list[str]:
    """`default`, `all` or a comma-separated list of variant names (ValueError naming the unknown ones)."""
    if spec.strip() in ("default", "all"):
        return list(DEFAULT_VARIANTS if spec.strip() == "default" else VARIANTS)
    names = [v.strip() for v in spec.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if not names or unknown:
        raise ValueError(f"unknown variants {', '.join(unknown) or spec!r}; choose default, all or from "
                         f"{', '.join(VARIANTS)}")
    return names


class VariantBench:
    """Every variant at every batch, in turn, with a time budget; `write` leaves the report after each."""

    def __init__(self, cfg, device: torch.device, steps: int, batches: list[int], runs: int, warmup: int = 1,
                 seed: int = 0, engine_dir=None, budget_s: float = float("inf"),
                 write: Callable[[dict, str], None] | None = None, log: Callable[[str], None] = print):
        self.cfg, self.dev, self.steps, self.batches, self.runs, self.warmup = cfg, device, steps, batches, runs, warmup
        self.seed, self.engine_dir, self.budget_s, self._write, self._log = seed, engine_dir, budget_s, write, log
        self.t_start = time.monotonic()
        self.runners: dict[str, object] = {}
        self.model32 = None
        self.refs: dict[int, torch.Tensor] = {}
        self.images: dict[tuple[str, int], torch.Tensor] = {}
        self.rows: list[BenchResult] = []
        config = {"preset": cfg.preset, "steps": steps, "batches": batches, "runs": runs, "warmup": warmup,
                  "seed": seed, "date": datetime.date.today().isoformat()}
        self.report = {"dry_run": device.type != "cuda", "variants": {}, "memory_mb": {}, "checks": {}, "goal": {},
                       "notes": [], "config": config}

    # -- bookkeeping
    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def log(self, msg: str):
        self._log(f"[variants {time.monotonic() - self.t_start:6.1f}s] {msg}")

    def record(self, variant: str, batch: int, stage: str, ms: float, runs: int):
        self.rows.append(BenchResult(variant, self.cfg.preset, device_label(self.dev), batch, self.steps, stage,
                                     round(ms, 3), runs))
        self.log(f"{variant:<34} b={batch} {stage:<26} {ms:10.3f} ms")

    def note(self, msg: str):
        self.report["notes"].append(msg)
        self.log(msg)

    def full_report(self) -> dict:
        self.report["goal"] = self.goal()
        return report(self.rows, **self.report)

    def write(self):
        if self._write is not None:
            self._write(self.full_report(), self.markdown())

    # -- runners
    def runner(self, key: str):
        if key in self.runners:
            return self.runners[key]
        if self.model32 is None:
            t0 = time.perf_counter()
            self.model32 = random_model(self.cfg, self.seed, device=self.dev)
            self.note(f"built {self.cfg.preset} with random weights on {self.dev} in {time.perf_counter() - t0:.1f} s")
        if key == "reference":
            r = TorchRunner(self.model32, self.dev)
        elif key == "tensorrt":
            r = self.tensorrt_runner()
        else:
            dtype, options = RUNNERS[key]
            r = CudaTorchRunner(copy.deepcopy(self.model32), self.dev, dtype, cudnn_benchmark=False, **options)
            if key.startswith("compile-"):  # inductor max-autotune, captured by cdx's graphs like the eager nets
                from ..backends.pytorch.compile import CompiledRunner

                r = CompiledRunner(r)
        self.runners[key] = r
        return r

    def tensorrt_runner(self):
        if importlib.util.find_spec("tensorrt") is None:
            raise Skip("tensorrt is not importable here")
        if not self.engine_dir:
            raise Skip("no --engine-dir given (build engines with `cdx build-engine --fp16`)")
        from ..backends.trt import TensorRTRunner

        r = TensorRTRunner(self.engine_dir, device=self.dev)
        if r.cfg.preset != self.cfg.preset:
            raise Skip(f"the engines are for {r.cfg.preset}, not {self.cfg.preset}")
        return r

    # -- measurements
    def reference_image(self, batch: int, req: Request) -> torch.Tensor:
        if batch not in self.refs:
            with settings(kernel="torch", tf32=False, cudnn_benchmark=False):
                self.refs[batch] = end_to_end(self.runner("reference"), LoopRun(VARIANTS["eager-fp32"], self.dev), req)
        return self.refs[batch]

    def measure(self, variant: Variant, batch: int, req: Request):
        name = variant.name
        runner = self.runner(variant.runner)
        run = LoopRun(variant, self.dev)
        runs = max(1, min(self.runs, 2)) if variant.runner == "reference" else self.runs
        with variant_settings(variant):
            if self.dev.type == "cuda":
                self.sync()
                torch.cuda.reset_peak_memory_stats(self.dev)
                base = torch.cuda.memory_allocated(self.dev)
            t0 = time.perf_counter()
            image = end_to_end(runner, run, req)  # first call: capture, autotuning, kernel compiles
            self.record(name, batch, "first_call", (time.perf_counter() - t0) * 1000, 1)
            for _ in range(max(0, self.warmup - 1)):
                end_to_end(runner, run, req)
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                image = end_to_end(runner, run, req)
                times.append((time.perf_counter() - t0) * 1000)
            self.record(name, batch, "end_to_end", statistics.median(times), runs)
            if self.dev.type == "cuda":
                peak = torch.cuda.max_memory_allocated(self.dev)
                self.report["memory_mb"].setdefault(name, {})[str(batch)] = {
                    "peak_allocated": round(peak / 2**20, 1), "above_start": round((peak - base) / 2**20, 1),
                    "weights": weights_mb(runner)}
            self.images[(name, batch)] = image

            li = prepare(runner, req)
            host, total = zip(*(run.timed(runner, li, self.sync) for _ in range(runs)))
            n = li.table.num_steps
            step_ms = statistics.median(total) / n
            self.record(name, batch, "loop", statistics.median(total), runs)
            self.record(name, batch, "step", step_ms, runs)
            self.record(name, batch, "host_per_step", statistics.median(host) / n, runs)
            iters = max(3, runs) if self.dev.type == "cuda" else runs
            net_ms = networks_ms(runner, li, variant.streams, self.dev, iters)
            self.record(name, batch, "networks_per_step", net_ms, iters)
            self.record(name, batch, "outside_networks_per_step", step_ms - net_ms, runs)

        check = {}
        if variant.runner != "tensorrt":
            ref = self.reference_image(batch, req)
            db = psnr(to_uint8(image), to_uint8(ref))
            check = {"psnr_db_vs_strict_fp32": round(db, 2) if db != float("inf") else "identical",
                     "max_abs_vs_strict_fp32": round((image - ref).abs().max().item(), 5)}
            if variant.runner != "reference":
                check["psnr_ok"] = db >= PSNR_MIN
        plain = self.images.get(("torch-fp16", batch))
        if plain is not None and variant.runner == "fp16" and name != "torch-fp16":
            check["max_abs_vs_torch-fp16_plain"] = round((image - plain).abs().max().item(), 5)
        self.report["checks"].setdefault(name, {})[str(batch)] = check

    # -- summaries
    def _ms(self, variant: str, batch: int, stage: str) -> float | None:
        return next((r.median_ms for r in self.rows if (r.backend, r.batch, r.stage) == (variant, batch, stage)), None)

    def goal(self) -> dict:
        b = 4 if 4 in self.batches else max(self.batches)
        eager = self._ms("eager-fp32", b, "end_to_end")
        fast = {v: ms for v in VARIANTS if v != "eager-fp32" and (ms := self._ms(v, b, "end_to_end")) is not None}
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
            goal["note"] = "dry run on a CPU: these numbers say nothing about a GPU"
        return goal

    def markdown(self) -> str:
        rep = self.report
        dry = " - DRY RUN on a CPU, not a GPU measurement" if rep["dry_run"] else ""
        lines = [f"# cdx bench --variants: {device_label(self.dev)}", "",
                 f"preset {self.cfg.preset}, {self.steps} steps, batches {self.batches}, "
                 f"torch {torch.__version__}{dry}",
                 "", "| variant | batch | end to end ms | step ms | host/step ms | outside networks % | "
                 "peak MiB | PSNR dB |", "|---|---|---|---|---|---|---|---|"]
        fmt = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
        for v, b in dict.fromkeys((r.backend, r.batch) for r in self.rows):
            step, out = self._ms(v, b, "step"), self._ms(v, b, "outside_networks_per_step")
            pct = f"{100 * out / step:.2f}" if step and out is not None else "-"
            mem = rep["memory_mb"].get(v, {}).get(str(b), {}).get("peak_allocated", "-")
            ps = rep["checks"].get(v, {}).get(str(b), {}).get("psnr_db_vs_strict_fp32", "-")
            lines.append(f"| {v} | {b} | {fmt(self._ms(v, b, 'end_to_end'))} | {fmt(step)} | "
                         f"{fmt(self._ms(v, b, 'host_per_step'))} | {pct} | {mem} | {ps} |")
        lines += ["", f"goal: {self.goal()}", ""]
        lines += [f"- {v}: " + "; ".join(f"b={b} {s}" for b, s in st.items()) for v, st in rep["variants"].items()]
        lines += [f"- note: {n}" for n in rep["notes"]]
        return "\n".join(lines) + "\n"

    def run(self, names: list[str]) -> int:
        """Measure `names` at every batch; the number of variants that failed (each failure is recorded)."""
        failed = 0
        for batch in self.batches:
            req = bench_request(self.cfg, batch, self.steps)
            for name in names:
                status = self.report["variants"].setdefault(name, {})
                if any(s.startswith("skipped") and "budget" not in s for s in status.values()):
                    status[str(batch)] = next(iter(status.values()))  # a variant that cannot run here
                    continue
                if time.monotonic() - self.t_start > self.budget_s:
                    status[str(batch)] = f"skipped: the time budget of {self.budget_s:.0f} s is spent"
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
        return failed

