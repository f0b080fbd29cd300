"""cdx.render: sizes of the grids, cells where they belong with the weights they show, labels drawn."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cdx.errors import InputError
from cdx.render import GAP, influence_grid, intermediates_grid, item_paths, pick_steps

T50 = np.arange(981, 0, -20)  # the t of 50 DDIM steps


def _weights(n=50, m=2, b=2, hw=16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, m, b, hw, hw)).astype(np.float32)


def _diff_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the region where two equal-sized images differ."""
    ys, xs = np.nonzero(np.any(a != b, axis=-1) if a.ndim == 3 else a != b)
    assert ys.size, "the images are identical"
    return int(ys.min()), int(xs.min()), int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def test_render_item_paths():
    assert item_paths("out/face.png", 1) == [Path("out/face.png")]
    assert item_paths("out/face.png", 4) == [Path(f"out/face-{i}.png") for i in range(4)]
    assert item_paths(Path("a.b.jpg"), 2) == [Path("a.b-0.jpg"), Path("a.b-1.jpg")]
    with pytest.raises(InputError):
        item_paths("face.png", 0)


def test_render_pick_steps():
    assert list(pick_steps(50, 1)) == [0]
    assert list(pick_steps(50, 2)) == [0, 49]
    assert list(pick_steps(50, 3)) == [0, 24, 49] or list(pick_steps(50, 3)) == [0, 25, 49]
    assert len(pick_steps(50, 50)) == 50 and len(pick_steps(50, 500)) == 50 and len(pick_steps(7, None)) == 7
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError):
            pick_steps(50, bad)


@pytest.mark.parametrize("cell", [64, 24])
def test_render_influence_grid_size_follows_columns_and_modalities(cell):
    w3 = _weights(m=3)
    g = {k: influence_grid(w3[:, :2], ["mask", "text"], T50, columns=k, cell=cell) for k in (8, 9, 10)}
    assert g[8].dtype == np.uint8 and g[8].ndim == 2
    assert g[9].shape[1] - g[8].shape[1] == cell + GAP == g[10].shape[1] - g[9].shape[1]
    assert len({a.shape[0] for a in g.values()}) == 1
    g3 = influence_grid(w3, ["mask", "text", "sketch"], T50, columns=8, cell=cell)
    assert g3.shape[0] - g[8].shape[0] == cell + GAP and g3.shape[1] >= g[8].shape[1]
    assert g[8].shape[0] > 2 * cell and g[8].shape[1] > 8 * cell


def test_render_influence_grid_cells_hold_the_weights_in_row_and_column_order():
    w = np.full((50, 2, 1, 4, 4), 0.25, np.float32)  # shown as 64 everywhere
    base = influence_grid(w, ["mask", "text"], T50, columns=5, cell=32)
    ramp = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)  # shown as 0, 17, ..., 255: never 64
    corners = {}
    for j, i in ((0, 0), (0, 12), (1, 0), (1, 49)):  # of 5 columns the steps 0, 12, 24, 37, 49
        w2 = w.copy()
        w2[i, j, 0] = ramp
        g = influence_grid(w2, ["mask", "text"], T50, columns=5, cell=32)
        top, left, hh, ww = _diff_box(g, base)
        assert (hh, ww) == (32, 32)  # exactly one cell changed
        want = np.repeat(np.repeat((ramp * 255).round().astype(np.uint8), 8, 0), 8, 1)  # NEAREST 4x4 -> 32x32
        assert np.array_equal(g[top: top + 32, left: left + 32], want)  # white = weight 1
        corners[j, i] = (top, left)
    assert corners[0, 0][0] == corners[0, 12][0] < corners[1, 0][0] == corners[1, 49][0]  # rows: modalities
    assert corners[1, 0][0] - corners[0, 0][0] == 32 + GAP
    assert corners[0, 0][1] == corners[1, 0][1] < corners[0, 12][1] < corners[1, 49][1]  # columns: steps
    assert corners[0, 12][1] - corners[0, 0][1] == 32 + GAP
    assert corners[1, 49][1] - corners[1, 0][1] == 4 * (32 + GAP)


def test_render_influence_grid_labels_are_drawn():
    w = _weights()
    g = influence_grid(w, ["mask", "text"], T50, columns=4)
    other_name = influence_grid(w, ["mask", "face"], T50, columns=4)
    other_t = influence_grid(w, ["mask", "text"], T50 + 3, columns=4)
    top, left, _, width = _diff_box(g, other_name)
    cells_left = _diff_box(g, influence_grid(w * 0.5, ["mask", "text"], T50, columns=4))[1]
    assert left + width <= cells_left  # the row label sits left of the cells
    assert top > 64  # ... of the second row only
    t_top, _, t_h, _ = _diff_box(g, other_t)
    assert t_top + t_h <= _diff_box(g, influence_grid(w * 0.5, ["mask", "text"], T50, columns=4))[0]  # header
    # the scale bar: a row that runs from black to white, left to right, below the cells
    rows = [r for r in range(g.shape[0]) if g[r].min() == 0 and g[r].max() == 255 and _ramp(g[r])]
    assert rows and min(rows) > 2 * 64
    # and its caption: dark pixels below the bar
    assert (g[max(rows) + 1:] < 128).any()


