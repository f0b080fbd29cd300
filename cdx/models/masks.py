"""CelebAMask-HQ 19-class face segmentation masks: loading, validation, official preprocessing.

The official pipeline (generate.py, mask2image.py, editing/imagic_edit_mask.py) opens the palette PNG
without converting it, resizes it with ``resize((32, 32), Image.NEAREST)``, takes the palette indices
row-major (1024 class ids), one-hots them with 19 classes and transposes to ``[19, 1024]``.

Here a mask file is first turned into a ``uint8 [H, W]`` label map of class ids (``load_label_map``),
which accepts palette, grayscale or palette-coloured RGB(A) PNGs, then ``label_map_to_ids`` performs the
same NEAREST resize on the ids (identical to resizing the palette PNG directly) and ``one_hot`` builds
the ``[B, 19, N]`` int64 condition.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..io import atomic_path
from ..validate import check_image_size

NUM_CLASSES = 19

CLASS_NAMES: tuple[str, ...] = (
    "background",  # 0
    "skin",        # 1
    "nose",        # 2
    "eye_g",       # 3 eyeglasses
    "l_eye",       # 4
    "r_eye",       # 5
    "l_brow",      # 6
    "r_brow",      # 7
    "l_ear",       # 8
    "r_ear",       # 9
    "mouth",       # 10
    "u_lip",       # 11
    "l_lip",       # 12
    "hair",        # 13
    "hat",         # 14
    "ear_r",       # 15 earring
    "neck_l",      # 16 necklace
    "neck",        # 17
    "cloth",       # 18
)

PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (204, 0, 0),
    (76, 153, 0),
    (204, 204, 0),
    (51, 51, 255),
    (204, 0, 204),
    (0, 255, 255),
    (255, 204, 204),
    (102, 51, 0),
    (255, 0, 0),
    (102, 204, 0),
    (255, 255, 0),
    (0, 0, 153),
    (0, 0, 204),
    (255, 51, 153),
    (0, 204, 204),
    (0, 51, 0),
    (255, 153, 51),
    (0, 204, 0),
)

_PALETTE_ARRAY = np.asarray(PALETTE, dtype=np.uint8)  # [19, 3]


def class_ids(*names: str) -> list[int]:
    """The class ids of the named classes, in the order given; an unknown name raises ``KeyError``."""
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown:
        raise KeyError(f"no CelebAMask-HQ class {unknown[0]!r}; the classes are {', '.join(CLASS_NAMES)}")
    return [CLASS_NAMES.index(n) for n in names]


#: Label regions the benchmarks report weights and accuracies by (name -> class ids).
REGIONS: dict[str, list[int]] = {
    "background": class_ids("background"),
    "skin": class_ids("skin", "nose", "neck"),
    "eyes/brows": class_ids("eye_g", "l_eye", "r_eye", "l_brow", "r_brow"),
    "ears": class_ids("l_ear", "r_ear"),
    "mouth/lips": class_ids("mouth", "u_lip", "l_lip"),
    "hair": class_ids("hair"),
    "hat/jewellery/cloth": class_ids("hat", "ear_r", "neck_l", "cloth"),
}

#: Every class of the face itself (what a close-up enlarges): skin, its features, ears and neck.
FACE_PARTS: list[int] = class_ids("skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                                  "mouth", "u_lip", "l_lip", "neck")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_LISTED = 8


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_PALETTE_KEYS = _rgb_key(_PALETTE_ARRAY)          # [19]
_KEY_ORDER = np.argsort(_PALETTE_KEYS)
_SORTED_KEYS = _PALETTE_KEYS[_KEY_ORDER]


def _list_values(values: np.ndarray) -> str:
    vals = [int(v) for v in values[:_MAX_LISTED]]
    more = f", ... ({len(values)} distinct)" if len(values) > _MAX_LISTED else ""
    return ", ".join(str(v) for v in vals) + more


def _check_ids(ids: np.ndarray, where: str) -> None:
    """Raise InputError if any value is outside 0..18 (naming the offending values)."""
    if ids.size == 0:
        return
    lo, hi = ids.min(), ids.max()
    if lo >= 0 and hi < NUM_CLASSES:
        return
    bad_mask = (ids < 0) | (ids >= NUM_CLASSES)
    bad = np.unique(ids[bad_mask])
    raise InputError(
        f"{where}: class ids must be in 0..{NUM_CLASSES - 1}, found {_list_values(bad)} "
        f"in {int(bad_mask.sum())} pixel(s)"
    )


def _rgb_to_ids(rgb: np.ndarray, where: str) -> np.ndarray:
    keys = _rgb_key(rgb)
    pos = np.searchsorted(_SORTED_KEYS, keys)
    pos_c = np.minimum(pos, len(_SORTED_KEYS) - 1)
    ok = _SORTED_KEYS[pos_c] == keys
    if not ok.all():
        n_bad = int((~ok).sum())
        r, c = np.argwhere(~ok)[0]
        colour = tuple(int(v) for v in rgb[r, c, :3])
        n_colours = len(np.unique(keys[~ok]))
        raise InputError(
            f"{where}: RGB mask has {n_bad} pixel(s) in {n_colours} colour(s) outside the CelebAMask-HQ "
            f"palette, e.g. {colour} at (x={int(c)}, y={int(r)}); save masks as palette PNGs of class ids"
        )
    return _KEY_ORDER[pos_c].astype(np.uint8)


def load_label_map(path: str | os.PathLike) -> np.ndarray:
    """Read a mask PNG into a ``uint8 [H, W]`` map of class ids 0..18.

    Accepted: a palette ('P') PNG whose indices are class ids (the official format), a grayscale PNG
    of class ids at any bit depth (1, 2, 4, 8 or 16: the stored values are the ids, never rescaled), or an
    RGB/RGBA PNG whose every colour is a CelebAMask-HQ palette colour (alpha is ignored). Any size up to
    `cdx.validate.MAX_PIXELS` is accepted (it is resized later), but not an empty image. Raises
    ``InputError`` (message starts with the path) otherwise.
    """
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise InputError(f"{where}: mask file not found")
    if not p.is_file():
        raise InputError(f"{where}: mask path is not a regular file")
    try:
        with open(p, "rb") as f:
            head = f.read(len(_PNG_SIGNATURE) + 18)  # signature + IHDR length, type, width, height, depth, colour
    except OSError as e:
        raise InputError(f"{where}: cannot read mask file ({e.strerror or e})") from None
    if head[: len(_PNG_SIGNATURE)] != _PNG_SIGNATURE:
        if not head:
            raise InputError(f"{where}: mask file is empty (0 bytes), expected a PNG")
        raise InputError(f"{where}: not a PNG file (bad signature); masks must be PNG images")
    grey_depth = None  # the bit depth of a greyscale PNG: PIL scales 1/2/4-bit grey values up to 8 bits
    if len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            raise InputError(f"{where}: mask image is empty ({width}x{height})")
        check_image_size(width, height, where)  # before anything is decoded
        if len(head) == 26 and head[25] in (0, 4):  # colour type 0 (grey) or 4 (grey + alpha)
            grey_depth = head[24]

    try:
        # verify() walks every chunk to IEND and checks CRCs; load() then forces a full decode.
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            size = im.size
            if size[0] == 0 or size[1] == 0:
                raise InputError(f"{where}: mask image is empty ({size[0]}x{size[1]})")
            if mode in ("P", "PA"):
                arr = np.asarray(im)
                if arr.ndim == 3:
                    arr = arr[..., 0]
                kind = "palette indices"
            elif mode in ("L", "LA", "1") or mode.startswith("I"):
                arr = np.asarray(im)
                if arr.ndim == 3:
                    arr = arr[..., 0]
                kind = "grayscale values"
            elif mode in ("RGB", "RGBA"):
                arr = np.asarray(im)[..., :3]
                kind = "rgb"
            else:
                raise InputError(
                    f"{where}: unsupported PNG mode {mode!r}; expected a palette (P), grayscale (L/I) or RGB(A) mask"
                )
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"{where}: mask image is too large ({e})") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure means an unusable file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"{where}: unreadable or truncated PNG ({msg})") from None

    if arr.size == 0:
        raise InputError(f"{where}: mask image is empty ({size[0]}x{size[1]})")
    if kind == "rgb":
        return _rgb_to_ids(arr, where)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif grey_depth in (2, 4) and arr.dtype == np.uint8:  # the ids as stored, not PIL's 8-bit scaling of them
        arr = arr // (255 // (2**grey_depth - 1))
    _check_ids(arr, f"{where}: {kind}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _as_label(label: np.ndarray, what: str = "label map") -> np.ndarray:
    a = np.asarray(label)
    if a.ndim != 2:
        raise InputError(f"{what}: expected a 2-D [H, W] array of class ids, got shape {tuple(a.shape)}")
    if a.size == 0:
        raise InputError(f"{what}: empty array of shape {tuple(a.shape)}")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"{what}: expected integer class ids, got dtype {a.dtype}")
    _check_ids(a, what)
    return np.ascontiguousarray(a, dtype=np.uint8)


def label_map_to_ids(label: np.ndarray, size: int = 32) -> np.ndarray:
    """Official preprocessing: NEAREST resize of the ids to ``size x size``, row-major ``int64 [size*size]``.

    Equal to ``np.asarray(Image.open(png).resize((size, size), Image.NEAREST)).reshape(-1)`` for a
    palette PNG whose indices are class ids.
    """
    size = int(size)
    if size <= 0:
        raise InputError(f"label map: size must be positive, got {size}")
    a = _as_label(label)
    im = Image.fromarray(a)  # mode 'L': NEAREST picks source pixels exactly as on the 'P' image
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(im, dtype=np.uint8).reshape(-1).astype(np.int64)


def one_hot(ids: np.ndarray) -> np.ndarray:
    """``(N,)`` or ``(B, N)`` class ids -> ``int64 [B, 19, N]`` (channel = class)."""
    a = np.asarray(ids)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise InputError(f"mask ids: expected shape (N,) or (B, N), got {tuple(np.asarray(ids).shape)}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise InputError(f"mask ids: expected integer class ids, got dtype {a.dtype}")
    _check_ids(a, "mask ids")
    classes = np.arange(NUM_CLASSES, dtype=np.int64)
    return (a[:, None, :].astype(np.int64) == classes[None, :, None]).astype(np.int64)


def _full_palette() -> list[int]:
    """The CelebAMask-HQ palette padded to 256 entries with greys (i, i, i), as the official PNGs are."""
    flat = [c for rgb in PALETTE for c in rgb]
    for i in range(NUM_CLASSES, 256):
        flat += [i, i, i]
    return flat


def label_map_image(label: np.ndarray) -> Image.Image:
    """``label`` (``[H, W]`` ids 0..18) as a palette image with the CelebAMask-HQ colours (pixel value = id)."""
    a = _as_label(label)
    h, w = a.shape
    im = Image.frombytes("P", (w, h), a.tobytes())
    im.putpalette(_full_palette())
    return im


def save_label_map(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write ``label`` (``[H, W]`` ids 0..18) as a palette PNG with the CelebAMask-HQ colours, atomically."""
    im = label_map_image(label)
    p = Path(path)
    if not p.parent.is_dir():
        raise InputError(f"{p}: output folder {p.parent} does not exist")
    with atomic_path(p) as tmp:
        im.save(tmp, format="PNG")


def colorize(label: np.ndarray) -> np.ndarray:
    """``[H, W]`` class ids -> ``uint8 [H, W, 3]`` CelebAMask-HQ colours (for visualisation)."""
    return _PALETTE_ARRAY[_as_label(label)]
