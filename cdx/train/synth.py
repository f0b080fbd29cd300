"""Procedural synthetic faces with CelebAMask-HQ label maps and CelebA-Dialog-style captions.

This is training data for *small* diffusion models: every sample is an RGB face image, a 19-class label map in
CelebAMask-HQ order (0 background, 1 skin, 2 nose, 3 eye_g, 4 l_eye, 5 r_eye, 6 l_brow, 7 r_brow, 8 l_ear,
9 r_ear, 10 mouth, 11 u_lip, 12 l_lip, 13 hair, 14 hat, 15 ear_r, 16 neck_l, 17 neck, 18 cloth) and a caption.
"l_" parts are the person's left, i.e. the right half of the image, as in the real masks.

Attributes come in two disjoint groups:

* mask attributes (:data:`MASK_ATTRS`) are visible in the label map: hair length / bangs / bald, eyeglasses,
  hat, mouth (closed / smiling / open), face shape, earrings, necklace;
* text attributes (:data:`TEXT_ATTRS`) only change the image colours and the caption, never the label map:
  gender (pronouns only), hair colour, skin tone, beard (a darker texture over skin pixels, labelled skin as in
  CelebAMask-HQ), age (wrinkles and greying) and lipstick.

Rendering is split in two independent stages, each with its own random stream:

* the *layout* (label map + pose + all geometry) is a function of the mask attributes and ``layout_seed`` only;
* the *colours* (palette, textures, noise, wrinkles, beard) are a function of the text attributes, the layout
  geometry and ``colour_seed`` only (the colour stream draws a fixed number of values whatever the attributes).

So ``render(a, layout_seed=L, colour_seed=C)`` and ``render(b, layout_seed=L, colour_seed=C)`` give *identical label
maps* when ``a`` and ``b`` share the mask attributes (e.g. only the hair colour changed), and the same colours /
noise when they share the text attributes (e.g. only the eyeglasses changed).  :func:`render_with` wraps this
for editing evaluations; every :class:`Sample` records its ``layout_seed`` and ``colour_seed``.

Everything is numpy-vectorised on a pixel-centre grid (no per-pixel Python loops): a 64x64 sample takes on the
order of a millisecond or two on one core.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import numpy as np

from ..models.masks import CLASS_NAMES

__all__ = [
    "Attributes",
    "Sample",
    "TEXT_ATTRS",
    "MASK_ATTRS",
    "ALL_ATTRS",
    "LEVELS",
    "LEVEL_WORDS",
    "CLASS_NAMES",
    "sample_attributes",
    "render",
    "render_layout",
    "render_with",
    "make_caption",
    "generate",
    "generate_batch",
    "SyntheticFaces",
]

(BG, SKIN, NOSE, EYE_G, L_EYE, R_EYE, L_BROW, R_BROW, L_EAR, R_EAR, MOUTH, U_LIP, L_LIP, HAIR, HAT, EAR_R,
 NECK_L, NECK, CLOTH) = range(19)

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


@dataclass
class Sample:
    image: np.ndarray  # uint8 (H, W, 3)
    label: np.ndarray  # uint8 (H, W), CelebAMask-HQ ids 0..18
    caption: str
    attrs: Attributes
    stated: tuple[str, ...]  # attribute names the caption states (text attributes, maybe some mask attributes)
    layout_seed: int | None = field(default=None)
    colour_seed: int | None = field(default=None)


# ----------------------------------------------------------------------------------------------------------------
# attribute sampling
# ----------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------
# geometry helpers (all work on the face-local coordinate grids X, Y)
# ----------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


class _Grid:
    """Face-local coordinates: origin at the face centre, x right, y down, unit = image size / scale."""

    def __init__(self, size: int, cx: float, cy: float, scale: float, roll: float):
        x, y = _pixel_grid(size)
        c, s = np.cos(roll), np.sin(roll)
        dx, dy = x - cx, y - cy
        self.X = ((c * dx + s * dy) / scale).astype(np.float32)
        self.Y = ((-s * dx + c * dy) / scale).astype(np.float32)
        self.px = 1.0 / (size * scale)  # one pixel in local units
        self.rmin = 0.75 * self.px  # an ellipse with both radii >= 0.71 px always contains a pixel centre

    def ell(self, cx, cy, rx, ry, p: float = 2.0):
        rx = max(rx, self.rmin)
        ry = max(ry, self.rmin)
        if p == 2.0:
            return ((self.X - cx) / rx) ** 2 + ((self.Y - cy) / ry) ** 2 <= 1.0
        return np.abs((self.X - cx) / rx) ** p + np.abs((self.Y - cy) / ry) ** p <= 1.0

    def tapered(self, cx, cy, rx, ry, k):
        """Ellipse whose half-width shrinks (k > 0) or grows (k < 0) linearly towards its bottom."""
        rx = max(rx, self.rmin)
        ry = max(ry, self.rmin)
        v = (self.Y - cy) / ry
        w = rx * (1.0 - k * np.clip(v, 0.0, 1.0)) if k > 0 else rx * (1.0 - k * (np.clip(v, -1.0, 1.0) + 1.0) * 0.5)
        return ((self.X - cx) / w) ** 2 + v * v <= 1.0

    def band(self, curve_y, half, x0, x1):
        """Pixels within ``half`` of the curve y = curve_y (an array over the grid), for x0 <= X <= x1."""
        half = np.maximum(half, 0.55 * self.px)
        return (np.abs(self.Y - curve_y) <= half) & (self.X >= x0) & (self.X <= x1)


@dataclass
class _Layout:
    grid: _Grid
    label: np.ndarray
    rx: float
    ry: float
    chin: float
    fx: float  # horizontal offset of the inner features (fake yaw)
    eye_x: float
    eye_y: float
    eye_rx: float
    eye_ry: float
    gaze: float
    nose_y: float
    nose_bottom: float
    nose_rx: float
    mouth_y: float
    mouth_rx: float
    teeth: np.ndarray  # bool (H, W): teeth pixels inside the mouth
    frame: np.ndarray  # bool (H, W): opaque parts of the eyeglasses
    face: np.ndarray  # bool (H, W): the face ellipse (before later layers)
    close_up: bool  # framed close up (the shoulders, and often the cloth, outside the picture)


CLOSE_UP = 0.5  # share of faces framed close up, as the real masks are (the rest: head and shoulders)

_FACE_SHAPES = (  # (half width, half height, jaw taper)
    (0.215, 0.295, 0.20),  # oval
    (0.245, 0.272, 0.08),  # round
    (0.195, 0.325, 0.16),  # long
)


def render_layout(attrs: Attributes, layout_seed: int, size: int = 64) -> _Layout:
    """The label map and geometry: a function of the mask attributes and ``layout_seed`` only."""
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    r = np.random.default_rng(layout_seed)
    u = r.random(64)  # a fixed number of draws, consumed below in a fixed order
    j = lambda i, lo, hi: lo + (hi - lo) * float(u[i])  # noqa: E731

    rx0, ry0, taper = _FACE_SHAPES[attrs.face_shape]
    rx, ry = rx0 * j(4, 0.96, 1.04), ry0 * j(5, 0.97, 1.03)
    chin = ry
    close_up = float(u[48]) < CLOSE_UP
    if close_up:  # framed as CelebAMask-HQ frames faces: the face fills the picture, the shoulders leave it
        cy, scale = j(50, 0.50, 0.56), j(49, 1.3, 1.6)
        scale = min(scale, (0.97 - cy) / (chin + (0.065 if attrs.necklace else 0.0)))  # chin (necklace) inside
    else:  # head and shoulders
        cy, scale = j(1, 0.45, 0.49), j(2, 1.05, 1.2)
        scale = min(scale, (0.9 - cy) / (chin + 0.075))  # chin and shoulders stay inside the picture
    g = _Grid(size, cx=j(0, 0.47, 0.53), cy=cy, scale=scale, roll=j(3, -0.10, 0.10))
    X, Y = g.X, g.Y
    lab = np.zeros((size, size), dtype=np.uint8)

    fx = j(6, -0.02, 0.02)
    vol = j(7, 0.0, 0.035)
    hx, hy = rx * 1.06 + 0.012 + vol, ry + 0.035 + vol  # head cap half axes
    head_cy = -0.035

    # --- body: hair behind, neck, necklace, cloth -----------------------------------------------------------
    neck_w = rx * j(8, 0.40, 0.48)
    cap = g.ell(0.0, head_cy, hx, hy)
    below = Y >= head_cy
    if attrs.hair_length == 2:
        lab[cap | (g.ell(0.0, head_cy, hx + j(10, 0.01, 0.03), ry + j(9, 0.12, 0.2)) & below)] = HAIR
    elif attrs.hair_length == 3:
        lab[cap | (g.ell(0.0, head_cy, hx + j(10, 0.03, 0.07), j(11, 0.6, 0.75)) & below)] = HAIR
    neck = (np.abs(X) <= neck_w + 0.35 * np.maximum(Y - chin - 0.03, 0.0)) & (Y >= 0.0)
    lab[neck] = NECK
    necklace_y = chin + j(12, 0.03, 0.05)
    sh_y = max(chin + j(14, 0.06, 0.1), necklace_y + 0.035)
    if not close_up:
        sh_y = min(sh_y, (0.88 - cy) / scale)  # keep the shoulders inside the picture
    if attrs.necklace:
        curve = min(necklace_y, sh_y - 0.025) + 2.5 * X * X
        lab[g.band(curve, j(13, 0.008, 0.013), -neck_w - 0.02, neck_w + 0.02) & neck] = NECK_L
    dip = j(15, 0.0, 0.07)
    cloth_top = sh_y + 0.25 * np.maximum(np.abs(X) - 0.12, 0.0) + dip * np.maximum(1.0 - np.abs(X) / 0.13, 0.0)
    lab[Y >= cloth_top] = CLOTH
    if attrs.hair_length == 3:  # long hair falls in front of the shoulders
        over = g.ell(0.0, head_cy, hx + j(10, 0.03, 0.07), j(11, 0.6, 0.75)) & (Y > chin)
        lab[over & (np.abs(X) > neck_w + j(16, 0.02, 0.06))] = HAIR

    # --- ears (behind the face), bald head ------------------------------------------------------------------
    if attrs.hair_length == 0:
        lab[g.ell(0.0, head_cy, rx * 1.02, ry + 0.03)] = SKIN
    ear_y, ear_rx, ear_ry = j(17, 0.0, 0.03), j(18, 0.04, 0.05), j(19, 0.065, 0.08)
    ear_x = rx * 1.0
    r_ear, l_ear = g.ell(-ear_x, ear_y, ear_rx, ear_ry), g.ell(ear_x, ear_y, ear_rx, ear_ry)
    lab[r_ear] = R_EAR  # person's right = image left
    lab[l_ear] = L_EAR
    ears = r_ear | l_ear

    # --- face -----------------------------------------------------------------------------------------------
    face = g.tapered(0.0, 0.0, rx, ry, taper)
    lab[face] = SKIN

    # nose
    nose_y, nose_h, nose_rx = j(20, 0.045, 0.065), j(21, 0.055, 0.07), j(22, 0.03, 0.042)
    lab[g.tapered(fx, nose_y, nose_rx, nose_h, -0.9)] = NOSE
    nose_bottom = nose_y + nose_h

    # eyes (+ eyeglasses underneath them)
    eye_x, eye_y = rx * j(23, 0.40, 0.46), j(24, -0.045, -0.02)
    eye_rx, eye_ry = j(25, 0.04, 0.05), j(26, 0.019, 0.026)
    frame = np.zeros_like(lab, dtype=bool)
    if attrs.eyeglasses:
        lrx, lry = eye_rx + j(27, 0.025, 0.04), eye_ry + j(28, 0.028, 0.04)
        p = 2.0 if u[29] < 0.5 else 4.0
        th = max(j(30, 0.008, 0.013), 0.6 * g.px)
        glass = np.zeros_like(frame)
        for sx in (-1.0, 1.0):
            cxl = fx + sx * eye_x
            outer = g.ell(cxl, eye_y + 0.005, lrx, lry, p)
            inner = g.ell(cxl, eye_y + 0.005, lrx - th, lry - th, p)
            glass |= outer
            frame |= outer & ~inner
        gap = eye_x - lrx
        bridge = g.band(np.full_like(Y, eye_y - 0.005), th * 0.7, fx - gap - th, fx + gap + th)
        temples = g.band(np.full_like(Y, eye_y - lry * 0.5), th * 0.6, -rx * 1.03, rx * 1.03) & (
            np.abs(X - fx) >= eye_x + lrx - th)
        frame |= bridge | temples
        glass |= bridge | temples
        lab[glass] = EYE_G
    gaze = j(31, -0.3, 0.3)
    lab[g.ell(fx - eye_x, eye_y, eye_rx, eye_ry)] = R_EYE
    lab[g.ell(fx + eye_x, eye_y, eye_rx, eye_ry)] = L_EYE

    # brows: arched bands above the eyes
    brow_y = eye_y - j(32, 0.045, 0.06)
    brow_w, brow_t, arch = eye_rx * j(33, 1.2, 1.45), j(34, 0.009, 0.014), j(35, 0.008, 0.018)
    for sx, cls in ((-1.0, R_BROW), (1.0, L_BROW)):
        bx = fx + sx * eye_x
        t = (X - bx) / brow_w
        curve = brow_y - arch * (1.0 - t * t) + 0.006 * sx * t  # inner ends a bit lower
        lab[g.band(curve, brow_t * (1.0 - 0.4 * t * t), bx - brow_w, bx + brow_w)] = cls
    brow_top = brow_y - arch - brow_t - 1.5 * g.px

    # mouth and lips
    mouth_y = j(36, 0.165, 0.19) * (ry / 0.295)
    mouth_y = min(mouth_y, chin - 0.09)
    mouth_y = max(mouth_y, nose_bottom + 0.035)
    mrx = j(37, 0.075, 0.095) * (1.15 if attrs.mouth == 1 else 1.0)
    mx = X - fx
    t = np.clip(mx / mrx, -1.0, 1.0)
    teeth = np.zeros_like(frame)
    lip_t = max(j(38, 0.014, 0.02), 1.2 * g.px)
    if attrs.mouth == 0:  # closed
        line = mouth_y - 0.004 * (t * t)
        outer = g.ell(fx, mouth_y + 0.002, mrx, 2.0 * lip_t)
        interior = np.zeros_like(frame)
    elif attrs.mouth == 1:  # smiling: D-shaped opening, corners up, upper teeth
        iry = max(j(39, 0.018, 0.028), g.rmin + 0.2 * g.px)
        line = mouth_y - 0.45 * iry * t * t
        interior = g.ell(fx, mouth_y - 0.2 * iry, mrx * 0.82, iry * 1.2) & (Y >= line)
        outer = g.ell(fx, mouth_y + 0.2 * iry, mrx, iry * 1.1 + lip_t + g.px)
        outer &= Y >= line - lip_t - 0.5 * g.px
        teeth = interior & (Y < line + 0.6 * iry)
    else:  # open
        iry = max(j(39, 0.022, 0.032), g.rmin)
        line = np.full_like(Y, mouth_y)
        interior = g.ell(fx, mouth_y + 0.005, mrx * 0.6, iry)
        outer = g.ell(fx, mouth_y + 0.005, mrx * 0.85, iry + lip_t + g.px)
        teeth = interior & (Y < mouth_y + 0.005 - 0.6 * iry)
    lab[outer & (Y < line)] = U_LIP
    lab[outer & (Y >= line)] = L_LIP
    lab[interior] = MOUTH
    mouth_rx = mrx

    # --- hair in front of the face, hat, earrings -------------------------------------------------------------
    if attrs.hair_length >= 1:
        if attrs.bangs:
            style = int(u[45] * 3) % 3  # 0 straight fringe, 1/2 side-swept either way
            if style == 0:
                hairline = -0.4 * ry + 0.006 * np.sin(X * 160.0)
            else:
                hairline = -0.42 * ry + (0.09 if style == 1 else -0.09) * np.clip(X / rx, -1, 1)
            hairline = np.minimum(hairline, brow_top)
        else:
            hairline = -0.68 * ry + 0.32 * ry * (X / rx) ** 2
        front = cap & (Y < hairline)
        side_depth = (0.0, 0.0, 0.16, 0.24)[attrs.hair_length] + 0.04 * float(u[46])
        side_x = rx * (0.93 if attrs.hair_length == 1 else 0.80)
        if attrs.hair_length == 1:
            front |= cap & (np.abs(X) > side_x) & (Y < ear_y - 0.02)  # sideburns
        else:
            outside = (np.abs(X) > side_x) & (Y < side_depth) & ~face
            if u[47] < 0.5:  # ears stay visible
                outside &= ~ears
            front |= outside | (face & (np.abs(X) > side_x + 0.02) & (Y < side_depth * 0.5))
            front &= g.ell(0.0, head_cy, hx + 0.02, max(hy, side_depth + 0.1))
        lab[front] = HAIR
    if attrs.hat:
        brim_y = -0.6 * ry - j(40, 0.0, 0.02)
        lab[g.ell(0.0, brim_y - 0.04, hx * 1.04 + 0.01, 0.19) & (Y < brim_y)] = HAT
        if u[41] < 0.6:
            lab[g.ell(0.0, brim_y, hx * 1.3, j(42, 0.018, 0.028))] = HAT
    if attrs.earrings:
        er = j(43, 0.013, 0.02)
        drop = j(44, 1.0, 1.8)
        for sx in (-1.0, 1.0):
            lab[g.ell(sx * (ear_x + ear_rx * 0.3), ear_y + ear_ry + er * drop, er, er * drop)] = EAR_R

    return _Layout(grid=g, label=lab, rx=rx, ry=ry, chin=chin, fx=fx, eye_x=eye_x, eye_y=eye_y, eye_rx=eye_rx,
                   eye_ry=eye_ry, gaze=gaze, nose_y=nose_y, nose_bottom=nose_bottom, nose_rx=nose_rx,
                   mouth_y=mouth_y, mouth_rx=mouth_rx, teeth=teeth, frame=frame, face=face,
                   close_up=close_up)


# ----------------------------------------------------------------------------------------------------------------
# colours
# ----------------------------------------------------------------------------------------------------------------

_SKIN = np.array([(246, 224, 208), (236, 196, 164), (208, 154, 114), (172, 118, 80), (108, 72, 48)], np.float32)
_HAIR = np.array([(28, 24, 24), (104, 66, 38), (222, 186, 112), (170, 170, 172), (170, 72, 34)], np.float32)
_LIP = np.array([(0, 0, 0), (214, 96, 112), (168, 18, 42)], np.float32)  # lipstick 0 is derived from the skin
# beard (offset of its top edge below the nose bottom, rise of that edge towards the jaw, colour mix)
_BEARD = ((0.0, 0.0, 0.0), (0.008, 0.08, 0.35), (-0.008, 0.10, 0.65), (-0.02, 0.14, 0.88))
_GREY = (0.0, 0.0, 0.2, 0.45)  # greying by age level
_N_COLOUR_DRAWS = 48


def _smooth_noise(r: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Cheap value noise: a (cells+1)^2 grid bilinearly upsampled to (size, size), in about [-1, 1]."""
    n = r.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0.0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    rows = n[i] * (1 - f)[:, None] + n[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _colourise(attrs: Attributes, lay: _Layout, colour_seed: int) -> np.ndarray:
    """The RGB image: a function of the text attributes, the layout geometry and ``colour_seed``."""
    lab = lay.label
    size = lab.shape[0]
    g = lay.grid
    X, Y = g.X, g.Y
    r = np.random.default_rng(colour_seed)
    u = r.random(_N_COLOUR_DRAWS)
    noise = r.standard_normal((size, size, 3)).astype(np.float32)
    blotch = _smooth_noise(r, size, 6)
    streak = r.standard_normal(size).astype(np.float32)

    skin = _SKIN[attrs.skin] * (0.96 + 0.08 * u[0:3].astype(np.float32)).mean()
    hair = _HAIR[attrs.hair_color] * (0.9 + 0.2 * float(u[3]))
    grey = _GREY[attrs.age]
    hair = hair * (1 - grey) + np.float32(185) * grey
    brow = hair * 0.65 if attrs.hair_color != 2 else hair * 0.55
    if attrs.lipstick == 0:
        lip = skin * 0.78 + np.array((40, 0, 0), np.float32)
        lip = np.clip(lip * np.array((1.0, 0.82, 0.85), np.float32), 0, 255)
    else:
        lip = _LIP[attrs.lipstick] * (0.92 + 0.16 * float(u[4]))
    bg = 60 + 170 * u[5:8].astype(np.float32)
    cloth = 25 + 210 * u[8:11].astype(np.float32)
    hat = 20 + 200 * u[11:14].astype(np.float32)
    metal = np.array((225, 190, 80), np.float32) if u[14] < 0.5 else np.array((205, 205, 215), np.float32)
    frame_c = np.array((25, 25, 30), np.float32) if u[15] < 0.6 else np.array((120, 60, 30), np.float32) * (
        0.5 + float(u[16]))
    iris = np.array([(60, 40, 25), (70, 100, 150), (80, 110, 70), (30, 22, 18)], np.float32)[int(u[17] * 4) % 4]

    table = np.empty((19, 3), np.float32)
    table[BG] = bg
    table[SKIN] = skin
    table[NOSE] = skin * 0.95
    table[EYE_G] = skin * 0.93 + np.float32(8)
    table[L_EYE] = table[R_EYE] = (236, 234, 228)
    table[L_BROW] = table[R_BROW] = brow
    table[L_EAR] = table[R_EAR] = skin * 0.9
    table[MOUTH] = (70, 18, 24)
    table[U_LIP] = lip * 0.92
    table[L_LIP] = lip
    table[HAIR] = hair
    table[HAT] = hat
    table[EAR_R] = table[NECK_L] = metal
    table[NECK] = skin * 0.86
    table[CLOTH] = cloth
    img = table[lab]

    skinlike = (lab == SKIN) | (lab == NOSE) | (lab == EYE_G)

    # beard: hair-coloured texture over the lower face (labelled skin)
    if attrs.beard:
        drop, rise, mix = _BEARD[attrs.beard]
        side = np.clip(np.abs(X - lay.fx) / lay.rx - 0.45, 0.0, 1.0)
        region = (lab == SKIN) & lay.face & (Y > lay.nose_bottom + drop - rise * side)
        beard_c = hair * 0.7 + np.float32(5)
        lum_b, lum_s = float(beard_c.mean()), float(skin.mean())
        if lum_b > 0.55 * lum_s:  # a beard always reads darker than the skin under it
            beard_c = beard_c * np.float32(0.55 * lum_s / lum_b)
        m = np.float32(mix) * (0.75 + 0.5 * np.clip(0.5 + 0.5 * noise[..., 0], 0, 1))
        img[region] = img[region] * (1 - m[region, None]) + beard_c * m[region, None]

    # overrides: eyes (iris + pupil, looking slightly sideways), teeth, eyeglasses frame
    eyes = (lab == L_EYE) | (lab == R_EYE)
    for sx in (-1.0, 1.0):
        icx = lay.fx + sx * lay.eye_x + lay.gaze * lay.eye_rx * 0.4
        ir = max(lay.eye_ry * 1.05, g.rmin * 0.9)
        m = eyes & g.ell(icx, lay.eye_y, ir, ir)
        img[m] = iris
        img[m & g.ell(icx, lay.eye_y, ir * 0.45, ir * 0.45)] = (10, 10, 12)
    img[lay.teeth & (lab == MOUTH)] = (238, 234, 222)
    img[lay.frame & (lab == EYE_G)] = frame_c

    # one multiplicative gain map for all the shading and textures
    lx, ly = float(u[18] - 0.5) * 0.5, float(u[19] - 0.5) * 0.3
    rr = (X / (lay.rx * 1.1)) ** 2 + (Y / (lay.ry * 1.15)) ** 2
    shade = 1.06 - 0.16 * np.clip(rr, 0, 1.2) + lx * X / lay.rx  # face: darker rim, light from one side
    gain = np.where(skinlike, shade, np.float32(1.0))
    gain = np.where(lab == HAIR, 1.0 + 0.09 * streak[None, :] + 0.07 * blotch, gain)  # strands + blotches
    gain = np.where(lab == CLOTH, 1.0 + 0.08 * blotch, gain)  # folds
    gain = np.where(lab == BG, 1.0 + (float(u[21]) - 0.5) * 0.8 * Y, gain)  # background gradient
    gain = np.where((lab == NECK) & (Y < lay.chin + 0.05), np.float32(0.85), gain)  # shadow under the chin
    for sx in (-1.0, 1.0):  # nostrils
        m = (lab == NOSE) & g.ell(lay.fx + sx * lay.nose_rx * 0.55, lay.nose_bottom - 0.012, 0.011, 0.007)
        gain[m] *= 0.55

    # age: wrinkles (nasolabial folds from 30s, forehead lines from 40s, crow's feet from 50s)
    if attrs.age >= 1:
        wr = np.zeros_like(lab, dtype=bool)
        for sx in (-1.0, 1.0):
            x0 = lay.fx + sx * (lay.nose_rx * 1.4 + 0.012)
            t = (Y - lay.nose_bottom + 0.015) / 0.065
            curve_x = x0 + sx * 0.035 * t
            wr |= (np.abs(X - curve_x) <= max(0.006, 0.5 * g.px)) & (t >= 0) & (t <= 1)
        if attrs.age >= 2:
            for k in range(1 + (attrs.age >= 3)):
                yy = -0.55 * lay.ry - 0.03 * k - 0.01 * float(u[20 + k])
                wr |= g.band(yy + 0.25 * X * X, 0.005, -lay.rx * 0.55, lay.rx * 0.55)
        if attrs.age >= 3:
            for sx in (-1.0, 1.0):
                ex = lay.fx + sx * (lay.eye_x + lay.eye_rx * 1.5)
                for dy in (-0.012, 0.012):
                    wr |= g.band(lay.eye_y + dy * (1 + 10 * sx * (X - ex)), 0.004, ex - 0.018, ex + 0.018) & (
                        sx * (X - ex) > 0)
        wr &= lab == SKIN
        gain[wr] *= (1.0, 0.9, 0.84, 0.78)[attrs.age]
    gain *= 1.0 + ly * Y  # global light from above / below
    img *= gain[..., None]

    # soften edges a little (separable [a, 1-2a, a] blur, lighter at small sizes), global light, noise
    a = np.float32(min(0.25, 0.0025 * size))
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    img = (p[:-2] + p[2:]) * a + p[1:-1] * (1 - 2 * a)
    img = (img[:, :-2] + img[:, 2:]) * a + img[:, 1:-1] * (1 - 2 * a)
    img += noise * (2.0 + 2.0 * float(u[22]))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# public rendering API
# ----------------------------------------------------------------------------------------------------------------

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
    return _colourise(attrs, lay, colour_seed), lay.label


def render_with(attrs_text_from: Attributes, layout_from: Attributes, layout_seed: int, colour_seed: int,
                size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Render the text attributes of ``attrs_text_from`` on the mask attributes of ``layout_from``.

    For an edit of sample ``s`` (a :class:`Sample`), keep ``layout_seed=s.layout_seed`` and
    ``colour_seed=s.colour_seed``: changing a text attribute keeps the label map bit-identical, changing a mask
    attribute keeps the palette / textures / noise.
    """
    return render(attrs_text_from.combine(layout_from), size=size, layout_seed=layout_seed,
                  colour_seed=colour_seed)


# ----------------------------------------------------------------------------------------------------------------
# captions
# ----------------------------------------------------------------------------------------------------------------

# templates: ("vp", verb phrase after the subject) or ("cl", a full clause starting with the possessive)
_T = dict[str, tuple[tuple[tuple[str, str], ...], ...]]
_TEMPLATES: _T = {
    "hair_color": tuple(((("vp", "{has} %s hair" % c), ("cl", "{Poss} hair is %s" % c),
                          ("vp", "{has} %s hair on {poss} head" % c)))
                        for c in LEVELS["hair_color"]),
    "skin": tuple(((("vp", "{has} %s skin" % s), ("cl", "{Poss} skin is %s" % s))) for s in LEVELS["skin"]),
    "beard": (
        (("vp", "{has} no beard"), ("vp", "{is} clean-shaven"), ("vp", "{doesnt} have any beard")),
        (("vp", "{has} short stubble"), ("cl", "{Poss} face is covered with short stubble"),
         ("vp", "{has} a bit of stubble on {poss} face")),
        (("vp", "{has} a beard of medium length"), ("cl", "{Poss} beard is of medium length"),
         ("vp", "{has} beard of medium length")),
        (("vp", "{has} a long beard"), ("cl", "{Poss} face is covered with a long beard"),
         ("cl", "{Poss} beard is long")),
    ),
    "age": (
        (("vp", "{is} in {poss} twenties"), ("vp", "{is} a young adult in {poss} twenties")),
        (("vp", "{is} in {poss} thirties"),),
        (("vp", "{is} in {poss} forties"), ("vp", "{is} middle-aged, in {poss} forties")),
        (("vp", "{is} in {poss} fifties"), ("vp", "{is} in {poss} fifties or older")),
    ),
    "lipstick": (
        (("vp", "{wears} no lipstick"), ("vp", "{doesnt} wear any lipstick")),
        (("vp", "{wears} light lipstick"), ("vp", "{wears} a little lipstick"),
         ("cl", "{Poss} lips have light lipstick on")),
        (("vp", "{wears} heavy lipstick"), ("vp", "{wears} a lot of lipstick"),
         ("cl", "{Poss} lips are covered in heavy lipstick")),
    ),
    "hair_length": (
        (("vp", "{is} bald"),),
        (("vp", "{has} short hair"),),
        (("vp", "{has} medium-length hair"),),
        (("vp", "{has} long hair"),),
    ),
    "bangs": ((("vp", "{has} no bangs"),), (("vp", "{has} bangs"),)),
    "eyeglasses": ((("vp", "{doesnt} wear any eyeglasses"),), (("vp", "{wears} eyeglasses"),)),
    "hat": ((("vp", "{wears} no hat"),), (("vp", "{wears} a hat"),)),
    "mouth": ((("vp", "{is} not smiling"),), (("vp", "{is} smiling"),),
              (("vp", "{has} {poss} mouth open"), ("cl", "{Poss} mouth is open"))),
    "face_shape": tuple(((("vp", "{has} a %s face" % s),)) for s in LEVELS["face_shape"]),
    "earrings": ((("vp", "{wears} no earrings"),), (("vp", "{wears} earrings"),)),
    "necklace": ((("vp", "{wears} no necklace"),), (("vp", "{wears} a necklace"),)),
}

_PRONOUNS = (  # subject, possessive, noun, plural verbs
    ("he", "his", "man", False),
    ("she", "her", "woman", False),
    ("they", "their", "person", True),
)


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def make_caption(attrs: Attributes, rng: np.random.Generator | int | None = None) -> tuple[str, tuple[str, ...]]:
    """A CelebA-Dialog-style caption stating 2-4 text attributes (and sometimes one mask attribute).

    Returns ``(caption, stated)``, ``stated`` being the attribute names the caption mentions (``"gender"`` when it
    says man/woman or he/she).
    """
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    subj, poss, noun, plural = _PRONOUNS[attrs.gender]
    sing = {"has": "has", "is": "is", "wears": "wears", "doesnt": "doesn't", "poss": poss, "Poss": _cap(poss)}
    plur = dict(sing, has="have", is_="are", wears="wear", doesnt="don't")
    plur["is"] = plur.pop("is_")
    pron_words = plur if plural else sing  # "They have ..." but "This person has ..."

    cands = ["skin", "age"]
    if attrs.hair_length != 0:
        cands.append("hair_color")
    if attrs.gender != 1 or attrs.beard:
        cands.append("beard")
    if attrs.gender != 0 or attrs.lipstick:
        cands.append("lipstick")
    k = int(rng.integers(2, min(4, len(cands)) + 1))
    chosen = [cands[i] for i in rng.permutation(len(cands))[:k]]
    if rng.random() < 0.35:
        m = MASK_ATTRS[int(rng.integers(len(MASK_ATTRS)))]
        if m == "bangs" and attrs.hair_length == 0:
            m = "hair_length"
        chosen.insert(int(rng.integers(len(chosen) + 1)), m)

    phrases = []
    for name in chosen:
        opts = _TEMPLATES[name][getattr(attrs, name)]
        phrases.append(opts[int(rng.integers(len(opts)))])
    # the first sentence needs a verb phrase after the subject
    first_vp = next(i for i, (kind, _) in enumerate(phrases) if kind == "vp") if any(
        kind == "vp" for kind, _ in phrases) else None
    if first_vp is None:
        name = chosen[0]
        opts = [o for o in _TEMPLATES[name][getattr(attrs, name)] if o[0] == "vp"]
        phrases[0] = opts[0]
        first_vp = 0
    phrases.insert(0, phrases.pop(first_vp))

    if attrs.gender == 2:
        subject = ("This person", "The person")[int(rng.integers(2))]
    else:
        subject = ("This %s", "The %s", "This %s")[int(rng.integers(3))] % noun
    sentences = []
    i = 0
    while i < len(phrases):
        kind, text = phrases[i]
        if kind == "cl":
            sentences.append(text.format_map(sing))
            i += 1
            continue
        who, words = (subject, sing) if i == 0 else (_cap(subj), pron_words)
        s = who + " " + text.format_map(words)
        if i + 1 < len(phrases) and phrases[i + 1][0] == "vp" and rng.random() < 0.5:
            s += " and " + phrases[i + 1][1].format_map(words)
            i += 1
        sentences.append(s)
        i += 1
    caption = " ".join(_cap(s) + "." for s in sentences)
    stated = tuple(chosen) + (("gender",) if attrs.gender != 2 else ())
    return caption, stated


# ----------------------------------------------------------------------------------------------------------------
# samples, batches, dataset
# ----------------------------------------------------------------------------------------------------------------

def generate(seed: int | Sequence[int], size: int = 64) -> Sample:
    """One sample, fully determined by ``seed`` (an int or a tuple of ints, e.g. ``(dataset_seed, index)``)."""
    ss = np.random.SeedSequence(seed)
    s_attr, s_layout, s_colour, s_caption = ss.spawn(4)
    attrs = sample_attributes(np.random.default_rng(s_attr))
    layout_seed = int(s_layout.generate_state(1, np.uint64)[0] >> np.uint64(1))
    colour_seed = int(s_colour.generate_state(1, np.uint64)[0] >> np.uint64(1))
    image, label = render(attrs, size=size, layout_seed=layout_seed, colour_seed=colour_seed)
    caption, stated = make_caption(attrs, np.random.default_rng(s_caption))
    return Sample(image=image, label=label, caption=caption, attrs=attrs, stated=stated, layout_seed=layout_seed,
                  colour_seed=colour_seed)


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
