"""Build one TensorRT plan per ONNX network through polygraphy's loaders, skipping plans that are current.

`plan_builds` decides what to build (pure Python, tested without TensorRT); `polygraphy_profile` and
`build_config` turn a job into polygraphy's Profile and CreateConfig (data until a build calls them);
`build_engines` parses (network_from_onnx_path), builds (engine_from_network) and saves (save_engine)
each plan to a temporary file, then moves it into place and records it in engines.json under the
folder lock (see manifest.record_engine).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import CdxError, InputError, StaleArtifactError
from ...export.spec import network_specs
from ...models.bundle import file_sha256
from ...models.config import ModelConfig
from ...export.manifest import reexport_hint
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


def polygraphy_profile(profiles: dict):
    """cdx's {input: (min, opt, max)} as polygraphy's Profile (plain data: no TensorRT needed)."""
    from polygraphy.backend.trt import Profile

    profile = Profile()
    for name, (lo, opt, hi) in profiles.items():
        profile.add(name, lo, opt, hi)
    return profile


def build_config(job: BuildJob, timing_cache: Path | None, workspace: int | None = None,
                 opt_level: int | None = None, trt=None):
    """polygraphy's CreateConfig for `job`; `trt` (the module) is needed only for a workspace limit."""
    from polygraphy.backend.trt import CreateConfig

    pools = None
    if workspace is not None:
        pools = {trt.MemoryPoolType.WORKSPACE: int(workspace)}
    # tf32=True: TensorRT's own default, which cdx's engines have always had (TOLERANCE in verify.py
    # allows for it); polygraphy clears the flag unless asked.
    return CreateConfig(fp16=job.precision == "fp16", tf32=True, refittable=job.refittable,
                        profiles=[polygraphy_profile(job.profiles)],
                        load_timing_cache=str(timing_cache) if timing_cache else None,
                        memory_pool_limits=pools, builder_optimization_level=opt_level)


def polygraphy_flags(job: BuildJob, timing_cache=None, workspace: int | None = None,
                     opt_level: int | None = None) -> list[str]:
    """The options of polygraphy's CLI (`polygraphy convert|run ... --trt`) that ask for the engine
    build_config describes; docs/tensorrt.md shows them, a test checks polygraphy reads them so."""
    flags = ["--fp16"] * (job.precision == "fp16") + ["--tf32"] + ["--refittable"] * job.refittable
    for i, which in enumerate(("min", "opt", "max")):
        flags.append(f"--trt-{which}-shapes")
        flags += [f"{name}:[{','.join(map(str, shapes[i]))}]" for name, shapes in job.profiles.items()]
    if timing_cache:
        flags += ["--load-timing-cache", str(timing_cache), "--save-timing-cache", str(timing_cache)]
    if workspace is not None:
        flags += ["--pool-limit", f"workspace:{int(workspace)}"]
    if opt_level is not None:
        flags += ["--builder-optimization-level", str(opt_level)]
    return flags


def _check_inputs(network, job: BuildJob) -> None:
    """The parsed network's inputs must be the spec's. Written here because polygraphy fills inputs a
    profile leaves out with default shapes, where cdx refuses an export that does not fit its spec."""
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(job.profiles):
        raise StaleArtifactError(f"{job.onnx_path}: inputs {sorted(inputs)} are not the spec's "
                                 f"{sorted(job.profiles)}; {reexport_hint(job.onnx_path.parent)}")


def _build_plan(trt, job: BuildJob, timing_cache: Path, plan_file: Path, workspace: int | None,
                opt_level: int | None) -> None:
    """Build `job` into `plan_file` with polygraphy's loaders; `timing_cache` is read and updated."""
    from polygraphy.backend.trt import engine_from_network, network_from_onnx_path, save_engine
    from polygraphy.exception import PolygraphyException

    from ...export.verify import first_line

    try:
        network = network_from_onnx_path(str(job.onnx_path))  # parse_from_file: finds external data beside it
    except PolygraphyException as e:
        raise CdxError(f"TensorRT could not parse {job.onnx_path}: {first_line(e)}") from None
    _check_inputs(network[1], job)
    config = build_config(job, timing_cache, workspace, opt_level, trt)
    try:
        engine = engine_from_network(network, config=config, save_timing_cache=str(timing_cache))
        save_engine(engine, path=str(plan_file))
    except CdxError:
        raise
    except Exception as e:  # PolygraphyException, or TensorRT's own (e.g. an unreadable timing cache)
        why = first_line(e) if isinstance(e, PolygraphyException) else f"{type(e).__name__}: {first_line(e)}"
        raise CdxError(f"TensorRT could not build {job.name}: {why} (its log above says why)") from None


def build_engines(onnx_dir, out_dir, fp16: bool = True, batch: Batch = (1, 1, 4), static: bool = False,
                  vae_fp32: bool = False, refittable: bool = False, timing_cache=None, networks=None,
                  workspace: int | None = None, opt_level: int | None = None, log=print) -> dict[str, str]:
    """Build a plan per ONNX network into `out_dir`; returns {network: "built" | "current"}.

    `timing_cache` defaults to a file in `out_dir` named by TensorRT version and GPU."""
    from ...export.verify import polygraphy_logging, require_polygraphy
    from .env import current_gpu, require_tensorrt

    trt = require_tensorrt()
    require_polygraphy("cdx builds TensorRT engines through polygraphy's loaders")
    gpu = current_gpu()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header, jobs, current = plan_builds(onnx_dir, out_dir, trt.__version__, gpu, fp16, batch, static, vae_fp32,
                                        refittable, networks)
    report = {name: "current" for name in current}
    cache_path = Path(timing_cache) if timing_cache else out_dir / timing_cache_name(trt.__version__, gpu)
    for job in jobs:
        lo, _, hi = next(iter(job.profiles.values()))  # axis 0 of every input is "batch"
        log(f"building {job.name} ({job.precision}, batch {lo[0]}..{hi[0]})")
        plan_tmp = _temp_beside(out_dir / job.file)
        # polygraphy writes the timing cache in place: it works on a copy that replaces the cache once
        # the plan is recorded, so an interrupted build leaves the old cache whole.
        cache_tmp = _temp_beside(cache_path)
        try:
            if cache_path.is_file():
                shutil.copyfile(cache_path, cache_tmp)
            with polygraphy_logging("WARNING"):  # TensorRT's warnings and errors, as before, on stderr
                _build_plan(trt, job, cache_tmp, plan_tmp, workspace, opt_level)
            record_engine(out_dir, header, job.name, plan_entry(job, plan_tmp), plan_tmp=plan_tmp)
            os.replace(cache_tmp, cache_path)
        finally:
            for leftover in (plan_tmp, cache_tmp, Path(f"{cache_tmp}.lock")):  # .lock: polygraphy's LockFile
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        report[job.name] = "built"
    return report


def _temp_beside(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(tmp)
