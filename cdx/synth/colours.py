"""The RGB image: a function of the text attributes, the layout geometry and the colour seed only.

The colour stream draws 48 uniform values (each part reads its own by name, `COLOUR_SLOTS`), then the
pixel noise, the smooth blotch noise and the hair streaks, whatever the attributes; so two faces that
differ in a mask attribute only keep the same palette, textures and noise.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .attributes import Attributes
from .geometry import Draws
from .layout import (BG, CLOTH, EAR_R, EYE_G, HAIR, HAT, L_BROW, L_EAR, L_EYE, L_LIP, MOUTH, NECK, NECK_L, NOSE,
                     R_BROW, R_EAR, R_EYE, SKIN, U_LIP, Layout)

N_COLOUR_DRAWS = 48
COLOUR_SLOTS = {  # name -> slot (or (start, count)) of the colour stream (the slots the generator always used)
    "skin.shade": (0, 3), "hair.shade": 3, "lipstick.shade": 4, "background.rgb": (5, 3), "cloth.rgb": (8, 3),
    "hat.rgb": (11, 3), "metal.gold": 14, "glasses.dark": 15, "glasses.tint": 16, "eyes.iris": 17,
    "light.x": 18, "light.y": 19, "wrinkles.forehead0": 20,
    # one draw sets both (it always has): the second forehead line's height and the background's gradient
    "wrinkles.forehead1": 21, "background.gradient": 21,
    "noise.amount": 22,
}

_SKIN = np.array([(246, 224, 208), (236, 196, 164), (208, 154, 114), (172, 118, 80), (108, 72, 48)], np.float32)
_HAIR = np.array([(28, 24, 24), (104, 66, 38), (222, 186, 112), (170, 170, 172), (170, 72, 34)], np.float32)
_LIP = np.array([(0, 0, 0), (214, 96, 112), (168, 18, 42)], np.float32)  # lipstick 0 is derived from the skin
# beard (offset of its top edge below the nose bottom, rise of that edge towards the jaw, colour mix)
_BEARD = ((0.0, 0.0, 0.0), (0.008, 0.08, 0.35), (-0.008, 0.10, 0.65), (-0.02, 0.14, 0.88))
_GREY = (0.0, 0.0, 0.2, 0.45)  # greying by age level


def _smooth_noise(r: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Cheap value noise: a (cells+1)^2 grid bilinearly upsampled to (size, size), in about [-1, 1]."""
    n = r.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0.0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    rows = n[i] * (1 - f)[:, None] + n[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


class _Palette(NamedTuple):
    """The colours of one face: the parts', the iris' and the eyeglasses frame's."""
    skin: np.ndarray
    hair: np.ndarray
    brow: np.ndarray
    lip: np.ndarray
    bg: np.ndarray
    cloth: np.ndarray
    hat: np.ndarray
    metal: np.ndarray
    frame: np.ndarray
    iris: np.ndarray


def _palette(attrs: Attributes, d: Draws) -> _Palette:
    """The face's colours from the text attributes and the colour draws."""
    skin = _SKIN[attrs.skin] * (0.96 + 0.08 * d.vec("skin.shade").astype(np.float32)).mean()
    hair = _HAIR[attrs.hair_color] * (0.9 + 0.2 * d.u01("hair.shade"))
    grey = _GREY[attrs.age]
    hair = hair * (1 - grey) + np.float32(185) * grey
    brow = hair * 0.65 if attrs.hair_color != 2 else hair * 0.55
    if attrs.lipstick == 0:
        lip = skin * 0.78 + np.array((40, 0, 0), np.float32)
        lip = np.clip(lip * np.array((1.0, 0.82, 0.85), np.float32), 0, 255)
    else:
        lip = _LIP[attrs.lipstick] * (0.92 + 0.16 * d.u01("lipstick.shade"))
    bg = 60 + 170 * d.vec("background.rgb").astype(np.float32)
    cloth = 25 + 210 * d.vec("cloth.rgb").astype(np.float32)
    hat = 20 + 200 * d.vec("hat.rgb").astype(np.float32)
    gold = d.u01("metal.gold") < 0.5
    metal = np.array((225, 190, 80), np.float32) if gold else np.array((205, 205, 215), np.float32)
    dark = d.u01("glasses.dark") < 0.6
    frame_c = np.array((25, 25, 30), np.float32) if dark else np.array((120, 60, 30), np.float32) * (
        0.5 + d.u01("glasses.tint"))
    irises = np.array([(60, 40, 25), (70, 100, 150), (80, 110, 70), (30, 22, 18)], np.float32)
    iris = irises[int(d.u01("eyes.iris") * 4) % 4]
    return _Palette(skin, hair, brow, lip, bg, cloth, hat, metal, frame_c, iris)


def _class_colours(pal: _Palette) -> np.ndarray:
    """The flat colour of each of the 19 classes, (19, 3) float32."""
    skin, lip = pal.skin, pal.lip
    table = np.empty((19, 3), np.float32)
    table[BG] = pal.bg
    table[SKIN] = skin
    table[NOSE] = skin * 0.95
    table[EYE_G] = skin * 0.93 + np.float32(8)
    table[L_EYE] = table[R_EYE] = (236, 234, 228)
    table[L_BROW] = table[R_BROW] = pal.brow
    table[L_EAR] = table[R_EAR] = skin * 0.9
    table[MOUTH] = (70, 18, 24)
    table[U_LIP] = lip * 0.92
    table[L_LIP] = lip
    table[HAIR] = pal.hair
    table[HAT] = pal.hat
    table[EAR_R] = table[NECK_L] = pal.metal
    table[NECK] = skin * 0.86
    table[CLOTH] = pal.cloth
    return table


def _paint_beard(img: np.ndarray, beard: int, lay: Layout, pal: _Palette, noise: np.ndarray) -> None:
    """Paint a hair-coloured texture over the lower face (labelled skin), in place."""
    lab, X, Y = lay.label, lay.grid.X, lay.grid.Y
    drop, rise, mix = _BEARD[beard]
    side = np.clip(np.abs(X - lay.fx) / lay.rx - 0.45, 0.0, 1.0)
    region = (lab == SKIN) & lay.face & (Y > lay.nose_bottom + drop - rise * side)
    beard_c = pal.hair * 0.7 + np.float32(5)
    lum_b, lum_s = float(beard_c.mean()), float(pal.skin.mean())
    if lum_b > 0.55 * lum_s:  # a beard always reads darker than the skin under it
        beard_c = beard_c * np.float32(0.55 * lum_s / lum_b)
    m = np.float32(mix) * (0.75 + 0.5 * np.clip(0.5 + 0.5 * noise[..., 0], 0, 1))
    img[region] = img[region] * (1 - m[region, None]) + beard_c * m[region, None]


def _paint_details(img: np.ndarray, lay: Layout, pal: _Palette) -> None:
    """Paint the irises and pupils (looking slightly sideways), the teeth and the eyeglasses frame, in place."""
    lab, g = lay.label, lay.grid
    eyes = (lab == L_EYE) | (lab == R_EYE)
    for sx in (-1.0, 1.0):
        icx = lay.fx + sx * lay.eye_x + lay.gaze * lay.eye_rx * 0.4
        ir = max(lay.eye_ry * 1.05, g.rmin * 0.9)
        m = eyes & g.ell(icx, lay.eye_y, ir, ir)
        img[m] = pal.iris
        img[m & g.ell(icx, lay.eye_y, ir * 0.45, ir * 0.45)] = (10, 10, 12)
    img[lay.teeth & (lab == MOUTH)] = (238, 234, 222)
    img[lay.frame & (lab == EYE_G)] = pal.frame


def _wrinkles(age: int, lay: Layout, d: Draws) -> np.ndarray:
    """The wrinkle pixels of age level `age` >= 1 (nasolabial folds, forehead lines from 2, crow's feet from 3)."""
    lab, g = lay.label, lay.grid
    X, Y = g.X, g.Y
    wr = np.zeros_like(lab, dtype=bool)
    for sx in (-1.0, 1.0):
        x0 = lay.fx + sx * (lay.nose_rx * 1.4 + 0.012)
        t = (Y - lay.nose_bottom + 0.015) / 0.065
        curve_x = x0 + sx * 0.035 * t
        wr |= (np.abs(X - curve_x) <= max(0.006, 0.5 * g.px)) & (t >= 0) & (t <= 1)
    if age >= 2:
        for k in range(1 + (age >= 3)):
            yy = -0.55 * lay.ry - 0.03 * k - 0.01 * d.u01(f"wrinkles.forehead{k}")
            wr |= g.band(yy + 0.25 * X * X, 0.005, -lay.rx * 0.55, lay.rx * 0.55)
    if age >= 3:
        for sx in (-1.0, 1.0):
            ex = lay.fx + sx * (lay.eye_x + lay.eye_rx * 1.5)
            for dy in (-0.012, 0.012):
                wr |= g.band(lay.eye_y + dy * (1 + 10 * sx * (X - ex)), 0.004, ex - 0.018, ex + 0.018) & (
                    sx * (X - ex) > 0)
    wr &= lab == SKIN
    return wr


def _gain(attrs: Attributes, lay: Layout, d: Draws, blotch: np.ndarray, streak: np.ndarray) -> np.ndarray:
    """One multiplicative gain map for all the shading and textures, (size, size)."""
    lab, g = lay.label, lay.grid
    X, Y = g.X, g.Y
    skinlike = (lab == SKIN) | (lab == NOSE) | (lab == EYE_G)
    lx, ly = (d.u01("light.x") - 0.5) * 0.5, (d.u01("light.y") - 0.5) * 0.3
    rr = (X / (lay.rx * 1.1)) ** 2 + (Y / (lay.ry * 1.15)) ** 2
    shade = 1.06 - 0.16 * np.clip(rr, 0, 1.2) + lx * X / lay.rx  # face: darker rim, light from one side
    gain = np.where(skinlike, shade, np.float32(1.0))
    gain = np.where(lab == HAIR, 1.0 + 0.09 * streak[None, :] + 0.07 * blotch, gain)  # strands + blotches
    gain = np.where(lab == CLOTH, 1.0 + 0.08 * blotch, gain)  # folds
    gain = np.where(lab == BG, 1.0 + (d.u01("background.gradient") - 0.5) * 0.8 * Y, gain)  # background gradient
    gain = np.where((lab == NECK) & (Y < lay.chin + 0.05), np.float32(0.85), gain)  # shadow under the chin
    for sx in (-1.0, 1.0):  # nostrils
        m = (lab == NOSE) & g.ell(lay.fx + sx * lay.nose_rx * 0.55, lay.nose_bottom - 0.012, 0.011, 0.007)
        gain[m] *= 0.55
    if attrs.age >= 1:  # age: wrinkles
        gain[_wrinkles(attrs.age, lay, d)] *= (1.0, 0.9, 0.84, 0.78)[attrs.age]
    gain *= 1.0 + ly * Y  # global light from above / below
    return gain


def _soften(img: np.ndarray, size: int) -> np.ndarray:
    """Soften edges a little: a separable [a, 1-2a, a] blur, lighter at small sizes."""
    a = np.float32(min(0.25, 0.0025 * size))
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    img = (p[:-2] + p[2:]) * a + p[1:-1] * (1 - 2 * a)
    return (img[:, :-2] + img[:, 2:]) * a + img[:, 1:-1] * (1 - 2 * a)


def colourise(attrs: Attributes, lay: Layout, colour_seed: int) -> np.ndarray:
    """The RGB image: a function of the text attributes, the layout geometry and ``colour_seed``."""
    lab = lay.label
    size = lab.shape[0]
    r = np.random.default_rng(colour_seed)
    d = Draws(r, COLOUR_SLOTS, N_COLOUR_DRAWS)
    noise = r.standard_normal((size, size, 3)).astype(np.float32)
    blotch = _smooth_noise(r, size, 6)
    streak = r.standard_normal(size).astype(np.float32)

    pal = _palette(attrs, d)
    img = _class_colours(pal)[lab]
    if attrs.beard:
        _paint_beard(img, attrs.beard, lay, pal, noise)
    _paint_details(img, lay, pal)
    img *= _gain(attrs, lay, d, blotch, streak)[..., None]
    img = _soften(img, size)
    img += noise * (2.0 + 2.0 * d.u01("noise.amount"))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
