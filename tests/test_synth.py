"""Synthetic face generator (cdx.synth) and the preview grid (cdx.train.preview)."""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
from PIL import Image

from cdx.models.masks import FACE_PARTS, class_ids
from cdx.train.preview import PALETTE as PREVIEW_PALETTE
from cdx.train.preview import colourise_mask, save_preview_grid
from cdx.synth import (ALL_ATTRS, LEVEL_WORDS, MASK_ATTRS, TEXT_ATTRS, Attributes, Sample, SyntheticFaces, generate,
                       generate_batch, make_caption, render, render_layout, render_with, sample_attributes)

EXAMPLES_PALETTE = [  # /work/shared/examples/README.md
    (0, 0, 0), (204, 0, 0), (76, 153, 0), (204, 204, 0), (51, 51, 255), (204, 0, 204), (0, 255, 255),
    (255, 204, 204), (102, 51, 0), (255, 0, 0), (102, 204, 0), (255, 255, 0), (0, 0, 153), (0, 0, 204),
    (255, 51, 153), (0, 204, 204), (0, 51, 0), (255, 153, 51), (0, 204, 0),
]


def _present(label: np.ndarray) -> set[int]:
    return set(np.unique(label).tolist())


def test_synth_determinism():
    a, b, c = generate(123), generate(123), generate(124)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.caption == b.caption and a.attrs == b.attrs and a.stated == b.stated
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(a.label, c.label)
    assert generate((5, 3)).caption == generate((5, 3)).caption
    assert not np.array_equal(generate((5, 3)).image, generate((5, 4)).image)
    # render with an rng is deterministic too
    r1 = render(a.attrs, np.random.default_rng(9))
    r2 = render(a.attrs, np.random.default_rng(9))
    assert np.array_equal(r1[0], r2[0]) and np.array_equal(r1[1], r2[1])


def test_synth_types_and_shapes():
    s = generate(0)
    assert isinstance(s, Sample) and isinstance(s.attrs, Attributes)
    assert s.image.dtype == np.uint8 and s.image.shape == (64, 64, 3)
    assert s.label.dtype == np.uint8 and s.label.shape == (64, 64)
    assert isinstance(s.caption, str) and s.caption.endswith(".")
    v = s.attrs.as_vector()
    assert v.dtype == np.int64 and v.shape == (len(ALL_ATTRS),)
    assert Attributes.from_vector(v) == s.attrs
    assert ALL_ATTRS == TEXT_ATTRS + MASK_ATTRS and not set(TEXT_ATTRS) & set(MASK_ATTRS)
    assert Attributes.TEXT_ATTRS == TEXT_ATTRS and Attributes.MASK_ATTRS == MASK_ATTRS
    assert set(Attributes.LEVELS) == set(ALL_ATTRS)
    with pytest.raises(ValueError):
        Attributes(hair_color=9)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_synth_label_contents(size):
    n = 120 if size < 128 else 40
    for i in range(n):
        s = generate((11, i), size)
        assert s.image.shape == (size, size, 3) and s.label.shape == (size, size)
        assert s.label.max() <= 18
        a, p = s.attrs, _present(s.label)
        need = {1, 2, 4, 5, 6, 7, 11, 12, 17}  # skin, nose, eyes, brows, lips, neck
        if not render_layout(s.attrs, s.layout_seed, size).close_up:
            need.add(18)  # cloth: a close-up may leave it out of the picture, as real masks often do
        if a.hair_length:
            need.add(13)
        missing = need - p
        assert not missing, (size, i, a, missing)
        if a.hair_length == 0:
            assert 13 not in p
        # l_* is the person's left = the right half of the picture (as in the real masks)
        ys, xs = np.nonzero(s.label == 4)
        ys5, xs5 = np.nonzero(s.label == 5)
        assert xs.mean() > xs5.mean()
        # top-to-bottom order of the parts
        rows = {c: np.nonzero(s.label == c)[0].mean() for c in (2, 4, 6, 11, 12, 17)}
        assert rows[6] < rows[4] < rows[2] < rows[11] < rows[12] < rows[17]


