"""Where training samples come from: the synthetic generator, a plain folder, or the layout the official
repository documents. A source lists its samples by name; each sample is an image and, per training field
("caption", "mask", "sketch": the modality registry's `training_field`), the user's value for it.

Plain folder (`--data DIR`):
    DIR/images/<name>.png|.jpg     any size; resized and centre-cropped to the model's size
    DIR/masks/<name>.png           label map of class ids 0..18 (palette, greyscale or palette colours), any size
    DIR/sketches/<name>.png        greyscale line drawing (for a sketch modality)
    DIR/captions.json              {"<name>": "caption"} or {"<name>": ["caption", ...]}, or instead
    DIR/captions/<name>.txt        one caption per line
Official layout (the repository's `datasets/` folder, CelebA-HQ / CelebAMask-HQ / CelebA-Dialog):
    DIR/image/<one folder>/<name>.jpg, DIR/mask/<one folder>/<name>.pt (one-hot [19, 1024]) or .png,
    DIR/sketch/<one folder>/<name>.pt ([1, 1024]), DIR/text/<captions>.json ({"<name>.jpg": {"Beard_and_Age": ...}})

A field whose files are absent (no masks/ folder) is not in the source: its modality is not trained.
Nothing is dropped silently: `scan` lists every structural problem (a missing mask, a caption for no image),
`load` raises `SampleError` naming the sample and what is wrong with it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..devices import check_free_memory
from ..errors import InputError
from ..io import read_json
from ..validate import check_image_size

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
OFFICIAL_CAPTIONS = "captions_hq_beard_and_age_2022-08-19.json"


class SampleError(InputError):
    """One sample that cannot be used; `name` is the sample, the message says why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"sample {name!r}: {reason}")
        self.name, self.reason = name, reason


@dataclass
class Problem:
    name: str
    reason: str


@dataclass
class Source:
    """A scanned data set: sample names, the fields present, structural problems, and how to read a sample."""

    kind: str  # "synthetic", "folder", "official"
    root: str  # the folder (or a description of the generator)
    names: list[str]
    fields: tuple[str, ...]  # training fields present ("caption", "mask", ...)
    problems: list[Problem] = field(default_factory=list)  # found without opening the files
    fingerprint: str = ""
    _files: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # name -> field -> path / value
    _synth: tuple[int, int] | None = None  # (seed, size) of the generator

    def __len__(self) -> int:
        return len(self.names)

    def raw(self, i: int) -> dict[str, Any]:
        """Sample i as the user gave it: "image" (a path or a uint8 array) and each field's value(s)."""
        name = self.names[i]
        if self._synth is not None:
            from ..synth import generate

            s = generate((self._synth[0], int(name)), self._synth[1])
            return {"image": s.image, "caption": s.caption, "mask": s.label}
        return self._files[name]

    @property
    def bad(self) -> set[str]:
        """Names of the samples a structural problem already rules out."""
        return {p.name for p in self.problems}

    def describe(self) -> str:
        return f"{self.kind} data {self.root} ({len(self)} samples; fields {', '.join(self.fields) or 'none'})"


def synthetic(n: int, seed: int, size: int) -> Source:
    """`n` faces of the generator; sample i is `synth.generate((seed, i), size)`."""
    from .data import synth_fingerprint

    return Source("synthetic", f"(generator seed {seed})", [str(i) for i in range(n)], ("caption", "mask"),
                  fingerprint=f"{synth_fingerprint()}:{n}:{seed}:{size}", _synth=(seed, size))


def open_source(path: str | os.PathLike, image_size: int) -> Source:
    """The data set at `path`: the official layout when it has image/ and text/, else the plain layout."""
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"--data {root}: {'no such folder' if not root.exists() else 'not a folder'}")
    if (root / "image").is_dir() and (root / "text").is_dir():
        return _official(root, image_size)
    if (root / "images").is_dir():
        return _folder(root)
    raise InputError(f"--data {root}: expected images/ (plain layout: images/, masks/, captions.json) or "
                     "image/ and text/ (the official repository's layout)")


