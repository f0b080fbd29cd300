"""Mask loading, validation and the official 32x32 preprocessing (parity with golden mask/ids and mask/onehot)."""
from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cdx.errors import InputError
from cdx.models.masks import (
    CLASS_NAMES,
    FACE_PARTS,
    NUM_CLASSES,
    PALETTE,
    REGIONS,
    class_ids,
    colorize,
    label_map_to_ids,
    load_label_map,
    one_hot,
    save_label_map,
)

try:  # tests/ on sys.path (rootdir-relative "prepend" import mode)
    from golden import examples_dir, find_golden, resolve_example
except ImportError:  # tests/ is a package
    from tests.golden import examples_dir, find_golden, resolve_example

# the masks behind golden_small_io.pt items 0 and 1 (used when no golden_small.json lies beside it)
DEFAULT_GOLDEN_MASKS = (
    "test_data/256_masks/29980.png",
    "test_data/test_mask_edit/256_edited_masks/27044_0_remove_smile_and_rings.png",
)


def _golden_masks(pt: Path) -> list[Path]:
    meta = pt.with_name(pt.name[: -len("_io.pt")] + ".json")
    rels = list(DEFAULT_GOLDEN_MASKS)
    if meta.is_file():
        rels = json.loads(meta.read_text(encoding="utf-8")).get("masks", rels)
    return [resolve_example(r, pt.parent) for r in rels]


def _direct_ids(png: Path, size: int = 32) -> np.ndarray:
    """The official steps on the file itself: open (no convert), NEAREST resize, row-major indices."""
    with Image.open(png) as im:
        return np.asarray(im.resize((size, size), Image.NEAREST)).reshape(-1).astype(np.int64)


def _example_masks() -> list[Path]:
    found = sorted(p for p in examples_dir().rglob("*.png"))
    if not found:
        pytest.fail(f"no example masks under {examples_dir()}", pytrace=False)
    return found


def _random_label(h: int = 40, w: int = 36, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, NUM_CLASSES, size=(h, w), dtype=np.uint8)


def _save_palette_png(path: Path, ids: np.ndarray) -> Path:
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids, np.uint8).tobytes())
    im.putpalette([c for rgb in PALETTE for c in rgb] + [i for i in range(19, 256) for _ in range(3)])
    im.save(path)
    return path


# ---------------------------------------------------------------- golden parity

def test_mask_golden_ids_and_onehot():
    for pt in find_golden("*_io.pt"):
        g = torch.load(pt, weights_only=True)
        want_ids = g["mask/ids_32x32"].numpy()
        want_onehot = g["mask/onehot"].numpy()
        masks = _golden_masks(pt)
        assert want_ids.shape == (len(masks), 1024) and want_onehot.shape == (len(masks), NUM_CLASSES, 1024)
        ids = np.stack([label_map_to_ids(load_label_map(m)) for m in masks])
        assert ids.dtype == np.int64 and want_ids.dtype == np.int64
        for i, m in enumerate(masks):
            assert np.array_equal(ids[i], want_ids[i]), f"{pt} item {i} ({m}): ids differ"
            assert np.array_equal(_direct_ids(m), want_ids[i]), f"{m}: direct PIL resize differs from golden"
        oh = one_hot(ids)
        assert oh.dtype == np.int64 and oh.shape == want_onehot.shape
        assert np.array_equal(oh, want_onehot), f"{pt}: one-hot differs"
        for i in range(len(masks)):
            assert np.array_equal(one_hot(ids[i]), want_onehot[i : i + 1])


@pytest.mark.parametrize("size", [32, 16, 48, 7])
def test_mask_ids_equal_direct_palette_resize(size):
    for png in _example_masks():
        label = load_label_map(png)
        with Image.open(png) as im:
            assert label.shape == (im.size[1], im.size[0]) and label.dtype == np.uint8
        assert np.array_equal(label_map_to_ids(label, size=size), _direct_ids(png, size)), png


def test_mask_ids_match_direct_resize_on_odd_sizes(tmp_path):
    for k, (h, w) in enumerate([(8, 8), (31, 33), (100, 77), (512, 300), (1, 1)]):
        label = _random_label(h, w, seed=k)
        png = _save_palette_png(tmp_path / f"m{k}.png", label)
        got = label_map_to_ids(load_label_map(png))
        assert got.shape == (1024,) and got.dtype == np.int64
        assert np.array_equal(got, _direct_ids(png)), (h, w)


# ---------------------------------------------------------------- accepted formats

