"""Samples: a face's attributes, label map, image and caption from one seed, as four named streams
(attributes, layout, colours, caption) spawned from it; batches and a torch Dataset of them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .attributes import ALL_ATTRS, TEXT_ATTRS, Attributes, sample_attributes
from .captions import make_caption
from .colours import colourise
from .layout import render_layout


@dataclass
class Sample:
    image: np.ndarray  # uint8 (H, W, 3)
    label: np.ndarray  # uint8 (H, W), CelebAMask-HQ ids 0..18
    caption: str
    attrs: Attributes
    stated: tuple[str, ...]  # attribute names the caption states (text attributes, maybe some mask attributes)
    layout_seed: int | None = field(default=None)
    colour_seed: int | None = field(default=None)


def _seed_from(rng) -> int:
    return int(rng.integers(0, 2**63 - 1))


def render(attrs: Attributes, rng: np.random.Generator | int | None = None, size: int = 64, *,
           layout_seed: int | None = None, colour_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render ``attrs`` to ``(image uint8 (size, size, 3), label uint8 (size, size))``.

    The label map depends only on the mask attributes and ``layout_seed``; the colours only on the text
    attributes, the layout and ``colour_seed``.  Missing seeds are drawn from ``rng`` (layout first, then colour),
    so ``render(a, np.random.default_rng(s))`` is deterministic too.
    """
    if layout_seed is None or colour_seed is None:
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        ls, cs = _seed_from(rng), _seed_from(rng)
        layout_seed = ls if layout_seed is None else layout_seed
        colour_seed = cs if colour_seed is None else colour_seed
    lay = render_layout(attrs, layout_seed, size)
    return colourise(attrs, lay, colour_seed), lay.label


def render_with(attrs_text_from: Attributes, layout_from: Attributes, layout_seed: int, colour_seed: int,
                size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render the text attributes of ``attrs_text_from`` on the mask attributes of ``layout_from``.

    For an edit of sample ``s`` (a :class:`Sample`), keep ``layout_seed=s.layout_seed`` and
    ``colour_seed=s.colour_seed``: changing a text attribute keeps the label map bit-identical, changing a mask
    attribute keeps the palette / textures / noise.
    """
    return render(attrs_text_from.combine(layout_from), size=size, layout_seed=layout_seed,
                  colour_seed=colour_seed)


def generate(seed: int | Sequence[int], size: int = 64) -> Sample:
    """One sample, fully determined by ``seed`` (an int or a tuple of ints, e.g. ``(dataset_seed, index)``)."""
    s_attr, s_layout, s_colour, s_caption = np.random.SeedSequence(seed).spawn(4)
    attrs = sample_attributes(np.random.default_rng(s_attr))
    layout_seed = int(s_layout.generate_state(1, np.uint64)[0] >> np.uint64(1))
    colour_seed = int(s_colour.generate_state(1, np.uint64)[0] >> np.uint64(1))
    image, label = render(attrs, size=size, layout_seed=layout_seed, colour_seed=colour_seed)
    caption, stated = make_caption(attrs, np.random.default_rng(s_caption))
    return Sample(image=image, label=label, caption=caption, attrs=attrs, stated=stated, layout_seed=layout_seed,
                  colour_seed=colour_seed)


def caption_of(seed: int | Sequence[int]) -> str:
    """``generate(seed).caption`` without rendering the face (its attribute and caption streams only)."""
    s_attr, _, _, s_caption = np.random.SeedSequence(seed).spawn(4)
    return make_caption(sample_attributes(np.random.default_rng(s_attr)), np.random.default_rng(s_caption))[0]


def generate_batch(seed: int, n: int, size: int = 64, start: int = 0):
    """``n`` samples; sample ``i`` is ``generate((seed, start + i), size)`` (``SyntheticFaces(.., seed)[start + i]``).

    Returns ``(images uint8 (n, H, W, 3), labels uint8 (n, H, W), captions list[str], attrs int64 (n, A),
    stated bool (n, len(TEXT_ATTRS)))`` with attrs in :data:`ALL_ATTRS` order.
    """
    images = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    attrs = np.empty((n, len(ALL_ATTRS)), np.int64)
    stated = np.zeros((n, len(TEXT_ATTRS)), bool)
    captions = []
    for i in range(n):
        s = generate((seed, start + i), size)
        images[i], labels[i], attrs[i] = s.image, s.label, s.attrs.as_vector()
        stated[i] = [a in s.stated for a in TEXT_ATTRS]
        captions.append(s.caption)
    return images, labels, captions, attrs, stated


try:  # the dataset is optional so that the generator itself works without torch
    import torch
    from torch.utils.data import Dataset as _Dataset
except ImportError:  # pragma: no cover
    torch = None
    _Dataset = object


class SyntheticFaces(_Dataset):
    """``n`` synthetic faces; item ``i`` is ``generate((seed, i), size)`` as a dict of
    ``image`` float32 (3, H, W) in [-1, 1], ``label`` int64 (H, W), ``caption`` str, ``attrs`` int64 (A,)."""

    def __init__(self, n: int, seed: int = 0, size: int = 64):
        if torch is None:  # pragma: no cover
            raise ImportError("SyntheticFaces needs torch")
        self.n, self.seed, self.size = int(n), int(seed), int(size)

    def __len__(self) -> int:
        return self.n

    def sample(self, i: int) -> Sample:
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return generate((self.seed, i % self.n), self.size)

    def __getitem__(self, i: int) -> dict:
        s = self.sample(int(i))
        image = torch.from_numpy(s.image).permute(2, 0, 1).float().div_(127.5).sub_(1.0)
        return {"image": image, "label": torch.from_numpy(s.label.astype(np.int64)), "caption": s.caption,
                "attrs": torch.from_numpy(s.attrs.as_vector())}
