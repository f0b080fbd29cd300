"""Pictures that explain a run: the labelled influence grid, the grid of predicted x0 per step, and the
names of a batch's per-item files. Arrays in, uint8 arrays out (``cdx.cli.options.save_image``
writes them); text is drawn with PIL's default font, so nothing is downloaded.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import InputError

__all__ = ["influence_grid", "intermediates_grid", "item_paths", "labelled_strip", "pick_steps"]

GAP = 2  # grey lines between and around cells: a frame, so that an all-white cell is seen
GAP_VALUE = 128
PAD = 4  # margin around the labels
BAR_H = 10  # height of the scale bar


def item_paths(out: str | Path, n: int) -> list[Path]:
    """Output file of every batch item: ``face.png`` for one item, ``face-0.png`` ... ``face-<n-1>.png``."""
    out = Path(out)
    if n < 1:
        raise InputError(f"a batch of {n} items has no output files")
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]


def pick_steps(n_steps: int, count: int | None) -> np.ndarray:
    """``count`` step indices spread evenly over ``n_steps``, first and last included (all when None)."""
    if count is None:
        return np.arange(n_steps)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"influence steps = {count!r}: ask for at least 1 column")
    return np.unique(np.linspace(0, n_steps - 1, min(int(count), n_steps)).round().astype(int))


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    from PIL import Image, ImageDraw

    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=_font())
    return right - left, bottom


def _t_label(t: int, width: int) -> str:
    text = f"t={t}"
    return text if _text_size(text)[0] <= width else str(t)


def _to_numpy(a) -> np.ndarray:
    return a.detach().float().cpu().numpy() if hasattr(a, "detach") else np.asarray(a, dtype=np.float32)


def _cells_sheet(cells: list[list[np.ndarray]], row_labels: Sequence[str], col_labels: Sequence[str],
                 footer: tuple[int, int] = (0, 0)):
    """Lay out equal-sized cells (H, W) or (H, W, 3) with a label column on the left and a header row.

    ``footer`` (width, height) reserves room below the cells. Returns the canvas (PIL image), its draw
    handle, and (x, y) of the footer's top-left corner."""
    from PIL import Image, ImageDraw

    ch, cw = cells[0][0].shape[:2]
    colour = cells[0][0].ndim == 3
    label_w = max(_text_size(s)[0] for s in row_labels) + 2 * PAD
    header_h = max(_text_size(s)[1] for s in col_labels) + 2 * PAD
    n_rows, n_cols = len(cells), len(cells[0])
    width = label_w + max(n_cols * (cw + GAP), footer[0])
    height = header_h + n_rows * (ch + GAP) + footer[1]
    canvas = Image.new("RGB" if colour else "L", (width, height), (255, 255, 255) if colour else 255)
    grid_w, grid_h = n_cols * (cw + GAP) + GAP, n_rows * (ch + GAP) + GAP
    grey = (GAP_VALUE,) * 3 if colour else GAP_VALUE
    canvas.paste(Image.new(canvas.mode, (grid_w, grid_h), grey), (label_w - GAP, header_h - GAP))  # the frames
    draw = ImageDraw.Draw(canvas)
    ink = (0, 0, 0) if colour else 0
    for c, text in enumerate(col_labels):
        tw, _ = _text_size(text)
        draw.text((label_w + c * (cw + GAP) + (cw - tw) // 2, PAD), text, fill=ink, font=_font())
    for r, row in enumerate(cells):
        y = header_h + r * (ch + GAP)
        th = _text_size(row_labels[r])[1]
        draw.text((PAD, y + (ch - th) // 2), row_labels[r], fill=ink, font=_font())
        for c, cell in enumerate(row):
            canvas.paste(Image.fromarray(cell), (label_w + c * (cw + GAP), y))
    return canvas, draw, (label_w, header_h + n_rows * (ch + GAP) + PAD)


def labelled_strip(images, labels: Sequence[str], row_label: str = "") -> np.ndarray:
    """Images side by side, each framed and labelled above (e.g. ``alpha=0.5``; the bare value where the
    label is wider than the image). ``images``: ``[n, H, W, 3]`` uint8."""
    a = np.asarray(images)
    if a.ndim != 4 or len(a) != len(labels):
        raise ValueError(f"images {a.shape}: expected [n, H, W, 3] with {len(labels)} labels")
    width = a.shape[2]
    cols = [text if _text_size(text)[0] <= width else text.partition("=")[2] or text for text in labels]
    canvas, _, _ = _cells_sheet([list(a)], [row_label], cols)
    return np.asarray(canvas)


def influence_grid(influence, names: Sequence[str], timesteps: Sequence[int], columns: int | None = 10,
                   item: int = 0, cell: int = 64) -> np.ndarray:
    """The influence maps of one batch item: a row per modality (its name on the left), a column per chosen
    step (its t above), and a scale bar: white = weight 1 of that modality, black = 0.

    ``influence``: weights ``[steps, modalities, batch, h, w]`` (or with a channel axis of 1 before h, w),
    numpy or torch. ``columns``: how many steps, spread evenly, first and last included (None: all)."""
    from PIL import Image

    w = _to_numpy(influence)
    if w.ndim == 6:
        w = w[:, :, :, 0]  # (N, M, B, 1, h, w) -> (N, M, B, h, w)
    if w.ndim != 5 or w.shape[1] != len(names) or w.shape[0] != len(timesteps):
        raise ValueError(f"influence {w.shape} does not fit {len(names)} modalities x {len(timesteps)} steps")
    if not 0 <= item < w.shape[2]:
        raise InputError(f"item {item}: the batch has {w.shape[2]} items")
    steps = pick_steps(w.shape[0], columns)

    def tile(a: np.ndarray) -> np.ndarray:
        img = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
        return np.asarray(img.resize((cell, cell), Image.NEAREST))

    cells = [[tile(w[i, j, item]) for i in steps] for j in range(len(names))]
    col_labels = [_t_label(int(timesteps[i]), cell) for i in steps]
    caption = "white = weight 1 of that modality, black = 0"
    footer = (_text_size(caption)[0] + PAD, BAR_H + _text_size("0")[1] + _text_size(caption)[1] + 3 * PAD)
    canvas, draw, (x, y) = _cells_sheet(cells, list(names), col_labels, footer)
    bar_w = min(256, len(steps) * (cell + GAP) - GAP, canvas.width - x - PAD)
    bar = np.tile(np.linspace(0, 255, bar_w).round().astype(np.uint8), (BAR_H, 1))  # 0 -> 1, left to right
    canvas.paste(Image.fromarray(bar), (x, y))
    draw.rectangle((x - 1, y - 1, x + bar_w, y + BAR_H), outline=GAP_VALUE)
    ty = y + BAR_H + PAD // 2
    draw.text((x, ty), "0", fill=0, font=_font())
    draw.text((x + bar_w - _text_size("1")[0], ty), "1", fill=0, font=_font())
    draw.text((x, ty + _text_size("0")[1] + PAD), caption, fill=0, font=_font())
    return np.asarray(canvas)


def intermediates_grid(images, timesteps: Sequence[int] | None = None, rows: int | None = None,
                       scale: int = 1) -> np.ndarray:
    """The predicted x0 of every step as pictures: a row per step (its t on the left), a column per item.

    ``images``: ``[steps, batch, 3, H, W]`` floats in [-1, 1] (decoded predicted x0) or
    ``[steps, batch, H, W, 3]`` uint8. ``rows``: how many steps, spread evenly (None: all)."""
    from PIL import Image

    a = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if a.ndim != 5:
        raise ValueError(f"intermediates {a.shape}: expected [steps, batch, 3, H, W] or [steps, batch, H, W, 3]")
    if a.dtype != np.uint8:
        a = ((np.clip(a.astype(np.float32), -1, 1) + 1) * 127.5).round().astype(np.uint8)
        a = a.transpose(0, 1, 3, 4, 2)  # (N, B, 3, H, W) -> (N, B, H, W, 3)
    n = a.shape[0]
    if timesteps is not None and len(timesteps) != n:
        raise ValueError(f"{len(timesteps)} timesteps for {n} steps")
    steps = pick_steps(n, rows)

    def tile(im: np.ndarray) -> np.ndarray:
        if scale == 1:
            return im
        return np.asarray(Image.fromarray(im).resize((im.shape[1] * scale, im.shape[0] * scale), Image.NEAREST))

    cells = [[tile(a[i, b]) for b in range(a.shape[1])] for i in steps]
    row_labels = [f"t={int(timesteps[i])}" if timesteps is not None else f"step {i}" for i in steps]
    col_labels = [f"item {b}" for b in range(a.shape[1])]
    canvas, _, _ = _cells_sheet(cells, row_labels, col_labels)
    return np.asarray(canvas)
