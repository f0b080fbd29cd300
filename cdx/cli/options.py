"""Options and helpers shared by the commands."""
from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np

from ..errors import InputError
from ..io import atomic_path, probe_writable

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


def save_image(path: Path, array: np.ndarray) -> None:
    """Write an (H, W, 3) or (H, W) uint8 array atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format=IMAGE_SUFFIXES[path.suffix.lower()])


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
        if not sep or not name or s is None:
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
