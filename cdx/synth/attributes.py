"""Face attributes: the two disjoint groups (text and mask attributes), their levels, the words a caption
uses for each level, and the sampler of plausible combinations.

Mask attributes are visible in the label map; text attributes only change the colours and the caption.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

TEXT_ATTRS: tuple[str, ...] = ("gender", "hair_color", "skin", "beard", "age", "lipstick")
MASK_ATTRS: tuple[str, ...] = ("hair_length", "bangs", "eyeglasses", "hat", "mouth", "face_shape", "earrings",
                               "necklace")
ALL_ATTRS: tuple[str, ...] = TEXT_ATTRS + MASK_ATTRS

#: level names of every attribute (index = stored int level)
LEVELS: dict[str, tuple[str, ...]] = {
    "gender": ("man", "woman", "person"),
    "hair_color": ("black", "brown", "blond", "grey", "red"),
    "skin": ("pale", "light", "medium", "tan", "dark"),
    "beard": ("none", "stubble", "medium", "long"),
    "age": ("twenties", "thirties", "forties", "fifties"),
    "lipstick": ("none", "light", "heavy"),
    "hair_length": ("bald", "short", "medium", "long"),
    "bangs": ("no", "yes"),
    "eyeglasses": ("no", "yes"),
    "hat": ("no", "yes"),
    "mouth": ("closed", "smiling", "open"),
    "face_shape": ("oval", "round", "long"),
    "earrings": ("no", "yes"),
    "necklace": ("no", "yes"),
}

#: for every attribute and level, lower-case substrings of which at least one appears in a caption that states it
LEVEL_WORDS: dict[str, tuple[tuple[str, ...], ...]] = {
    "gender": (("man", "he", "his"), ("woman", "she", "her"), ("person", "they", "their")),
    "hair_color": (("black hair", "hair is black"), ("brown hair", "hair is brown"), ("blond hair", "hair is blond"),
                   ("grey hair", "hair is grey"), ("red hair", "hair is red")),
    "skin": (("pale skin", "skin is pale"), ("light skin", "skin is light"), ("medium skin", "skin is medium"),
             ("tan skin", "skin is tan"), ("dark skin", "skin is dark")),
    "beard": (("no beard", "clean-shaven", "any beard"), ("stubble",), ("medium length",),
              ("long beard", "beard is long")),
    "age": (("twenties",), ("thirties",), ("forties",), ("fifties",)),
    "lipstick": (("no lipstick", "any lipstick"), ("light lipstick", "a little lipstick"),
                 ("heavy lipstick", "a lot of lipstick")),
    "hair_length": (("bald",), ("short hair",), ("medium-length hair",), ("long hair",)),
    "bangs": (("no bangs",), ("bangs",)),
    "eyeglasses": (("any eyeglasses",), ("eyeglasses",)),
    "hat": (("no hat",), ("a hat",)),
    "mouth": (("not smiling",), ("smiling",), ("mouth open", "mouth is open")),
    "face_shape": (("oval face",), ("round face",), ("long face",)),
    "earrings": (("no earrings",), ("earrings",)),
    "necklace": (("no necklace",), ("a necklace",)),
}


@dataclass(frozen=True)
class Attributes:
    """All attributes of a face as small int levels (see :data:`LEVELS` for the level names)."""

    # text-only attributes (image colours + caption; never the label map)
    gender: int = 0
    hair_color: int = 0
    skin: int = 1
    beard: int = 0
    age: int = 0
    lipstick: int = 0
    # mask attributes (visible in the label map)
    hair_length: int = 1
    bangs: int = 0
    eyeglasses: int = 0
    hat: int = 0
    mouth: int = 0
    face_shape: int = 0
    earrings: int = 0
    necklace: int = 0

    TEXT_ATTRS: ClassVar[tuple[str, ...]] = TEXT_ATTRS
    MASK_ATTRS: ClassVar[tuple[str, ...]] = MASK_ATTRS
    NAMES: ClassVar[tuple[str, ...]] = ALL_ATTRS
    LEVELS: ClassVar[dict[str, tuple[str, ...]]] = LEVELS
    NUM_LEVELS: ClassVar[tuple[int, ...]] = tuple(len(LEVELS[n]) for n in ALL_ATTRS)

    def __post_init__(self):
        for name in ALL_ATTRS:
            v = getattr(self, name)
            if not 0 <= int(v) < len(LEVELS[name]):
                raise ValueError(f"attribute {name}={v} out of range 0..{len(LEVELS[name]) - 1}")
            object.__setattr__(self, name, int(v))

    def as_vector(self) -> np.ndarray:
        """int64 vector in :data:`ALL_ATTRS` order (text attributes first, then mask attributes)."""
        return np.array([getattr(self, n) for n in ALL_ATTRS], dtype=np.int64)

    @classmethod
    def from_vector(cls, v) -> "Attributes":
        v = np.asarray(v).reshape(-1)
        if v.shape[0] != len(ALL_ATTRS):
            raise ValueError(f"expected {len(ALL_ATTRS)} values, got {v.shape[0]}")
        return cls(**{n: int(x) for n, x in zip(ALL_ATTRS, v)})

    def replace(self, **changes) -> "Attributes":
        return dataclasses.replace(self, **changes)

    def text_part(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in TEXT_ATTRS}

    def mask_part(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in MASK_ATTRS}

    def combine(self, layout_from: "Attributes") -> "Attributes":
        """Text attributes of ``self`` with the mask attributes of ``layout_from``."""
        return dataclasses.replace(self, **layout_from.mask_part())

    def describe(self) -> dict[str, str]:
        return {n: LEVELS[n][getattr(self, n)] for n in ALL_ATTRS}



def _pick(rng: np.random.Generator, probs) -> int:
    """Index drawn with the given (unnormalised) probabilities."""
    c = np.cumsum(probs, dtype=np.float64)
    return min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), len(c) - 1)


def sample_attributes(rng: np.random.Generator) -> Attributes:
    """Draw a plausible attribute combination (mild gender/age correlations, all combinations reachable)."""
    gender = _pick(rng, [0.45, 0.45, 0.10])
    age = _pick(rng, [0.3, 0.3, 0.2, 0.2])
    hair_color = _pick(rng, [0.3, 0.3, 0.2, 0.05 + 0.15 * (age >= 2) + 0.2 * (age == 3), 0.1])
    skin = _pick(rng, [1, 1, 1, 1, 1])
    if gender == 0:
        beard = _pick(rng, [0.45, 0.2, 0.2, 0.15])
        lipstick = _pick(rng, [0.97, 0.02, 0.01])
        hair_length = _pick(rng, [0.12 + 0.1 * (age >= 2), 0.6, 0.2, 0.08])
        earrings = _pick(rng, [0.95, 0.05])
        necklace = _pick(rng, [0.95, 0.05])
    elif gender == 1:
        beard = 0
        lipstick = _pick(rng, [0.35, 0.35, 0.30])
        hair_length = _pick(rng, [0.02, 0.13, 0.35, 0.5])
        earrings = _pick(rng, [0.6, 0.4])
        necklace = _pick(rng, [0.75, 0.25])
    else:
        beard = _pick(rng, [0.7, 0.1, 0.1, 0.1])
        lipstick = _pick(rng, [0.6, 0.2, 0.2])
        hair_length = _pick(rng, [1, 1, 1, 1])
        earrings = _pick(rng, [0.8, 0.2])
        necklace = _pick(rng, [0.85, 0.15])
    bangs = 0 if hair_length == 0 else _pick(rng, [0.65, 0.35])
    return Attributes(
        gender=gender, hair_color=hair_color, skin=skin, beard=beard, age=age, lipstick=lipstick,
        hair_length=hair_length, bangs=bangs, eyeglasses=_pick(rng, [0.8, 0.2]), hat=_pick(rng, [0.88, 0.12]),
        mouth=_pick(rng, [0.45, 0.4, 0.15]), face_shape=_pick(rng, [1, 1, 1]), earrings=earrings,
        necklace=necklace,
    )
