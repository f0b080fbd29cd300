"""Options and helpers shared by the commands."""
from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np

from ..errors import InputError
from ..io import atomic_path, atomic_paths, probe_writable

IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def check_output_path(path: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse an output we could not write, before any work is done."""
    p = Path(path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"{what} {p}: use one of {', '.join(IMAGE_SUFFIXES)}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{what} {p}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and (p.is_dir() or not os.access(p, os.W_OK))):
        raise InputError(f"{what} {p}: not writable")
    probe_writable(parent, f"{what} {p}")  # os.access says yes to root, and for /proc and read-only mounts
    return p


def check_distinct(outputs: dict, inputs: dict, folders: tuple[str, ...] = (), into: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output path that would replace or remove what a command reads: an output
    that is an input (by path, symbolic or hard link), an output file inside an input folder where a file
    already is (a file of that artifact), an output folder in `folders` (replaced as a whole) that holds an
    input; and two outputs that are one path. Outputs in `into` (folders written into, never replaced) are
    only refused when they are an input. `outputs`, `inputs`: {flag: path or None}."""
    ins = [(flag, Path(p), Path(p).resolve()) for flag, p in inputs.items() if p is not None]
    seen: dict[Path, str] = {}
    for flag, p in outputs.items():
        if p is None:
            continue
        p = Path(p)
        r = p.resolve()
        for iflag, ip, ir in ins:
            if r == ir or _same_file(p, ip):
                raise InputError(f"{flag} {p}: the same file as {iflag} {ip}; choose another path")
            if flag in into:
                continue
            if flag not in folders and ir in r.parents and os.path.lexists(r):
                raise InputError(f"{flag} {p}: a file of {iflag} {ip}, which cdx reads; choose another path")
            if flag in folders and r in ir.parents:
                raise InputError(f"{flag} {p}: holds {iflag} {ip}, which cdx reads; choose another path")
        if r in seen:
            raise InputError(f"{flag} {p}: the same file as {seen[r]}; choose another path")
        seen[r] = flag


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def save_image(path: Path, array: np.ndarray) -> None:
    """Write an (H, W, 3) or (H, W) uint8 array atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=IMAGE_SUFFIXES[path.suffix.lower()])


def save_images(images) -> None:
    """Write several (path, (H, W, 3) or (H, W) uint8 array) as one set: all to temporary files first, then all
    renamed into place; a failure half-way (a full disk) leaves every existing file as it was."""
    from PIL import Image

    images = list(images)
    with atomic_paths([p for p, _ in images]) as tmps:
        for path, array in images:
            Image.fromarray(array).save(tmps[Path(path)], format=IMAGE_SUFFIXES[Path(path).suffix.lower()])


def grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
    """(B, H, W, 3) -> one row (H, B*W + pads, 3)."""
    if images.shape[0] == 1:
        return images[0]
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(np.full((im.shape[0], pad, 3), 255, np.uint8))
        parts.append(im)
    return np.concatenate(parts, axis=1)


def checkpoint_option(f):
    return click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
                        help="Checkpoint bundle folder (default: the model shipped with cdx).")(f)


def guidance_option(f):
    return click.option("--guidance", "guidance", multiple=True, metavar="MODALITY=SCALE",
                        help="Classifier-free guidance scale of a collaborator, e.g. text=3 (repeatable; "
                             "default: the model's, 1 = none; needs a collaborator trained with --cond-drop).")(f)


def parse_guidance(values) -> dict[str, float]:
    """('text=3', ...) -> {'text': 3.0}; a malformed entry or a scale out of range is a one-line error."""
    from ..sampling.request import GUIDANCE_RANGE
    from ..validate import check_float

    out = {}
    for v in values:
        name, sep, scale = str(v).partition("=")
        try:
            s = float(scale)
        except ValueError:
            s = None
        if not sep or not name or s is None or not s >= 0:
            raise InputError(f"--guidance {v}: expected MODALITY=SCALE with a scale >= 0, e.g. text=3")
        out[name] = check_float(s, f"--guidance {name}", *GUIDANCE_RANGE)
    return out


class BackendChoice(click.Choice):
    """`--backend`: auto or a registered backend, read from the registry when the option is parsed, so a
    backend registered after this module was imported (a plug-in) is accepted too."""

    def __init__(self):
        super().__init__([])

    @property
    def choices(self):
        from ..backends import backend_choices

        return backend_choices()

    @choices.setter
    def choices(self, value):
        pass


def backend_option(help: str | None = None):
    help = help or ("Where the networks run: auto (the fastest usable here) or a backend by name (README, "
                    "Backends).")
    return click.option("--backend", type=BackendChoice(), default="auto", show_default=True, help=help)


def sampling_options(**defaults):
    """The sampling settings' options (`cdx.sampling.settings.Sampling`'s fields), each declared once there;
    `defaults` overrides a field's default for one command (e.g. steps=10 for bench)."""
    from ..sampling.settings import Sampling, options

    def add(f):
        for fld in reversed(options()):
            meta = fld.metadata
            extra = dict(meta["click"])
            if "choices" in extra:
                extra["type"] = click.Choice(extra.pop("choices"))
            default = defaults.get(fld.name, fld.default)
            f = click.option(meta["flag"], fld.name, default=default, show_default=default is not None,
                             help=meta["help"], **extra)(f)
        return f

    add.settings = Sampling
    return add


def sampling_from(kwargs: dict, cfg):
    """The sampling settings' values popped out of a command's keyword arguments, as one `Sampling` checked
    against the model `cfg` (errors name the options)."""
    from ..sampling.settings import Sampling, options

    return Sampling.of(**{f.name: kwargs.pop(f.name) for f in options()}).checked(cfg, flags=True)
