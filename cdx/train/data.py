"""The training set: synthetic faces generated once, kept in memory and cached as a .npz.

Conditions are stored already preprocessed exactly as inference does it (`cdx.engine.pipeline`):
BERT token ids of the caption (`Tokenizer().encode`) and the 32x32 NEAREST-resized class ids of the
label map (`label_map_to_ids`); a batch's mask condition is their one-hot (`one_hot_torch`: the values
of inference's `masks.one_hot`, tested), made on the device the batch goes to.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import StaleArtifactError
from ..models.masks import NUM_CLASSES, label_map_to_ids
from ..models.tokenizer import Tokenizer

CACHE_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    size: int = 30000  # number of samples
    seed: int = 1234
    image_size: int = 64
    cache: str | None = None  # folder for the .npz cache (None: no cache)
    workers: int = 1  # processes generating the set (the result does not depend on it)


def synth_fingerprint() -> str:
    """sha256 of the generator package's sources: a cache made by another version of it is rebuilt."""
    from . import synth

    h = hashlib.sha256()
    for path in sorted(Path(synth.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def _generate_range(args: tuple[int, int, int, int]):
    from .synth import generate_batch

    seed, lo, hi, size = args
    return generate_batch(seed, hi - lo, size=size, start=lo)[:3]


def build_arrays(n: int, seed: int, image_size: int, workers: int = 1) -> dict[str, np.ndarray]:
    """Generate `n` faces (item i is `SyntheticFaces(n, seed)[i]`): images uint8 (n, H, W, 3),
    tokens int32 (n, 77), mask_ids uint8 (n, 1024). Every item is seeded by its index alone, so
    `workers` processes (each generating a contiguous range) give exactly the same arrays as one."""
    workers = max(1, min(int(workers), n // 500))  # below ~500 items a process costs more than it saves
    print(f"generating {n} synthetic faces ({image_size}px, seed {seed}, {workers} process(es))", flush=True)
    bounds = np.linspace(0, n, workers + 1).astype(int)
    jobs = [(seed, int(lo), int(hi), image_size) for lo, hi in zip(bounds[:-1], bounds[1:])]
    if workers == 1:
        parts = [_generate_range(jobs[0])]
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_generate_range, jobs)
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    captions = [c for p in parts for c in p[2]]
    ids, _ = Tokenizer().encode(list(captions))  # (n, 77) int64, truncated as inference does
    mask_ids = np.stack([label_map_to_ids(lab) for lab in labels]).astype(np.uint8)  # (n, 1024)
    return {"images": images, "tokens": ids.astype(np.int32), "mask_ids": mask_ids}


def one_hot_torch(ids: torch.Tensor) -> torch.Tensor:
    """(B, N) class ids -> int64 (B, 19, N) on the ids' device: the values of `masks.one_hot`."""
    return torch.nn.functional.one_hot(ids.long(), NUM_CLASSES).transpose(1, 2).contiguous()


class FaceSet(torch.utils.data.Dataset):
    """In-memory faces; item i -> image float (3, H, W) in [-1, 1], tokens int64 (77,), mask int64 (19, 1024)."""

    def __init__(self, arrays: dict[str, np.ndarray], fingerprint: str = ""):
        self.images = torch.from_numpy(arrays["images"])  # (n, H, W, 3) uint8
        self.tokens = torch.from_numpy(arrays["tokens"])  # (n, 77) int32
        self.mask_ids = torch.from_numpy(arrays["mask_ids"])  # (n, 1024) uint8
        self.fingerprint = fingerprint
        self._ids_on = self.mask_ids  # mask_ids on the device last asked for (copied once per device)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        idx = torch.tensor([int(i)])
        return {"image": self.image_batch(idx)[0], "tokens": self.token_batch(idx)[0],
                "mask": self.mask_batch(idx)[0]}

    def image_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """(B,) indices -> (B, 3, H, W) float32 in [-1, 1]."""
        return self.images[idx].permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    def token_batch(self, idx: torch.Tensor) -> torch.Tensor:
        return self.tokens[idx].long()  # (B, 77)

    def mask_batch(self, idx: torch.Tensor, device=None) -> torch.Tensor:
        """(B, 19, 1024) int64 one-hot made on `device` from the class ids: the 19x larger int64
        array is never built on the host and copied."""
        device = torch.device("cpu") if device is None else torch.device(device)
        if self._ids_on.device != device:
            self._ids_on = self.mask_ids.to(device)
        return one_hot_torch(self._ids_on[idx.to(device)])

    def condition_batch(self, kind: str, idx: torch.Tensor, device=None) -> torch.Tensor:
        """The encoder input of a modality kind ("text" or "mask") for the samples `idx`, on `device`."""
        if kind == "mask":
            return self.mask_batch(idx, device)
        return self.token_batch(idx).to("cpu" if device is None else device)

    def random_indices(self, gen: torch.Generator, batch: int) -> torch.Tensor:
        return torch.randint(len(self), (batch,), generator=gen)


def load_faces(cfg: DataConfig) -> FaceSet:
    """Generate the set, or read it from `cfg.cache` when a current cache is there."""
    fp = synth_fingerprint()
    path = None
    if cfg.cache is not None:
        path = Path(cfg.cache) / f"faces-n{cfg.size}-s{cfg.seed}-{cfg.image_size}px.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if int(z["version"]) == CACHE_VERSION and str(z["synth"]) == fp:
                        arrays = {k: z[k] for k in ("images", "tokens", "mask_ids")}
                        return FaceSet(arrays, fingerprint=f"{fp}:{cfg.size}:{cfg.seed}:{cfg.image_size}")
                print(f"{path}: made by another version of the generator; rebuilding")
            except (OSError, ValueError, KeyError) as e:
                raise StaleArtifactError(f"{path}: unreadable data cache ({e}); delete it") from None
    arrays = build_arrays(cfg.size, cfg.seed, cfg.image_size, cfg.workers)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
        os.close(fd)
        try:
            np.savez(tmp, version=CACHE_VERSION, synth=fp, **arrays)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return FaceSet(arrays, fingerprint=f"{fp}:{cfg.size}:{cfg.seed}:{cfg.image_size}")