def test_synth_mask_attributes_visible():
    rng = np.random.default_rng(0)
    for i in range(60):
        base = sample_attributes(rng)
        for name, cls in (("eyeglasses", 3), ("hat", 14), ("earrings", 15), ("necklace", 16)):
            on = render(base.replace(**{name: 1}), layout_seed=i, colour_seed=i)[1]
            off = render(base.replace(**{name: 0}), layout_seed=i, colour_seed=i)[1]
            assert cls in _present(on), (name, base)
            assert cls not in _present(off), (name, base)
        for mouth in (1, 2):
            assert 10 in _present(render(base.replace(mouth=mouth), layout_seed=i, colour_seed=i)[1])
        closed = render(base.replace(mouth=0), layout_seed=i, colour_seed=i)[1]
        assert 10 not in _present(closed) and {11, 12} <= _present(closed)
        bald = render(base.replace(hair_length=0, bangs=0), layout_seed=i, colour_seed=i)[1]
        assert 13 not in _present(bald)
        # hair length: more hair pixels for longer hair, bangs cover more of the forehead
        counts = [int((render(base.replace(hair_length=h, bangs=0, hat=0), layout_seed=i, colour_seed=i)[1]
                       == 13).sum()) for h in (1, 2, 3)]
        assert counts[0] < counts[1] < counts[2], counts
        nb = render(base.replace(hair_length=2, bangs=0, hat=0), layout_seed=i, colour_seed=i)[1]
        wb = render(base.replace(hair_length=2, bangs=1, hat=0), layout_seed=i, colour_seed=i)[1]
        assert (wb == 13).sum() > (nb == 13).sum()
    # face shape changes the width / height ratio of the face
    ratios = []
    for shape in range(3):
        lab = render(Attributes(face_shape=shape, hair_length=0), layout_seed=1, colour_seed=1, size=128)[1]
        face = np.isin(lab, class_ids("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip"))
        ys, xs = np.nonzero(face)
        ratios.append((xs.max() - xs.min()) / (ys.max() - ys.min()))
    assert ratios[1] > ratios[0] > ratios[2], ratios  # round > oval > long


def test_synth_text_attributes_do_not_change_label():
    for i in range(20):
        s = generate((3, i))
        images = []
        for change in ({"hair_color": (s.attrs.hair_color + 1) % 5}, {"skin": (s.attrs.skin + 2) % 5},
                       {"beard": (s.attrs.beard + 2) % 4}, {"lipstick": (s.attrs.lipstick + 1) % 3},
                       {"age": (s.attrs.age + 2) % 4}, {"gender": (s.attrs.gender + 1) % 3}):
            edited = s.attrs.replace(**change)
            image, label = render_with(edited, s.attrs, s.layout_seed, s.colour_seed)
            assert np.array_equal(label, s.label), change
            images.append(image)
            if "gender" not in change and not ("beard" in change and s.attrs.beard == 0 and
                                               change["beard"] == 0):
                if "hair_color" in change and s.attrs.hair_length == 0 and s.attrs.beard == 0:
                    continue  # no hair, no beard: hair colour only tints the brows
                assert not np.array_equal(image, s.image), change
        # re-rendering the sample itself reproduces it
        image, label = render_with(s.attrs, s.attrs, s.layout_seed, s.colour_seed)
        assert np.array_equal(image, s.image) and np.array_equal(label, s.label)


def test_synth_text_edit_changes_image_where_expected():
    a = Attributes(gender=0, hair_color=0, skin=1, beard=0, hair_length=1)
    img0, lab = render(a, layout_seed=5, colour_seed=5, size=64)
    img1, lab1 = render(a.replace(beard=3), layout_seed=5, colour_seed=5, size=64)
    assert np.array_equal(lab, lab1)
    diff = np.abs(img0.astype(int) - img1.astype(int)).sum(-1) > 30
    ys, _ = np.nonzero(diff)
    assert diff.sum() > 20 and ys.mean() > np.nonzero(lab == 2)[0].mean()  # the beard is below the nose
    assert img1[diff].mean() < img0[diff].mean()  # and darker than the skin
    img2, _ = render(a.replace(hair_color=2), layout_seed=5, colour_seed=5, size=64)
    hair = lab == 13
    assert img2[hair].mean() > img0[hair].mean() + 60  # blond is much lighter than black


def test_synth_layout_edit_keeps_colours():
    s = generate(77)
    other = s.attrs.replace(eyeglasses=1 - s.attrs.eyeglasses)
    image, label = render_with(s.attrs, other, s.layout_seed, s.colour_seed)
    assert not np.array_equal(label, s.label)
    same = label == s.label
    # away from the change, most pixels keep their colour (same palette, textures, noise)
    close = np.abs(image.astype(int) - s.image.astype(int)).max(-1) <= 2
    assert close[same].mean() > 0.9


def _mentions(caption: str, name: str, level: int) -> bool:
    text = caption.lower()
    words = LEVEL_WORDS[name][level]
    if name == "gender":
        return any(re.search(rf"\b{w}\b", text) for w in words)
    return any(w in text for w in words)


