"""Once per data set and autoencoder: the samples preprocessed into shards, then the latents encoded.

    CACHE/<key>/manifest.json, shard-00000.safetensors, ...    (CACHE: WORK/data unless --data-cache)
        key: the source's fingerprint, the image size and the modalities' encoder inputs; images uint8,
        conditions in their stored form (cdx.train.data)
    WORK/latents/<key>-<vae sha>/manifest.json, latents-00000.safetensors, ...
        the frozen autoencoder's posterior means (unscaled: the stage multiplies by the scale factor)

Each folder is written under a temporary name of its own beside it and renamed into place when complete,
so an interrupted run leaves nothing a later one would read, and two runs making the same folder at once
(two collaborators trained side by side) both succeed with one copy. The samples are prepared by `workers` processes on
the main rank; the latents are encoded by every rank, shard s by rank s mod world.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..errors import InputError
from ..integrity import file_sha256
from ..io import TMP_TAG, _claim, atomic_path, atomic_write_text, remove_stale
from ..models.bundle import save_tensors
from ..models.modalities import kind_of
from . import dist
from .data import DATA_FORMAT, DATA_VERSION, ShardSet, encode_sample, read_manifest
from .sources import Problem, SampleError, Source

SHARD = 2048  # samples per shard
LATENTS_FORMAT = "cdx-train-latents"


def data_key(source: Source, mods, size: int) -> str:
    spec = {"version": DATA_VERSION, "fingerprint": source.fingerprint, "size": size,
            "modalities": {m.name: [m.kind, list(kind_of(m.kind).encoder_input(m).__dict__.values())] for m in mods}}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def _shard_job(args) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    source, lo, hi, mods, size = args
    images, conds, problems = [], {m.name: [] for m in mods}, []
    ruled_out = source.bad  # named by the source's own problems already
    for i in range(lo, hi):
        if source.names[i] in ruled_out:
            continue
        try:
            image, c = encode_sample(source, i, mods, size)
        except SampleError as e:
            problems.append((e.name, e.reason))
            continue
        images.append(image)
        for name, values in c.items():
            conds[name].append(values)
    arrays = {"image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)}
    for name, per in conds.items():
        flat = [v for values in per for v in values]
        arrays[name] = np.stack(flat) if flat else np.zeros((0,), np.int32)
        arrays[f"{name}.offsets"] = np.concatenate([[0], np.cumsum([len(v) for v in per])]).astype(np.int64)
    return arrays, problems


def _bad(problems: list[Problem], skip_bad: bool, root: str) -> None:
    if problems and not skip_bad:
        first = problems[0]
        raise InputError(f"{root}: {len(problems)} bad sample(s), first {first.name!r}: {first.reason}; "
                         f"`cdx data check {root}` names them all, --skip-bad trains without them")
    for p in problems:
        dist.log(f"skipped sample {p.name!r}: {p.reason}")


def prepare(source: Source, mods, size: int, cache: Path, skip_bad: bool = False, workers: int = 1) -> ShardSet:
    """The prepared folder of `source` for these modalities at `size` px under `cache` (made when missing)."""
    if not skip_bad:
        _bad(source.problems, skip_bad, source.root)  # before reading any file
    folder = Path(cache) / data_key(source, mods, size)
    if dist.is_main():
        if not os.path.lexists(folder):
            _write_data(source, mods, size, folder, skip_bad, workers)
        elif (why := _damaged(folder, mods)) is not None:  # a folder of cdx's data cache, under cdx's key
            dist.log(f"data cache: {why}; preparing it again")
            _write_data(source, mods, size, folder, skip_bad, workers, replace=True)
    dist.barrier()
    data = ShardSet(folder, mods)
    _bad([Problem(p["name"], p["reason"]) for p in data.manifest["skipped"]], skip_bad, source.root)
    return data


def _damaged(folder: Path, mods) -> str | None:
    """Why the prepared `folder` cannot be used (None: it can)."""
    from ..errors import StaleArtifactError

    try:
        ShardSet(folder, mods)
    except StaleArtifactError as e:
        return " ".join(str(e).split("; delete ")[0].split())
    return None


def _write_data(source, mods, size, folder: Path, skip_bad: bool, workers: int, replace: bool = False) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(folder.parent)  # what killed runs left
    with _claim(folder.parent, folder.name) as tmp:  # ours alone while we hold its lock
        _write_shards(source, mods, size, folder, tmp, skip_bad, workers, replace)


def _write_shards(source, mods, size, folder: Path, tmp: Path, skip_bad: bool, workers: int,
                  replace: bool = False) -> None:
    bounds = list(range(0, len(source), SHARD)) + [len(source)]
    jobs = [(source, lo, hi, list(mods), size) for lo, hi in zip(bounds[:-1], bounds[1:])]
    dist.log(f"preparing {len(source)} samples of {source.describe()} at {size}px ({len(jobs)} shard(s))")
    workers = max(1, min(int(workers), len(jobs), len(source) // 500 or 1))
    if workers == 1:
        results = map(_shard_job, jobs)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)
        results = pool.imap(_shard_job, jobs)
    shards, problems = [], []
    try:
        for s, (arrays, bad) in enumerate(results):
            problems += [Problem(n, r) for n, r in bad]
            if problems and not skip_bad:
                break
            name = f"shard-{s:05d}.safetensors"
            save_tensors({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}, tmp / name)
            shards.append({"file": name, "count": int(arrays["image"].shape[0]), "sha256": file_sha256(tmp / name)})
    finally:
        if workers > 1:
            pool.terminate()
    try:
        if not skip_bad:
            _bad(problems, skip_bad, source.root)
        count = sum(s["count"] for s in shards)
        if count == 0:
            raise InputError(f"{source.root}: no usable sample")
        manifest = {"format": DATA_FORMAT, "version": DATA_VERSION, "source": source.describe(),
                    "kind": source.kind, "fingerprint": source.fingerprint, "image_size": size,
                    "modalities": {m.name: m.kind for m in mods}, "shards": shards,
                    "skipped": [{"name": p.name, "reason": p.reason} for p in source.problems + problems]}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
        _install(tmp, folder, DATA_FORMAT, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, folder: Path, fmt: str, replace: bool = False) -> None:
    """Rename the complete `tmp` to `folder`; when another run installed it first, keep theirs (equal).
    `replace`: `folder` is a damaged one of cdx's own, replaced (moved beside `tmp`, then removed)."""
    if replace and os.path.lexists(folder):
        old = tmp.with_name(tmp.name + ".old")  # removed with the claim, whatever happens next
        os.rename(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "manifest.json").is_file():
            raise
        read_manifest(folder, fmt)


