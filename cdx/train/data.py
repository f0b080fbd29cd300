"""Training samples as the networks take them, stored compactly in shards and streamed back.

A sample's conditions are made by the modality registry exactly as inference makes them (`kind.parse`:
caption -> token ids, label map -> 32x32 NEAREST -> one-hot, sketch -> [1, 1024]); a shard stores each
in the smallest form its `EncoderInput.values` allows (token ids as int32, a one-hot as its class ids,
floats as float32) and a batch is turned back into the encoder's input on the device it goes to.
A sample may carry several values of a field (a list of captions): all are stored, and each epoch
uses one of them, chosen from the sample's index, the epoch and the seed.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, StaleArtifactError
from ..io import loads_json, read_json
from ..models.modalities import EncoderInput, kind_of
from .sources import SampleError, Source, field_value, load_image

DATA_FORMAT = "cdx-train-data"
DATA_VERSION = 2  # 2: every shard's sha256 recorded and checked on use


def synth_fingerprint() -> str:
    """sha256 of the generator package's sources: a cache made by another version of it is rebuilt."""
    from .. import synth

    h = hashlib.sha256()
    for path in sorted(Path(synth.__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def trainable(cfg, source: Source) -> list:
    """The modalities of `cfg` whose training field the source has (the others cannot be trained from it)."""
    return [m for m in cfg.modalities if kind_of(m.kind).training_field in source.fields]


# ---------------------------------------------------------------------------------------------
# the compact codec, by the kind of values an encoder input holds


def compact(x: np.ndarray, ins: EncoderInput) -> np.ndarray:
    """One item's encoder input -> its stored form."""
    if ins.values == "tokens":
        return np.asarray(x, dtype=np.int32)
    if ins.values == "onehot":  # (C, N) with exactly one 1 per column -> the (N,) class ids
        x = np.asarray(x)
        if not (np.isin(x, (0, 1)).all() and (x.sum(0) == 1).all()):
            raise ValueError("not a one-hot encoder input")
        return x.argmax(0).astype(np.uint8 if x.shape[0] <= 256 else np.int16)
    return np.asarray(x, dtype=np.float32)


def expand(stored: torch.Tensor, ins: EncoderInput, device=None) -> torch.Tensor:
    """A batch of stored forms (B, ...) -> the encoder input (B, *ins.shape) on `device`."""
    stored = stored.to(device)
    if ins.values == "tokens":
        return stored.long()
    if ins.values == "onehot":
        # (B, N) ids -> (B, N, C) -> (B, C, N) int64: the values of `masks.one_hot`
        return torch.nn.functional.one_hot(stored.long(), ins.shape[0]).transpose(1, 2).contiguous()
    return stored.float()


def encode_sample(source: Source, i: int, mods, size: int) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """Sample i: the image uint8 (size, size, 3) and, per modality, the stored forms of its values.
    A sample that cannot be used raises SampleError naming it."""
    name = source.names[i]
    raw = source.raw(i)
    image = load_image(raw["image"], name, size)
    conds = {}
    for m in mods:
        kind = kind_of(m.kind)
        if kind.training_field not in raw:
            raise SampleError(name, f"no {kind.training_field}")
        value = field_value(kind.training_field, raw[kind.training_field], name)
        values = value if isinstance(value, list) else [value]
        ins = kind.encoder_input(m)
        try:
            conds[m.name] = [compact(kind.parse(v, m, kind.training_field), ins) for v in values]
        except SampleError:
            raise
        except (InputError, ValueError) as e:
            raise SampleError(name, str(e)) from None
    return image, conds


# ---------------------------------------------------------------------------------------------
# reading shards


def read_manifest(folder: Path, fmt: str) -> dict:
    path = Path(folder) / "manifest.json"
    try:
        doc = read_json(path)
    except (OSError, ValueError) as e:
        raise StaleArtifactError(f"{path}: unreadable ({type(e).__name__}: {e}); delete {folder} and train "
                                 "again") from None
    if not isinstance(doc, dict) or doc.get("format") != fmt or doc.get("version") != DATA_VERSION:
        raise StaleArtifactError(f"{path}: not a version-{DATA_VERSION} {fmt} manifest; delete {folder}")
    return doc


def verify_files(folder: Path, recorded: dict) -> None:
    """Every file of `recorded` {name: sha256} has the bytes cdx wrote (hashed once, then by stat); a damaged
    one is a StaleArtifactError naming it."""
    from ..integrity import verified_sha256
    from ..models.bundle import is_sha256

    if not isinstance(recorded, dict) or not all(isinstance(k, str) and is_sha256(v) for k, v in recorded.items()):
        raise StaleArtifactError(f"{folder}/manifest.json: malformed file hashes; delete {folder}")
    got = verified_sha256(folder, list(recorded))
    for name, digest in recorded.items():
        if got[name] != digest:
            raise StaleArtifactError(f"{folder / name}: missing, truncated or modified since cdx wrote it")


def alternative(index: int, epoch: int, seed: int, count: int) -> int:
    """Which of a sample's `count` values epoch `epoch` uses (a fixed hash: the same in every process)."""
    if count <= 1:
        return 0
    h = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") % count


_DTYPES = {"U8": np.uint8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "F16": np.float16,
           "F32": np.float32}


def mapped(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as a read-only view of one memory map of the file.

    Written by hand from the format (8-byte little-endian header size, a JSON header of dtype, shape and byte
    offsets, then the data) because a training step reads single rows of many shards, and safetensors'
    `get_slice` costs about a millisecond a row here, where a memory-mapped row is read at memory speed."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= size - 8:
                raise ValueError(f"header size {n} outside the file")
            header = loads_json(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        buf = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(size - 8 - n,))
        out = {}
        for name, v in header.items():
            if name != "__metadata__":
                lo, hi = v["data_offsets"]
                if not (isinstance(lo, int) and isinstance(hi, int) and 0 <= lo <= hi <= buf.shape[0]):
                    raise ValueError(f"{name}: data offsets outside the file")
                out[name] = buf[lo:hi].view(_DTYPES[v["dtype"]]).reshape(v["shape"])
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise StaleArtifactError(f"{path}: unreadable shard ({type(e).__name__}: {e}); delete {path.parent}") from None


def _shard_problem(arrays: dict, offsets: dict, count: int, size: int, mods) -> str | None:
    """What is wrong with one mapped shard (None: nothing)."""
    image = arrays.get("image")
    if image is None or image.dtype != np.uint8 or image.shape != (count, size, size, 3):
        return f"images are not {count} x {size} x {size} x 3 uint8"
    for m in mods:
        ins = kind_of(m.kind).encoder_input(m)
        values, off = arrays.get(m.name), offsets.get(f"{m.name}.offsets")
        if values is None or off is None:
            return f"no stored {m.name} values"
        if (len(off) != count + 1 or off[0] != 0 or off[-1] != len(values)
                or any(b <= a for a, b in zip(off, off[1:]))):
            return f"{m.name}: damaged offsets"
        if len(values) and tuple(values.shape[1:]) != (ins.shape[1:] if ins.values == "onehot" else ins.shape):
            return f"{m.name}: stored values of shape {tuple(values.shape)}"
        if len(values) and ins.values == "onehot" and (values.min() < 0 or values.max() >= ins.shape[0]):
            return f"{m.name}: class ids outside 0..{ins.shape[0] - 1}"
        vocab = getattr(getattr(m, "text", None), "vocab_size", None)
        if len(values) and ins.values == "tokens" and (values.min() < 0 or (vocab and values.max() >= vocab)):
            return f"{m.name}: token ids outside the vocabulary"
        if len(values) and ins.values == "unit" and not (np.isfinite(values).all() and 0 <= values.min()
                                                         and values.max() <= 1):
            return f"{m.name}: values outside [0, 1]"
    return None


class ShardSet(torch.utils.data.Dataset):
    """The prepared samples of one data folder, read from its shards on demand (memory-mapped: a set larger
    than RAM trains). Item i -> {"index", "image" uint8 (H, W, 3) or "latent" float32 (C, h, w), and per
    modality its stored form}; `inputs` turns a collated batch into the networks' inputs."""

    def __init__(self, folder: str | os.PathLike, mods=(), latents: str | os.PathLike | None = None,
                 images: bool = True, seed: int = 0):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder, DATA_FORMAT)
        self.latents = None if latents is None else Path(latents)
        self.mods = list(mods)
        for m in self.mods:
            if m.name not in self.manifest["modalities"]:
                raise InputError(f"{self.folder}: the data has no {kind_of(m.kind).training_field} for modality "
                                 f"{m.name!r}")
        self.images, self.seed, self.epoch = images, seed, 0
        self._open: dict = {}
        counts = self._check()
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.latents is not None:
            self._check_latents(counts)

    def _check(self) -> list[int]:
        """The shards' counts, after checking that each shard has the bytes cdx wrote and holds what its
        manifest says: images of the recorded size, and for every modality offsets that index its values and
        values its encoder takes (class ids below the class count, token ids in the vocabulary). A damaged
        or inconsistent shard is a StaleArtifactError naming it (`prepare` makes the folder again)."""
        man, where = self.manifest, f"{self.folder}/manifest.json"
        shards, size = man.get("shards"), man.get("image_size")
        ok = (isinstance(shards, list) and shards and isinstance(size, int) and isinstance(man.get("modalities"), dict)
              and all(isinstance(e, dict) and isinstance(e.get("file"), str) and "/" not in e["file"]
                      and isinstance(e.get("count"), int) and e["count"] >= 0 for e in shards))
        if not ok:
            raise StaleArtifactError(f"{where}: malformed shard list; delete {self.folder}")
        verify_files(self.folder, {e["file"]: e.get("sha256") for e in shards})
        for e in shards:
            arrays, offsets = self._file(self.folder / e["file"])
            why = _shard_problem(arrays, offsets, e["count"], size, self.mods)
            if why:
                raise StaleArtifactError(f"{self.folder / e['file']}: {why}; delete {self.folder}")
        return [e["count"] for e in shards]

    def _check_latents(self, counts: list[int]) -> None:
        man = read_manifest(self.latents, "cdx-train-latents")
        verify_files(self.latents, man.get("files"))
        for s, n in enumerate(counts):
            lat = self._file(self.latents / f"latents-{s:05d}.safetensors")[0].get("latent")
            if lat is None or lat.ndim != 4 or lat.shape[0] != n or lat.dtype != np.float32:
                raise StaleArtifactError(f"{self.latents}: latents of shard {s} do not match the data; delete it")

    def __len__(self) -> int:
        return int(self.starts[-1])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getstate__(self):
        return {**self.__dict__, "_open": {}}

    def _file(self, path: Path) -> tuple[dict[str, np.ndarray], dict[str, list[int]]]:
        key = (os.getpid(), str(path))
        f = self._open.get(key)
        if f is None:
            arrays = mapped(path)
            offsets = {k: v.tolist() for k, v in arrays.items() if k.endswith(".offsets")}  # python ints
            self._open[key] = f = (arrays, offsets)
        return f

    def locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        return s, i - int(self.starts[s])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s, j = self.locate(int(i))
        f, offsets = self._file(self.folder / self.manifest["shards"][s]["file"])
        item = {"index": torch.tensor(int(i))}
        if self.images:
            item["image"] = torch.from_numpy(np.array(f["image"][j]))  # a copy: the map is read-only
        for m in self.mods:
            off = offsets[f"{m.name}.offsets"]
            lo, hi = off[j], off[j + 1]
            k = lo + alternative(int(i), self.epoch, self.seed, hi - lo)
            item[m.name] = torch.from_numpy(np.array(f[m.name][k]))
        if self.latents is not None:
            lf, _ = self._file(self.latents / f"latents-{s:05d}.safetensors")
            item["latent"] = torch.from_numpy(np.array(lf["latent"][j]))
        return item

    def stored(self, name: str):
        """Every stored value of modality `name`, an array per shard (all alternatives of every sample)."""
        for shard in self.manifest["shards"]:
            yield self._file(self.folder / shard["file"])[0][name]

    def batch(self, indices, device=None) -> dict[str, torch.Tensor]:
        """The collated items `indices` (for encoding passes and tests)."""
        return torch.utils.data.default_collate([self[int(i)] for i in indices])

    def inputs(self, batch: dict, device=None) -> dict[str, torch.Tensor]:
        """A collated batch -> "image" float (B, 3, H, W) in [-1, 1], "latent", and each modality's encoder
        input, on `device`."""
        out = {}
        if "image" in batch:
            out["image"] = batch["image"].to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        if "latent" in batch:
            out["latent"] = batch["latent"].to(device).float()
        for m in self.mods:
            out[m.name] = expand(batch[m.name], kind_of(m.kind).encoder_input(m), device)
        return out

    @property
    def record(self) -> dict:
        """What a stage manifest records of its data: source, fingerprint, counts."""
        man = self.manifest
        return {"source": man["source"], "fingerprint": man["fingerprint"], "count": len(self),
                "skipped": len(man.get("skipped", [])), "image_size": man["image_size"]}
