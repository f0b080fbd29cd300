"""The checks of single user values, each a one-line `InputError` naming the value: used wherever a value
enters cdx (the request, the CLI's own options, the HTTP API), so that one value reads one way everywhere."""
from __future__ import annotations

import math

import numpy as np

from .errors import InputError

SEED_LIMIT = 2 ** 64  # seeds lie in [0, 2**64): what torch.Generator.manual_seed takes


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int(value, what: str, lo: int, hi: int) -> int:
    if not is_int(value):
        raise InputError(f"{what} {value!r}: expected an integer")
    if not lo <= int(value) <= hi:
        raise InputError(f"{what} {value}: out of range ({lo}..{hi})")
    return int(value)


def check_float(value, what: str, lo: float, hi: float) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} {value!r}: expected a number")
    v = float(value)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise InputError(f"{what} {value}: out of range ({lo:g} <= {what.lstrip('-')} <= {hi:g})")
    return v


def check_seed(seed, what: str = "seed") -> int:
    if not is_int(seed):
        raise InputError(f"{what} {seed!r}: expected an integer")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise InputError(f"{what} {seed}: out of range (0 <= seed < 2**64)")
    return int(seed)


def check_bool(value, what: str) -> bool | None:
    """True, False or None (the default)."""
    if value is not None and not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{what} {value!r}: expected True, False or None")
    return None if value is None else bool(value)


MAX_PIXELS = 40 * 10**6  # an input image with more pixels than this is refused before it is decoded


def check_image_size(width: int, height: int, where: str, resize_short_side: int | None = None) -> None:
    """Refuse, from an image header's size alone (before any decoding), an empty image, one of more than
    MAX_PIXELS pixels, or one whose short side resized to `resize_short_side` would have more than that."""
    if width <= 0 or height <= 0:
        raise InputError(f"{where}: the image is empty ({width}x{height})")
    limit = f"at most {MAX_PIXELS // 10**6} megapixels"
    if width * height > MAX_PIXELS:
        raise InputError(f"{where}: {width}x{height} is too many pixels to decode ({limit})")
    if resize_short_side is not None:
        s = resize_short_side
        resized = s * s * max(width, height) / min(width, height)
        if resized > MAX_PIXELS:
            raise InputError(f"{where}: {width}x{height} is too elongated: its short side resized to {s} pixels "
                             f"would make {resized / 10**6:.0f} megapixels ({limit})")
