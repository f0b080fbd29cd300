"""The engine folder's manifest, `engines.json`: what built each plan, and the refusal of stale ones.

{"format": "cdx-trt", "version": 1, "tensorrt": "10.x.y",
 "gpu": {"name": ..., "compute_capability": "9.0"},
 "onnx_manifest_sha256": ..., "bundle_hash": ..., "config": <ModelConfig.to_dict()>,
 "precision": "fp16" | "fp32", "vae_fp32": bool, "refittable": bool,   # summary of the entries
 "networks": {name: {"file", "sha256", "bytes", "kind", "onnx_sha256", "precision",
                     "onnx_data_sha256": {external data file: sha256},
                     "profiles": {input: [min, opt, max]}, "refittable", "cache_key"}}}

Pure Python: no TensorRT needed. Plans and the manifest are replaced under one lock, so two builds
into one folder never leave an entry that describes another build's plan.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path

from ...errors import StaleArtifactError
from ...io import atomic_write_text, loads_json
from ...models.bundle import file_sha256

FORMAT, VERSION = "cdx-trt", 1
MANIFEST, LOCK = "engines.json", ".engines.lock"
ONNX_MANIFEST = "manifest.json"


def rebuild_hint(engine_dir, onnx_dir=None, manifest: dict | None = None, extra: str = "") -> str:
    """The command that rebuilds the folder, with the flags of the build `manifest` records (if any)."""
    flags = "--fp16"
    try:
        if manifest:
            entries = list(manifest["networks"].values())
            flags = "--fp16" if manifest["precision"] == "fp16" else ""
            flags += " --vae-fp32" * bool(manifest["vae_fp32"]) + " --refittable" * bool(manifest["refittable"])
            lo, opt, hi = (next(iter(entries[0]["profiles"].values()))[i][0] for i in range(3))
            flags += f" --batch {lo},{opt},{hi}" * ((lo, opt, hi) != (1, 1, 4))
    except (KeyError, TypeError, IndexError, StopIteration):
        flags = "--fp16"
    flags = " ".join(f"{flags} {extra}".split())
    return f"rebuild with `cdx build-engine --onnx {onnx_dir or 'DIR'} --out {engine_dir} {flags}`"


def _canonical(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def gpu_record(gpu: tuple[str, str | tuple[int, int]]) -> dict:
    name, cc = gpu
    cc = f"{cc[0]}.{cc[1]}" if isinstance(cc, (tuple, list)) else str(cc)
    return {"name": str(name), "compute_capability": cc}


def cache_key(network: str, onnx_sha256: str, trt_version: str, gpu, precision: str,
              profiles: dict, refittable: bool, onnx_data_sha256: dict | None = None) -> str:
    """Identity of one plan: the same key means the same ONNX built the same way on the same GPU."""
    ident = {"network": network, "onnx": onnx_sha256, "onnx_data": onnx_data_sha256 or {}, "tensorrt": trt_version,
             "gpu": gpu_record(gpu), "precision": precision, "profiles": profiles, "refittable": bool(refittable)}
    return hashlib.sha256(_canonical(ident)).hexdigest()[:24]


def timing_cache_name(trt_version: str, gpu) -> str:
    """Timing caches are only valid for one TensorRT version on one kind of GPU."""
    key = hashlib.sha256(_canonical({"tensorrt": trt_version, "gpu": gpu_record(gpu)})).hexdigest()[:12]
    return f"timing-{key}.cache"


def read_onnx_manifest(onnx_dir, verify_files: bool = False) -> tuple[dict, str]:
    """(manifest, sha256 of manifest.json) of an ONNX export folder, checked as the ONNX stage checks it."""
    from ...export.manifest import read_export_manifest

    manifest = read_export_manifest(onnx_dir, verify_files=verify_files)
    return manifest, hashlib.sha256((Path(onnx_dir) / ONNX_MANIFEST).read_bytes()).hexdigest()


def onnx_hashes(onnx_entry: dict) -> tuple[str, dict]:
    """(sha256 of the .onnx file, {external data file: sha256}) from an ONNX manifest entry."""
    return onnx_entry["sha256"], dict(onnx_entry.get("data") or {})


def build_header(onnx_manifest: dict, onnx_manifest_sha256: str, trt_version: str, gpu) -> dict:
    return {"format": FORMAT, "version": VERSION, "tensorrt": trt_version, "gpu": gpu_record(gpu),
            "onnx_manifest_sha256": onnx_manifest_sha256, "bundle_hash": onnx_manifest.get("bundle_hash"),
            "config": onnx_manifest["config"]}


def _summary(networks: dict) -> dict:
    entries = list(networks.values())
    fp16 = any(e["precision"] == "fp16" for e in entries)
    vae32 = fp16 and any(e["kind"].startswith("vae") and e["precision"] == "fp32" for e in entries)
    return {"precision": "fp16" if fp16 else "fp32", "vae_fp32": vae32,
            "refittable": bool(entries) and all(e["refittable"] for e in entries)}


def read_engine_manifest(folder, onnx_dir=None) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise StaleArtifactError(f"{folder}: no {MANIFEST}, so no usable engines; {rebuild_hint(folder, onnx_dir)}")
    try:
        manifest = loads_json(path.read_bytes())
    except ValueError:  # malformed, not UTF-8, or nested too deeply to parse
        raise StaleArtifactError(f"{path}: corrupted or truncated; {rebuild_hint(folder, onnx_dir)}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise StaleArtifactError(f"{path}: not a version-{VERSION} cdx engine manifest; "
                                 f"{rebuild_hint(folder, onnx_dir)}")
    needed = ("tensorrt", "gpu", "config", "networks", "onnx_manifest_sha256")
    if any(k not in manifest for k in needed) or not isinstance(manifest["networks"], dict) \
            or not isinstance(manifest["gpu"], dict):
        raise StaleArtifactError(f"{path}: incomplete engine manifest; {rebuild_hint(folder, onnx_dir)}")
    return manifest


@contextlib.contextmanager
def engine_lock(folder):
    """Exclusive lock on the engine folder (fcntl.flock on a lock file beside the manifest)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / LOCK, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _same_target(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("tensorrt", "gpu", "config"))


