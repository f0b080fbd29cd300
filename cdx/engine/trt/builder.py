"""Build one TensorRT plan per ONNX network (TensorRT 10 Python API), skipping plans that are current.

`plan_builds` decides what to build (pure Python, tested without TensorRT); `build_engines` runs
the builder for each job, writes the plan to a temporary file, then moves it into place and
records it in engines.json under the folder lock (see manifest.record_engine).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import CdxError, InputError, StaleArtifactError
from ...export.spec import network_specs
from ...io import atomic_write_bytes
from ...models.bundle import file_sha256
from ...models.config import ModelConfig
from ..ort_runner import reexport_hint
from .manifest import (build_header, cache_key, entry_is_current, onnx_hashes, read_engine_manifest,
                       read_onnx_manifest, record_engine, timing_cache_name)
from .profiles import Batch, profiles_for, profiles_to_json


@dataclass(frozen=True)
class BuildJob:
    name: str
    kind: str
    onnx_path: Path
    onnx_sha256: str
    onnx_data_sha256: dict  # {external data file: sha256}, empty for a single-file ONNX
    precision: str  # "fp16" or "fp32"
    profiles: dict  # {input: (min, opt, max)}
    refittable: bool
    key: str

    @property
    def file(self) -> str:
        return f"{self.name}.plan"


def plan_builds(onnx_dir, out_dir, trt_version: str, gpu, fp16: bool = True, batch: Batch = (1, 1, 4),
                static: bool = False, vae_fp32: bool = False, refittable: bool = False,
                networks=None) -> tuple[dict, list[BuildJob], list[str]]:
    """(manifest header, jobs to build, names already current) for one build request.

    The ONNX files are checked against their manifest first (a stale export is refused)."""
    onnx, onnx_sha = read_onnx_manifest(onnx_dir, verify_files=True)
    try:
        specs = network_specs(ModelConfig.from_dict(onnx["config"]))
    except (KeyError, TypeError, ValueError) as e:
        raise StaleArtifactError(f"{onnx_dir}: the ONNX manifest's model config is malformed ({e}); "
                                 f"{reexport_hint(Path(onnx_dir))}") from None
    names = list(onnx["networks"]) if networks is None else list(networks)
    unknown = [n for n in names if n not in onnx["networks"]]
    if unknown:
        raise InputError(f"{onnx_dir} has no ONNX for {', '.join(unknown)}; it has {', '.join(onnx['networks'])}")
    header = build_header(onnx, onnx_sha, trt_version, gpu)
    try:
        existing = read_engine_manifest(out_dir)
    except StaleArtifactError:
        existing = None
    jobs, current = [], []
    for name in names:
        entry, spec = onnx["networks"][name], specs.get(name)
        if spec is None:
            raise StaleArtifactError(f"{onnx_dir}: {name!r} is not a network of its model config; "
                                     f"{reexport_hint(Path(onnx_dir))}")
        if "inputs" in entry and [t["name"] for t in entry["inputs"]] != [t.name for t in spec.inputs]:
            raise StaleArtifactError(f"{onnx_dir}: the inputs of {name} differ from its spec; "
                                     f"{reexport_hint(Path(onnx_dir))}")
        path = Path(onnx_dir) / entry["file"]
        precision = "fp32" if not fp16 or (vae_fp32 and spec.kind.startswith("vae")) else "fp16"
        profiles = profiles_for(spec, batch, static)
        sha, data = onnx_hashes(entry)
        key = cache_key(name, sha, trt_version, gpu, precision, profiles_to_json(profiles), refittable, data)
        if entry_is_current(out_dir, existing, header, name, key):
            current.append(name)
        else:
            jobs.append(BuildJob(name, spec.kind, path, sha, data, precision, profiles, refittable, key))
    return header, jobs, current


def plan_entry(job: BuildJob, plan_file) -> dict:
    """The engines.json entry for `job`, whose plan has been written to `plan_file`."""
    return {"file": job.file, "sha256": file_sha256(Path(plan_file)), "bytes": os.path.getsize(plan_file),
            "kind": job.kind, "onnx_sha256": job.onnx_sha256, "onnx_data_sha256": job.onnx_data_sha256,
            "precision": job.precision, "profiles": profiles_to_json(job.profiles), "refittable": job.refittable,
            "cache_key": job.key}


def _build_plan(trt, job: BuildJob, timing: bytes, plan_file: Path, workspace: int | None,
                opt_level: int | None) -> bytes:
    """Build `job` into `plan_file`; returns the updated serialized timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(job.onnx_path)):  # resolves external data beside the file
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CdxError(f"TensorRT could not parse {job.onnx_path}: {errors}")
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(job.profiles):
        raise StaleArtifactError(f"{job.onnx_path}: inputs {sorted(inputs)} are not the spec's "
                                 f"{sorted(job.profiles)}; {reexport_hint(job.onnx_path.parent)}")
    config = builder.create_builder_config()
    if job.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if job.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if opt_level is not None:
        config.builder_optimization_level = opt_level
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in job.profiles.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CdxError(f"TensorRT could not build {job.name} (its log above says why)")
    with open(plan_file, "wb") as f:
        f.write(memoryview(plan))
    return bytes(memoryview(config.get_timing_cache().serialize()))


def build_engines(onnx_dir, out_dir, fp16: bool = True, batch: Batch = (1, 1, 4), static: bool = False,
                  vae_fp32: bool = False, refittable: bool = False, timing_cache=None, networks=None,
                  workspace: int | None = None, opt_level: int | None = None, log=print) -> dict[str, str]:
    """Build a plan per ONNX network into `out_dir`; returns {network: "built" | "current"}.

    `timing_cache` defaults to a file in `out_dir` named by TensorRT version and GPU."""
    from .env import current_gpu, require_tensorrt

    trt = require_tensorrt()
    gpu = current_gpu()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, jobs, current = plan_builds(onnx_dir, out_dir, trt.__version__, gpu, fp16, batch, static, vae_fp32,
                                        refittable, networks)
    report = {name: "current" for name in current}
    cache_path = Path(timing_cache) if timing_cache else out_dir / timing_cache_name(trt.__version__, gpu)
    timing = cache_path.read_bytes() if cache_path.is_file() else b""
    for job in jobs:
        lo, _, hi = next(iter(job.profiles.values()))  # axis 0 of every input is "batch"
        log(f"building {job.name} ({job.precision}, batch {lo[0]}..{hi[0]})")
        fd, tmp = tempfile.mkstemp(prefix=f".{job.file}.", suffix=".tmp", dir=out_dir)
        os.close(fd)
        try:
            timing = _build_plan(trt, job, timing, Path(tmp), workspace, opt_level)
            record_engine(out_dir, header, job.name, plan_entry(job, tmp), plan_tmp=tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        atomic_write_bytes(cache_path, timing)
        report[job.name] = "built"
    return report