# ---------------------------------------------------------------------------------------------
# latents


@torch.no_grad()
def posterior_means(vae, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> the posterior means (B, embed_dim, h, w), float32 on the CPU."""
    mean, _ = vae.encode_moments(images).chunk(2, dim=1)  # (B, 2e, h, w) -> 2 x (B, e, h, w)
    return mean.float().cpu()


def latents(data: ShardSet, vae, vae_sha: str, work: Path, batch: int = 128) -> Path:
    """The folder of `data`'s unscaled latents under the autoencoder `vae` (sha256 `vae_sha`), encoded when
    missing: shard s by rank s mod world, then renamed into place by the main rank."""
    folder = Path(work) / "latents" / f"{data.folder.name}-{vae_sha[:16]}"
    replace = os.path.lexists(folder)
    if replace:  # checked by the main rank, which every rank follows
        why = _damaged_latents(data, folder) if dist.is_main() else None
        if why is not None:
            dist.log(f"latents cache: {why}; encoding them again")
        if dist.broadcast_int(int(why is None)):
            return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        remove_stale(folder.parent)
        with _claim(folder.parent, folder.name) as tmp:  # held by rank 0 while every rank writes into it
            dist.broadcast_int(int(tmp.name.rsplit(TMP_TAG, 1)[1], 16))
            _encode(data, vae, vae_sha, folder, tmp, batch, replace)
    else:
        token = dist.broadcast_int(0)
        _encode(data, vae, vae_sha, folder, folder.with_name(f".{folder.name[:96]}{TMP_TAG}{token:012x}"), batch,
                replace)
    dist.barrier()
    return folder


def _damaged_latents(data: ShardSet, folder: Path) -> str | None:
    """Why the latents `folder` of `data` cannot be used (None: they can)."""
    from ..errors import StaleArtifactError

    try:
        ShardSet(data.folder, latents=folder, images=False)
    except StaleArtifactError as e:
        return " ".join(str(e).split("; delete ")[0].split())
    return None


def _encode(data: ShardSet, vae, vae_sha: str, folder: Path, tmp: Path, batch: int, replace: bool = False) -> None:
    """This rank's shards of the latents into `tmp`; rank 0 then installs `tmp` as `folder`."""
    d = dist.current()
    dist.barrier()
    device = next(vae.parameters()).device
    vae.eval()
    images = ShardSet(data.folder, images=True)  # the images alone
    shards = data.manifest["shards"]
    dist.log(f"encoding {len(data)} images to latents ({len(shards)} shard(s), {d.world} process(es))")
    for s in range(d.rank, len(shards), d.world):
        lo = int(data.starts[s])
        hi = lo + shards[s]["count"]
        means = [posterior_means(vae, images.inputs(images.batch(range(a, min(a + batch, hi))), device)["image"])
                 for a in range(lo, hi, batch)]
        with atomic_path(tmp / f"latents-{s:05d}.safetensors") as part:
            save_file({"latent": torch.cat(means).contiguous()}, str(part))
    dist.barrier()
    if d.rank == 0:
        names = [f"latents-{s:05d}.safetensors" for s in range(len(shards))]
        manifest = {"format": LATENTS_FORMAT, "version": DATA_VERSION, "data": data.folder.name,
                    "vae_sha256": vae_sha, "shards": len(shards), "files": {n: file_sha256(tmp / n) for n in names}}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=1))
        _install(tmp, folder, LATENTS_FORMAT, replace)