def test_synth_captions_state_attributes():
    n_text = []
    for i in range(400):
        s = generate((21, i))
        a = s.attrs
        assert s.stated, s
        assert len(set(s.stated)) == len(s.stated)
        text_stated = [x for x in s.stated if x in TEXT_ATTRS and x != "gender"]
        assert 2 <= len(text_stated) <= 4, s.caption
        n_text.append(len(text_stated))
        for name in s.stated:
            assert _mentions(s.caption, name, getattr(a, name)), (name, getattr(a, name), s.caption)
        if a.gender == 0:
            assert "gender" in s.stated and not re.search(r"\b(she|her|woman)\b", s.caption.lower())
        elif a.gender == 1:
            assert "gender" in s.stated and not re.search(r"\b(he|his|man)\b", s.caption.lower())
        # unstated hair colour: no hair colour words
        if "hair_color" not in s.stated:
            assert not re.search(r"\b(black|brown|blond|grey|red) hair\b", s.caption.lower()), s.caption
        if "lipstick" not in s.stated and "lipstick" in s.caption.lower():
            raise AssertionError(s.caption)
        if "beard" not in s.stated:
            assert "beard" not in s.caption.lower() and "stubble" not in s.caption.lower(), s.caption
        assert s.caption[0].isupper() and "  " not in s.caption
        assert not re.search(r"\bthey (has|is|wears)\b|\b(this|the) person (have|are|wear)\b",
                             s.caption.lower()), s.caption
    assert {2, 3, 4} <= set(n_text)
    caption, stated = make_caption(Attributes(gender=0, beard=2, age=1), np.random.default_rng(0))
    assert isinstance(caption, str) and isinstance(stated, tuple)


def test_synth_caption_graded_wording():
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(300):
        a = sample_attributes(rng)
        caption, stated = make_caption(a, rng)
        if "beard" in stated:
            seen.add(("beard", a.beard))
            assert [lvl for lvl in range(4) if _mentions(caption, "beard", lvl)] == [a.beard], caption
        if "lipstick" in stated:
            assert [lvl for lvl in range(3) if _mentions(caption, "lipstick", lvl)] == [a.lipstick], caption
        if "age" in stated:
            seen.add(("age", a.age))
            assert sum(_mentions(caption, "age", lvl) for lvl in range(4)) == 1, caption
    assert {("beard", k) for k in range(4)} <= seen and {("age", k) for k in range(4)} <= seen