def record_engine(folder, header: dict, name: str, entry: dict, plan_tmp=None) -> dict:
    """Under the folder lock: move `plan_tmp` onto the entry's file and write the entry; returns the manifest.

    Entries written for another TensorRT version, GPU or model config are dropped (they are stale)."""
    folder = Path(folder)
    with engine_lock(folder):
        try:
            old = read_engine_manifest(folder)
        except StaleArtifactError:
            old = None
        networks = dict(old["networks"]) if old and _same_target(old, header) else {}
        if plan_tmp is not None:
            os.replace(plan_tmp, folder / entry["file"])
        networks[name] = entry
        manifest = {**header, **_summary(networks), "networks": dict(sorted(networks.items()))}
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def entry_is_current(folder, manifest: dict | None, header: dict, name: str, key: str) -> bool:
    """True when `name` already has a plan built from the same inputs (key) whose bytes are intact."""
    if manifest is None or not _same_target(manifest, header):
        return False
    entry = manifest["networks"].get(name)
    if not entry or entry.get("cache_key") != key:
        return False
    plan = Path(folder) / entry["file"]
    return plan.is_file() and plan.stat().st_size == entry["bytes"] and file_sha256(plan) == entry["sha256"]


def check_engine_manifest(folder, onnx_dir=None, gpu=None, trt_version: str | None = None,
                          networks=None, verify_plans: bool = False) -> dict:
    """The manifest of an engine folder that fits this GPU, this TensorRT and (if given) the ONNX folder.

    `gpu` = (name, compute capability) and `trt_version` default to the running machine's. Anything
    else raises StaleArtifactError with the command that rebuilds the engines."""
    folder = Path(folder)
    manifest = read_engine_manifest(folder, onnx_dir)
    hint = rebuild_hint(folder, onnx_dir, manifest)
    if gpu is None or trt_version is None:
        from .env import current_gpu, require_tensorrt

        trt_version = trt_version or require_tensorrt().__version__
        gpu = gpu or current_gpu()
    want_gpu, have_gpu = gpu_record(gpu), manifest["gpu"]
    if want_gpu != have_gpu:
        raise StaleArtifactError(
            f"{folder}: engines were built for {have_gpu.get('name')} (sm {have_gpu.get('compute_capability')}), "
            f"this GPU is {want_gpu['name']} (sm {want_gpu['compute_capability']}); {hint}")
    if manifest["tensorrt"] != trt_version:
        raise StaleArtifactError(
            f"{folder}: engines were built with TensorRT {manifest['tensorrt']}, "
            f"this is TensorRT {trt_version}; {hint}")
    names = list(manifest["networks"]) if networks is None else list(networks)
    try:
        for name in names:
            entry = manifest["networks"].get(name)
            if entry is None:
                raise StaleArtifactError(f"{folder}: no engine for {name!r}; {hint}")
            key = cache_key(name, entry["onnx_sha256"], manifest["tensorrt"], gpu, entry["precision"],
                            entry["profiles"], entry["refittable"], entry.get("onnx_data_sha256"))
            if key != entry["cache_key"]:
                raise StaleArtifactError(f"{folder}: the entry for {name!r} does not match its cache key; {hint}")
            plan = folder / entry["file"]
            if not plan.is_file() or plan.stat().st_size != entry["bytes"] or (
                    verify_plans and file_sha256(plan) != entry["sha256"]):
                raise StaleArtifactError(f"{plan}: missing or not the plan its manifest describes; {hint}")
    except (KeyError, TypeError):
        raise StaleArtifactError(f"{folder / MANIFEST}: malformed engine entry; {hint}") from None
    if onnx_dir is not None:
        _check_onnx(folder, manifest, names, onnx_dir, hint)
    return manifest


def _check_onnx(folder: Path, manifest: dict, names: list, onnx_dir, hint: str) -> None:
    # Per network, not by the manifest's hash: a partial rebuild records the newest ONNX manifest's
    # hash while the other plans may still come from an older export.
    onnx, _ = read_onnx_manifest(onnx_dir)
    if onnx.get("config") != manifest["config"]:
        raise StaleArtifactError(f"{folder}: engines were built for another model config than {onnx_dir}; {hint}")
    recorded = {n: (manifest["networks"][n]["onnx_sha256"], manifest["networks"][n].get("onnx_data_sha256") or {})
                for n in names}
    changed = [n for n in names if n not in onnx["networks"] or onnx_hashes(onnx["networks"][n]) != recorded[n]]
    if changed:
        raise StaleArtifactError(f"{folder}: the ONNX of {', '.join(changed)} changed since the build; {hint}")
