"""Preview grids for (synthetic or generated) faces: image | colourised label map, caption underneath."""
from __future__ import annotations

import os
import textwrap
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..models.masks import PALETTE as _MASKS_PALETTE

__all__ = ["PALETTE", "colourise_mask", "save_preview_grid"]

#: CelebAMask-HQ palette as a uint8 (19, 3) array, index = class id
PALETTE = np.asarray(_MASKS_PALETTE, dtype=np.uint8)


def colourise_mask(label: np.ndarray) -> np.ndarray:
    """uint8 (H, W) class ids -> uint8 (H, W, 3) RGB in the CelebAMask-HQ palette."""
    label = np.asarray(label)
    if label.min() < 0 or label.max() >= len(PALETTE):
        raise ValueError(f"label ids must be in 0..{len(PALETTE) - 1}")
    return PALETTE[label.astype(np.intp)]


def _unpack(s):
    """(image, label, caption) from a Sample-like object, a dict or a tuple."""
    if isinstance(s, dict):
        image, label, caption = s["image"], s["label"], s.get("caption", "")
    elif hasattr(s, "image") and hasattr(s, "label"):
        image, label, caption = s.image, s.label, getattr(s, "caption", "")
    else:
        image, label, caption = (tuple(s) + ("",))[:3]
    image, label = np.asarray(image), np.asarray(label)
    if image.dtype != np.uint8:  # float (3,H,W) or (H,W,3) in [-1, 1]
        if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
            image = image.transpose(1, 2, 0)
        image = np.clip((image.astype(np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    return image, label, str(caption)


def _font(px: int):
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def save_preview_grid(path: str | os.PathLike, samples: Sequence | Iterable, cols: int = 4, tile: int = 128,
                      caption_lines: int = 5, sidecar: bool = True) -> str:
    """Write a PNG grid: for every sample, image | colourised mask side by side, caption printed underneath.

    ``samples`` are :class:`cdx.synth.Sample` objects, dicts with ``image``/``label``/``caption`` or
    ``(image, label[, caption])`` tuples.  Tiles are upscaled (nearest) to ``tile`` pixels.  With ``sidecar`` the
    full captions are also written to ``<path without .png>.txt``.  Returns the PNG path.
    """
    items = [_unpack(s) for s in samples]
    if not items:
        raise ValueError("no samples to preview")
    cols = max(1, min(cols, len(items)))
    rows = (len(items) + cols - 1) // cols
    font = _font(11)
    line_h = 13
    cap_h = caption_lines * line_h + 4 if caption_lines > 0 else 0
    cell_w, cell_h = 2 * tile + 8, tile + cap_h + 8
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars = max(10, int((2 * tile) / 6.2))
    for k, (image, label, caption) in enumerate(items):
        r, c = divmod(k, cols)
        x0, y0 = c * cell_w + 4, r * cell_h + 4
        sheet.paste(Image.fromarray(image).resize((tile, tile), Image.NEAREST), (x0, y0))
        sheet.paste(Image.fromarray(colourise_mask(label)).resize((tile, tile), Image.NEAREST), (x0 + tile, y0))
        if cap_h:
            lines = textwrap.wrap(caption, chars)[:caption_lines]
            for i, line in enumerate(lines):
                draw.text((x0, y0 + tile + 2 + i * line_h), line, fill=(0, 0, 0), font=font)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    if sidecar:
        with open(os.path.splitext(path)[0] + ".txt", "w", encoding="utf-8") as f:
            for k, (_, _, caption) in enumerate(items):
                f.write(f"{k}\t{caption}\n")
    return path