def test_synth_batch_and_dataset():
    images, labels, captions, attrs, stated = generate_batch(4, 6, size=32)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (6, 32, 32) and labels.dtype == np.uint8
    assert attrs.shape == (6, len(ALL_ATTRS)) and attrs.dtype == np.int64
    assert stated.shape == (6, len(TEXT_ATTRS)) and stated.dtype == bool
    assert len(captions) == 6 and all(isinstance(c, str) for c in captions)
    assert stated.sum(1).min() >= 2

    ds = SyntheticFaces(6, seed=4, size=32)
    assert len(ds) == 6
    item = ds[2]
    assert set(item) >= {"image", "label", "caption", "attrs"}
    img, lab = item["image"], item["label"]
    assert img.dtype.is_floating_point and tuple(img.shape) == (3, 32, 32)
    assert float(img.min()) >= -1.0 and float(img.max()) <= 1.0
    assert str(lab.dtype) == "torch.int64" and tuple(lab.shape) == (32, 32)
    assert str(item["attrs"].dtype) == "torch.int64"
    # item i of the dataset == sample i of the batch with the same seed
    assert np.array_equal(lab.numpy(), labels[2]) and item["caption"] == captions[2]
    assert np.array_equal(((img.numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8), images[2])
    assert np.array_equal(item["attrs"].numpy(), attrs[2])
    with pytest.raises(IndexError):
        ds[6]


def test_synth_speed():
    generate(0)  # warm-up (grid cache)
    t0 = time.perf_counter()
    for i in range(200):
        generate((99, i), 64)
    dt = time.perf_counter() - t0
    print(f"\nsynth: {200 / dt:.0f} samples/s at 64x64 ({dt * 5:.2f} ms/sample)")
    assert dt < 5.0


@pytest.mark.parametrize("size", [32, 48, 64, 100, 128])
def test_synth_sizes(size):
    s = generate(3, size)
    assert s.image.shape == (size, size, 3) and s.label.shape == (size, size)
    # geometry is resolution independent: the same seed gives a similar layout at every size
    ref = generate(3, 128).label
    small = np.asarray(Image.fromarray(ref).resize((size, size), Image.NEAREST))
    assert (small == s.label).mean() > 0.8
    with pytest.raises(ValueError):
        generate(3, 16)


def test_synth_preview_grid(tmp_path):
    samples = [generate(i) for i in range(5)]
    path = save_preview_grid(tmp_path / "grid.png", samples, cols=3)
    im = Image.open(path)
    assert im.mode == "RGB" and im.width >= 3 * 2 * 64 and im.height >= 2 * 64
    sidecar = (tmp_path / "grid.txt").read_text().splitlines()
    assert len(sidecar) == 5 and samples[4].caption in sidecar[4]
    assert PREVIEW_PALETTE.shape == (19, 3)
    assert [tuple(c) for c in PREVIEW_PALETTE.tolist()] == EXAMPLES_PALETTE
    rgb = colourise_mask(samples[0].label)
    assert rgb.shape == (64, 64, 3) and tuple(rgb[0, 0]) == EXAMPLES_PALETTE[int(samples[0].label[0, 0])]
    # tuples and dataset-style float images work too
    item = SyntheticFaces(2, seed=1)[0]
    save_preview_grid(tmp_path / "grid2.png", [(item["image"].numpy(), item["label"].numpy(), item["caption"])])


def test_synth_face_sizes_cover_real_masks():
    """Real CelebAMask-HQ faces fill more of the frame than head-and-shoulders framing: the close-ups must reach
    them, so that a model trained on these faces has seen real masks' proportions."""
    try:
        from golden import examples_dir
    except ImportError:
        from tests.golden import examples_dir
    from cdx.models.masks import load_label_map

    reals = sorted((examples_dir() / "512_masks").glob("*.png"))
    assert reals, f"no real masks under {examples_dir() / '512_masks'}"
    close, shares = [], []
    for i in range(300):
        s = generate((1234, i), 64)
        close.append(render_layout(s.attrs, s.layout_seed, 64).close_up)
        shares.append(np.isin(s.label, FACE_PARTS).mean())
    assert 0.4 < np.mean(close) < 0.6
    lo, hi = np.percentile(shares, [5, 95])
    for p in reals:
        share = np.isin(load_label_map(p), FACE_PARTS).mean()
        assert lo < share < hi, (p.name, share, lo, hi)
    # the close-ups are the larger faces
    assert np.mean([s for s, c in zip(shares, close) if c]) > np.mean([s for s, c in zip(shares, close) if not c]) + 0.08


def _sha(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


# Recorded from the generator as it was when the shipped model and the eval nets were trained on it
# (cdx/synth.py before it became a package): a change here changes every training set.
RECORDED = {
    0: ("97cf10ca08d8c236", "4873cd84a2a6db18",
        "The woman has blond hair. She is a young adult in her twenties and wears light lipstick."),
    1: ("eefe8c866910b05f", "71608a76d9a03879",
        "This woman wears no hat and has brown hair. Her lips have light lipstick on. She has light skin."),
    2: ("6ceb1f2fa8fedbe3", "071dd5b54f815be6",
        "The person is a young adult in their twenties. Their face is covered with a long beard. They have dark "
        "skin. Their lips have light lipstick on. They wear no earrings."),
}


def test_synth_output_is_the_generator_the_shipped_model_was_trained_on():
    for i, (image, label, caption) in RECORDED.items():
        s = generate((1234, i), 64)
        assert (_sha(s.image), _sha(s.label), s.caption) == (image, label, caption), i
    images, labels, _, attrs, _ = generate_batch(5, 200, 64, start=17)
    assert (_sha(images), _sha(labels), _sha(attrs)) == ("ec4a83945c0080b1", "a7e86cb4aa1dc231", "1ab45f14848f2e84")


def test_synth_parts_read_their_draws_by_name():
    """Every layout / colour slot name maps into its stream, and the stream sizes cover every slot."""
    from cdx.synth.colours import COLOUR_SLOTS, N_COLOUR_DRAWS
    from cdx.synth.layout import LAYOUT_SLOTS, N_LAYOUT_DRAWS

    for slots, n in ((LAYOUT_SLOTS, N_LAYOUT_DRAWS), (COLOUR_SLOTS, N_COLOUR_DRAWS)):
        for name, slot in slots.items():
            start, count = slot if isinstance(slot, tuple) else (slot, 1)
            assert 0 <= start and start + count <= n, name
    # layout slots are one per name (no part reads another's value)
    assert len(set(LAYOUT_SLOTS.values())) == len(LAYOUT_SLOTS)