def _ramp(row: np.ndarray) -> bool:
    """Whether the row holds a run of rising pixels from black (<= 8) to white (>= 247), >= 64 long."""
    v = row.astype(int)
    start = 0
    for k in range(1, len(v) + 1):
        if k == len(v) or v[k] <= v[k - 1]:
            if k - start >= 64 and v[start] <= 8 and v[k - 1] >= 247:
                return True
            start = k
    return False


def test_render_influence_grid_takes_torch_with_a_channel_axis_and_refuses_bad_shapes():
    w = _weights(n=10, b=1)
    a = influence_grid(w, ["mask", "text"], T50[:10], columns=3)
    b = influence_grid(torch.from_numpy(w)[:, :, :, None], ["mask", "text"], T50[:10], columns=3)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        influence_grid(w, ["mask"], T50[:10])
    with pytest.raises(InputError):
        influence_grid(w, ["mask", "text"], T50[:10], item=1)


def test_render_intermediates_grid():
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, (50, 3, 3, 16, 16)).astype(np.float32)
    g = intermediates_grid(x0, T50, rows=5, scale=2)
    assert g.dtype == np.uint8 and g.ndim == 3 and g.shape[2] == 3
    g6 = intermediates_grid(x0, T50, rows=6, scale=2)
    assert g6.shape[0] - g.shape[0] == 32 + GAP and g6.shape[1] == g.shape[1]
    g4 = intermediates_grid(x0[:, :2], T50, rows=5, scale=2)
    assert g.shape[1] - g4.shape[1] == 32 + GAP
    # a cell is the image: change one step's item, find it, compare
    x1 = x0.copy()
    x1[49, 2] = rng.uniform(-1, 1, (3, 16, 16))
    g1 = intermediates_grid(x1, T50, rows=5, scale=2)
    top, left, hh, ww = _diff_box(g1, g)
    assert (hh, ww) == (32, 32)
    want = ((np.clip(x1[49, 2], -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(1, 2, 0)
    want = np.repeat(np.repeat(want, 2, 0), 2, 1)  # scale 2, NEAREST
    assert np.array_equal(g1[top: top + 32, left: left + 32], want)
    assert top > g.shape[0] - 32 - GAP - 1 and left > g.shape[1] - 32 - GAP - 1  # last row, last column
    # labels: other timesteps change the row labels only, left of the cells
    gt = intermediates_grid(x0, T50 + 5, rows=5, scale=2)
    _, l_left, _, l_w = _diff_box(g, gt)
    assert l_left + l_w <= left
    # uint8 NHWC input is taken as it is
    u8 = ((np.clip(x0, -1, 1) + 1) * 127.5).round().astype(np.uint8).transpose(0, 1, 3, 4, 2)
    assert np.array_equal(intermediates_grid(u8, T50, rows=5, scale=2), g)


def test_render_every_influence_cell_is_framed_so_a_white_one_shows():
    from cdx.render import GAP_VALUE

    w = np.ones((50, 1, 1, 4, 4), np.float32)  # weight 1 everywhere: all-white cells
    g = influence_grid(w, ["text"], T50, columns=2, cell=16)
    white = np.argwhere(g == 255)  # the grid is greyscale; a cell is a 16x16 white square
    found = 0
    for y, x in white:
        if y + 16 <= g.shape[0] and x + 16 <= g.shape[1] and (g[y:y + 16, x:x + 16] == 255).all() \
                and g[y - 1, x] == GAP_VALUE and g[y, x - 1] == GAP_VALUE:
            assert (g[y - GAP:y + 16 + GAP, x - GAP] == GAP_VALUE).all()  # left
            assert (g[y - GAP:y + 16 + GAP, x + 16] == GAP_VALUE).all()  # right
            assert (g[y - GAP, x - GAP:x + 16 + GAP] == GAP_VALUE).all()  # top
            assert (g[y + 16, x - GAP:x + 16 + GAP] == GAP_VALUE).all()  # bottom
            found += 1
    assert found == 2


def test_render_labelled_strip_labels_each_column():
    from cdx.render import labelled_strip

    faces = np.full((3, 64, 64, 3), 200, np.uint8)
    s = labelled_strip(faces, ["alpha=0.5", "alpha=0.7", "alpha=0.9"])
    assert s.shape[0] > 64 + 2 * GAP and s.shape[1] >= 3 * 64 + 2 * GAP
    header = s[: s.shape[0] - 64 - GAP]
    dark = np.nonzero((header < 100).all(axis=2).any(axis=0))[0]  # columns with label ink
    assert dark.size and len({int(x) // (64 + GAP) for x in dark}) == 3  # a label above every column
    narrow = labelled_strip(np.zeros((2, 8, 8, 3), np.uint8), ["alpha=0.5", "alpha=1"])  # too narrow: the value
    assert narrow.shape[1] < 60
    with pytest.raises(ValueError):
        labelled_strip(faces, ["a", "b"])