def test_mask_palette_png_roundtrip_and_save(tmp_path):
    label = _random_label()
    out = tmp_path / "saved.png"
    save_label_map(out, label)
    assert sorted(os.listdir(tmp_path)) == ["saved.png"]  # atomic: no temporary file left
    with Image.open(out) as im:
        assert im.mode == "P" and im.size == (label.shape[1], label.shape[0])
        pal = np.asarray(im.getpalette()[: 3 * NUM_CLASSES]).reshape(-1, 3)
    assert np.array_equal(pal, np.asarray(PALETTE))
    assert np.array_equal(load_label_map(out), label)
    # overwriting keeps a single file
    save_label_map(out, np.zeros((4, 4), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["saved.png"]
    assert load_label_map(out).shape == (4, 4)


def test_mask_save_rejects_bad_label(tmp_path):
    with pytest.raises(InputError, match="19"):
        save_label_map(tmp_path / "x.png", np.full((4, 4), 19, np.uint8))
    with pytest.raises(InputError, match="does not exist"):
        save_label_map(tmp_path / "nope" / "x.png", np.zeros((4, 4), np.uint8))
    assert os.listdir(tmp_path) == []


def test_mask_grayscale_L_accepted(tmp_path):
    label = _random_label(seed=3)
    png = tmp_path / "gray.png"
    Image.fromarray(label).save(png)
    with Image.open(png) as im:
        assert im.mode == "L"
    assert np.array_equal(load_label_map(png), label)


def test_mask_grayscale_16bit_accepted(tmp_path):
    label = _random_label(seed=4)
    png = tmp_path / "gray16.png"
    Image.fromarray(label.astype(np.uint16)).save(png)
    with Image.open(png) as im:
        assert im.mode.startswith("I")
    assert np.array_equal(load_label_map(png), label)


@pytest.mark.parametrize("alpha", [False, True])
def test_mask_rgb_palette_colours_accepted(tmp_path, alpha):
    label = _random_label(seed=5)
    rgb = colorize(label)
    if alpha:
        rgb = np.concatenate([rgb, np.full(label.shape + (1,), 255, np.uint8)], axis=-1)
    png = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(png)
    got = load_label_map(png)
    assert got.dtype == np.uint8 and np.array_equal(got, label)


def test_mask_small_image_is_resized(tmp_path):
    png = _save_palette_png(tmp_path / "tiny.png", np.arange(16, dtype=np.uint8).reshape(4, 4))
    ids = label_map_to_ids(load_label_map(png))
    assert ids.shape == (1024,)
    assert np.array_equal(ids.reshape(32, 32)[::8, ::8], np.arange(16).reshape(4, 4))


# ---------------------------------------------------------------- rejected inputs

def _assert_input_error(path: Path, *fragments: str) -> str:
    with pytest.raises(InputError) as ei:
        load_label_map(path)
    msg = str(ei.value)
    assert "\n" not in msg, msg
    assert str(path) in msg, msg
    for f in fragments:
        assert f.lower() in msg.lower(), msg
    return msg


def test_mask_missing_file(tmp_path):
    _assert_input_error(tmp_path / "nope.png", "not found")


def test_mask_directory_rejected(tmp_path):
    _assert_input_error(tmp_path, "not a regular file")


def test_mask_truncated_file(tmp_path):
    png = _save_palette_png(tmp_path / "full.png", _random_label(64, 64, seed=6))
    data = png.read_bytes()
    half = tmp_path / "half.png"
    half.write_bytes(data[: len(data) // 2])
    _assert_input_error(half, "truncated")
    no_end = tmp_path / "noend.png"
    no_end.write_bytes(data[:-12])  # IEND chunk cut off
    _assert_input_error(no_end, "truncated")
    sig_only = tmp_path / "sig.png"
    sig_only.write_bytes(data[:8])
    _assert_input_error(sig_only, "unreadable")


def test_mask_jpeg_renamed_png(tmp_path):
    jpg = tmp_path / "photo.png"
    Image.fromarray(colorize(_random_label(seed=7))).save(jpg, format="JPEG")
    _assert_input_error(jpg, "not a PNG")


def test_mask_text_file(tmp_path):
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image\n")
    _assert_input_error(txt, "not a PNG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _assert_input_error(empty, "empty")


def test_mask_empty_image(tmp_path):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    for w, h in [(0, 0), (16, 0)]:
        png = tmp_path / f"empty_{w}x{h}.png"
        png.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                        + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
        _assert_input_error(png, "empty")


@pytest.mark.parametrize("bad", [19, 20, 100, 255])
def test_mask_out_of_range_ids_palette(tmp_path, bad):
    label = _random_label(seed=8)
    label[3, 4] = bad
    png = _save_palette_png(tmp_path / "p.png", label)
    msg = _assert_input_error(png, "0..18", str(bad))
    assert "1 pixel" in msg


def test_mask_out_of_range_ids_grayscale(tmp_path):
    label = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every value 0..255
    png = tmp_path / "g.png"
    Image.fromarray(label).save(png)
    msg = _assert_input_error(png, "0..18", "19", "237 pixel")
    assert "found 19, 20" in msg  # the bad values are listed from the first bad one; valid ids are not


def test_mask_rgb_off_palette_colour(tmp_path):
    rgb = colorize(_random_label(seed=9)).copy()
    rgb[5, 7] = (1, 2, 3)
    rgb[6, 7] = (1, 2, 3)
    rgb[0, 0] = (250, 250, 250)
    png = tmp_path / "rgb_bad.png"
    Image.fromarray(rgb).save(png)
    _assert_input_error(png, "3 pixel", "2 colour", "(250, 250, 250)", "palette")


def test_mask_rgb_near_palette_colour_rejected(tmp_path):
    # anti-aliased / JPEG-like colours close to a palette colour are not silently snapped
    rgb = colorize(np.ones((8, 8), np.uint8)).copy()
    rgb[2, 2] = (203, 0, 0)
    png = tmp_path / "rgb_near.png"
    Image.fromarray(rgb).save(png)
    _assert_input_error(png, "1 pixel", "(203, 0, 0)")


# ---------------------------------------------------------------- arrays

def test_mask_class_names_and_palette():
    assert len(CLASS_NAMES) == NUM_CLASSES == len(PALETTE) == 19
    assert CLASS_NAMES[0] == "background" and CLASS_NAMES[13] == "hair" and CLASS_NAMES[18] == "cloth"
    assert PALETTE[1] == (204, 0, 0) and PALETTE[13] == (0, 0, 204) and PALETTE[18] == (0, 204, 0)
    assert len(set(PALETTE)) == 19
    # the official example PNGs carry exactly this palette
    with Image.open(examples_dir() / "256_masks" / "29980.png") as im:
        pal = np.asarray(im.getpalette()[: 3 * 19]).reshape(19, 3)
    assert np.array_equal(pal, np.asarray(PALETTE))


def test_mask_class_ids_and_regions():
    assert class_ids("hair", "background", "cloth") == [13, 0, 18]
    with pytest.raises(KeyError, match="nose_ring"):
        class_ids("skin", "nose_ring")
    # every class lies in exactly one benchmark region, and the face parts are the face's own classes
    flat = [i for ids in REGIONS.values() for i in ids]
    assert sorted(flat) == list(range(NUM_CLASSES))
    assert REGIONS["ears"] == [8, 9] and REGIONS["hair"] == [13]
    assert set(FACE_PARTS) == set(range(1, 13)) | {17}


def test_mask_colorize():
    label = np.arange(19, dtype=np.uint8).reshape(1, 19)
    c = colorize(label)
    assert c.dtype == np.uint8 and c.shape == (1, 19, 3)
    assert np.array_equal(c[0], np.asarray(PALETTE, np.uint8))
    with pytest.raises(InputError):
        colorize(np.array([[19]]))


def test_mask_one_hot_shapes_and_checks():
    ids = np.array([0, 18, 5, 5], dtype=np.int64)
    oh = one_hot(ids)
    assert oh.shape == (1, 19, 4) and oh.dtype == np.int64
    assert (oh.sum(axis=1) == 1).all()
    assert oh[0, 18, 1] == 1 and oh[0, 5, 2] == 1 and oh[0, 0, 0] == 1
    assert one_hot(np.stack([ids, ids[::-1]])).shape == (2, 19, 4)
    with pytest.raises(InputError, match="19"):
        one_hot(np.array([0, 19]))
    with pytest.raises(InputError, match="-1"):
        one_hot(np.array([-1, 0]))
    with pytest.raises(InputError, match="shape"):
        one_hot(np.zeros((1, 2, 3), np.int64))


def test_mask_label_map_to_ids_checks():
    with pytest.raises(InputError, match="2-D"):
        label_map_to_ids(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(InputError, match="empty"):
        label_map_to_ids(np.zeros((0, 4), np.uint8))
    with pytest.raises(InputError, match="integer"):
        label_map_to_ids(np.zeros((4, 4), np.float32))
    with pytest.raises(InputError, match="300"):
        label_map_to_ids(np.full((4, 4), 300, np.int32))
    # wider integer dtypes are fine when the values are ids
    assert np.array_equal(label_map_to_ids(np.full((4, 4), 7, np.int64)), np.full(1024, 7))