def _listing(folder: Path, exts: tuple[str, ...]) -> dict[str, Path]:
    """stem -> file for the files of `folder` with one of `exts` (hidden files skipped)."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise InputError(f"{folder}: cannot list it ({e.strerror or e})") from None
    return {p.stem: p for p in entries if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()}


def _read_json(path: Path) -> Any:
    try:
        return read_json(path, limit=1 << 30)
    except (OSError, ValueError) as e:  # nesting too deep to parse is a ValueError too
        raise InputError(f"{path}: not readable JSON ({' '.join(str(e).split())[:200]})") from None


def _captions(value: Any) -> list | None:
    """A caption entry as a list of strings (None: not a caption entry)."""
    if isinstance(value, dict):  # CelebA-Dialog: {"Beard_and_Age": "...", ...}; the official code lowercases it
        value = value.get("Beard_and_Age")
        value = value.lower() if isinstance(value, str) else value
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _assemble(kind: str, root: Path, images: dict[str, Path], fields: dict[str, dict[str, Any]],
              caption_keys: dict[str, str]) -> Source:
    """Join the image listing with each field's listing; every gap becomes a named problem."""
    problems = []
    files: dict[str, dict[str, Any]] = {}
    for name, path in images.items():
        files[name] = {"image": path}
        for fld, values in fields.items():
            if name in values:
                files[name][fld] = values[name]
            else:
                problems.append(Problem(name, f"no {fld} (image {path.name} has none)"))
    for fld, values in fields.items():
        for name in values:
            if name not in images:
                label = caption_keys.get(name, name) if fld == "caption" else Path(str(values[name])).name
                problems.append(Problem(name, f"{fld} {label!r} for no image"))
    h = hashlib.sha256()
    for name in sorted(files):
        for fld, v in sorted(files[name].items()):
            if isinstance(v, Path):
                st = v.stat()
                h.update(f"{name}\0{fld}\0{v.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            else:
                h.update(f"{name}\0{fld}\0{json.dumps(v, default=repr)}\n".encode())
    return Source(kind, str(root), sorted(files), tuple(fields), problems, fingerprint=h.hexdigest()[:16],
                  _files=files)


def _folder(root: Path) -> Source:
    images = _listing(root / "images", IMAGE_EXTS)
    fields: dict[str, dict[str, Any]] = {}
    keys: dict[str, str] = {}
    if (root / "captions.json").is_file():
        doc = _read_json(root / "captions.json")
        if not isinstance(doc, dict):
            raise InputError(f"{root / 'captions.json'}: expected {{\"<name>\": \"caption\" or [captions]}}")
        fields["caption"] = {}
        for key, value in doc.items():
            stem = Path(key).stem if Path(key).suffix.lower() in IMAGE_EXTS else key
            keys[stem] = key
            fields["caption"][stem] = _captions(value) if _captions(value) is not None else value
    elif (root / "captions").is_dir():
        fields["caption"] = {stem: _caption_file(path) for stem, path in _listing(root / "captions", (".txt",)).items()}
    for fld, sub in (("mask", "masks"), ("sketch", "sketches")):
        if (root / sub).is_dir():
            fields[fld] = _listing(root / sub, (".png",))
    return _assemble("folder", root, images, fields, keys)


@dataclass(frozen=True)
class Unreadable:
    """A field's file that could not be read at scan time; the sample is named as bad when it is used."""

    reason: str


def _caption_file(path: Path) -> list[str] | Unreadable:
    """The non-blank lines of a caption file ([] for an empty one: named as a bad sample later)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return Unreadable(f"caption file {path.name} is not readable UTF-8 text ({type(e).__name__})")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _one_folder(parent: Path, prefer: str = "") -> Path:
    subs = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        return parent
    if len(subs) == 1:
        return subs[0]
    chosen = [p for p in subs if prefer and prefer in p.name]
    if len(chosen) == 1:
        return chosen[0]
    raise InputError(f"{parent}: holds several folders ({', '.join(p.name for p in subs)}); keep one")


def _official(root: Path, image_size: int) -> Source:
    images = _listing(_one_folder(root / "image", f"_{image_size}_"), IMAGE_EXTS)
    texts = sorted((root / "text").glob("*.json"))
    if not texts:
        raise InputError(f"{root / 'text'}: no caption JSON")
    text = next((t for t in texts if t.name == OFFICIAL_CAPTIONS), texts[0]) if len(texts) > 1 else texts[0]
    doc = _read_json(text)
    if not isinstance(doc, dict):
        raise InputError(f"{text}: expected {{\"<name>.jpg\": {{\"Beard_and_Age\": caption}}}}")
    fields: dict[str, dict[str, Any]] = {"caption": {}}
    keys = {}
    for key, value in doc.items():
        stem = Path(key).stem
        keys[stem] = key
        fields["caption"][stem] = _captions(value) if _captions(value) is not None else value
    for fld, sub in (("mask", "mask"), ("sketch", "sketch")):
        if (root / sub).is_dir():
            fields[fld] = _listing(_one_folder(root / sub, "one_hot"), (".pt", ".png"))
    return _assemble("official", root, images, fields, keys)


# ---------------------------------------------------------------------------------------------
# reading one sample


def load_image(value, name: str, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the official val preprocessing (short side resized to `size` with PIL's
    default bicubic filter, then the centre `size` x `size` crop)."""
    if isinstance(value, np.ndarray):
        img = Image.fromarray(value)
    else:
        try:
            with Image.open(value) as im:
                check_image_size(*im.size, f"image {Path(value).name}", resize_short_side=size)  # before decoding
                check_free_memory(_decode_bytes(*im.size, size), None, f"image {Path(value).name}",
                                  "free some memory or shrink the image")
                im.load()
                img = im.convert("RGB")
        except InputError as e:
            raise SampleError(name, str(e)) from None
        except (OSError, Image.DecompressionBombError, ValueError, SyntaxError, EOFError) as e:
            raise SampleError(name, f"image {Path(value).name} is unreadable or truncated ({type(e).__name__})") \
                from None
    w, h = img.size
    if (w, h) != (size, size):
        w2, h2 = (size, int(h * size / w)) if w < h else (int(w * size / h), size)
        img = img.resize((w2, h2), Image.Resampling.BICUBIC)
        x0, y0 = (w2 - size) // 2, (h2 - size) // 2
        img = img.crop((x0, y0, x0 + size, y0 + size))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _decode_bytes(width: int, height: int, size: int) -> int:
    """A generous estimate of the memory one image takes to decode and resize: the decoded pixels (up to 4
    bytes each), an RGB copy, and the resized image with the resampler's float buffers."""
    short = min(width, height)
    resized = size * size * max(width, height) // max(short, 1)
    return 8 * width * height + 16 * resized


def field_value(fld: str, value, name: str):
    """A field's stored value as the modality registry's `parse` takes it: a caption string (or list), a
    label-map array or path, a sketch array or path. Official .pt tensors are read with weights_only."""
    if isinstance(value, Unreadable):
        raise SampleError(name, value.reason)
    if fld == "caption":
        caps = _captions(value)
        if caps is None:
            raise SampleError(name, f"caption is not a string or a list of strings ({type(value).__name__})")
        if not caps or not all(c.strip() for c in caps):
            raise SampleError(name, "empty caption")
        return caps
    if isinstance(value, Path) and value.suffix == ".pt":
        return _official_tensor(fld, value, name)
    return value


def _official_tensor(fld: str, path: Path, name: str) -> np.ndarray:
    import torch

    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read the tensor file makes the sample unusable
        raise SampleError(name, f"{fld} {path.name} is unreadable ({type(e).__name__})") from None
    if not isinstance(t, torch.Tensor):
        raise SampleError(name, f"{fld} {path.name} holds a {type(t).__name__}, not a tensor")
    a = t.detach().float().numpy()
    if fld == "mask":  # one-hot [19, 1024] (32 x 32, row-major) -> the (32, 32) label map
        a = a.reshape(a.shape[0], -1) if a.ndim == 3 else a
        if a.ndim != 2 or a.shape[0] != 19 or not np.isin(a, (0.0, 1.0)).all() or not (a.sum(0) == 1).all():
            raise SampleError(name, f"mask {path.name} is not a one-hot [19, N] tensor (shape {tuple(t.shape)})")
        side = int(round(a.shape[1] ** 0.5))
        return a.argmax(0).reshape(side, side).astype(np.uint8)
    side = int(round(a.size ** 0.5))  # sketch [1, 1024] in [0, 1]
    if side * side != a.size:
        raise SampleError(name, f"{fld} {path.name} has {a.size} values, not a square map")
    return a.reshape(side, side).astype(np.float32)
