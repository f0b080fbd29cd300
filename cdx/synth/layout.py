"""The label map and the face geometry: a function of the mask attributes and the layout seed only.

The layout is drawn part by part, back to front (framing, body, ears, face, nose, eyes, brows, mouth,
front hair, hat, earrings); each part reads its random values by name (`LAYOUT_SLOTS`) from one
stream of 64 uniform draws, so that an attribute that removes a part (no eyeglasses) leaves every
other part's geometry unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .attributes import Attributes
from .geometry import Draws, Grid

# CelebAMask-HQ class ids ("l_" parts are the person's left, i.e. the right half of the image)
(BG, SKIN, NOSE, EYE_G, L_EYE, R_EYE, L_BROW, R_BROW, L_EAR, R_EAR, MOUTH, U_LIP, L_LIP, HAIR, HAT, EAR_R,
 NECK_L, NECK, CLOTH) = range(19)

N_LAYOUT_DRAWS = 64
LAYOUT_SLOTS = {  # name -> slot of the layout stream (the slots the generator always used)
    "frame.cx": 0, "frame.cy": 1, "frame.scale": 2, "frame.roll": 3,
    "frame.close_up": 48, "frame.close_up_scale": 49, "frame.close_up_cy": 50,
    "face.rx": 4, "face.ry": 5, "face.yaw": 6,
    "hair.volume": 7, "hair.medium_length": 9, "hair.width": 10, "hair.long_length": 11, "hair.front_gap": 16,
    "hair.bangs_style": 45, "hair.side_depth": 46, "hair.ears_visible": 47,
    "neck.width": 8, "necklace.y": 12, "necklace.thickness": 13, "shoulders.y": 14, "cloth.dip": 15,
    "ears.y": 17, "ears.rx": 18, "ears.ry": 19,
    "nose.y": 20, "nose.h": 21, "nose.rx": 22,
    "eyes.x": 23, "eyes.y": 24, "eyes.rx": 25, "eyes.ry": 26, "eyes.gaze": 31,
    "glasses.rx": 27, "glasses.ry": 28, "glasses.shape": 29, "glasses.thickness": 30,
    "brows.y": 32, "brows.w": 33, "brows.t": 34, "brows.arch": 35,
    "mouth.y": 36, "mouth.rx": 37, "mouth.lip": 38, "mouth.open": 39,
    "hat.brim_y": 40, "hat.has_brim": 41, "hat.brim": 42,
    "earrings.r": 43, "earrings.drop": 44,
}

CLOSE_UP = 0.5  # share of faces framed close up, as the real masks are (the rest: head and shoulders)

_FACE_SHAPES = (  # (half width, half height, jaw taper)
    (0.215, 0.295, 0.20),  # oval
    (0.245, 0.272, 0.08),  # round
    (0.195, 0.325, 0.16),  # long
)


@dataclass
class Layout:
    grid: Grid
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


class _Canvas:
    """What the parts share while the layout is drawn: the grid, the label map and the geometry so far."""

    def __init__(self, attrs: Attributes, d: Draws, g: Grid, size: int):
        self.a, self.d, self.g = attrs, d, g
        self.X, self.Y = g.X, g.Y
        self.lab = np.zeros((size, size), dtype=np.uint8)


def render_layout(attrs: Attributes, layout_seed: int, size: int = 64) -> Layout:
    """The label map and geometry: a function of the mask attributes and ``layout_seed`` only."""
    if size < 32:
        raise ValueError(f"size must be >= 32, got {size}")
    d = Draws(np.random.default_rng(layout_seed), LAYOUT_SLOTS, N_LAYOUT_DRAWS)
    c = _frame(attrs, d, size)
    for part in (_body, _ears, _face, _nose, _eyes, _brows, _mouth, _front_hair, _hat, _earrings):
        part(c)
    return Layout(grid=c.g, label=c.lab, rx=c.rx, ry=c.ry, chin=c.chin, fx=c.fx, eye_x=c.eye_x, eye_y=c.eye_y,
                  eye_rx=c.eye_rx, eye_ry=c.eye_ry, gaze=c.gaze, nose_y=c.nose_y, nose_bottom=c.nose_bottom,
                  nose_rx=c.nose_rx, mouth_y=c.mouth_y, mouth_rx=c.mouth_rx, teeth=c.teeth, frame=c.frame,
                  face=c.face, close_up=c.close_up)


def _frame(a: Attributes, d: Draws, size: int) -> _Canvas:
    """Face size and framing: close up (as CelebAMask-HQ frames faces) or head and shoulders."""
    rx0, ry0, taper = _FACE_SHAPES[a.face_shape]
    rx, ry = rx0 * d.between("face.rx", 0.96, 1.04), ry0 * d.between("face.ry", 0.97, 1.03)
    chin = ry
    close_up = d.u01("frame.close_up") < CLOSE_UP
    if close_up:  # the face fills the picture, the shoulders leave it
        cy, scale = d.between("frame.close_up_cy", 0.50, 0.56), d.between("frame.close_up_scale", 1.3, 1.6)
        scale = min(scale, (0.97 - cy) / (chin + (0.065 if a.necklace else 0.0)))  # chin (necklace) inside
    else:  # head and shoulders
        cy, scale = d.between("frame.cy", 0.45, 0.49), d.between("frame.scale", 1.05, 1.2)
        scale = min(scale, (0.9 - cy) / (chin + 0.075))  # chin and shoulders stay inside the picture
    g = Grid(size, cx=d.between("frame.cx", 0.47, 0.53), cy=cy, scale=scale, roll=d.between("frame.roll", -0.10, 0.10))
    c = _Canvas(a, d, g, size)
    c.rx, c.ry, c.taper, c.chin, c.cy, c.scale, c.close_up = rx, ry, taper, chin, cy, scale, close_up
    c.fx = d.between("face.yaw", -0.02, 0.02)
    vol = d.between("hair.volume", 0.0, 0.035)
    c.hx, c.hy = rx * 1.06 + 0.012 + vol, ry + 0.035 + vol  # head cap half axes
    c.head_cy = -0.035
    return c


def _body(c: _Canvas) -> None:
    """Hair behind the head, neck, necklace, cloth, long hair over the shoulders."""
    a, d, g, X, Y, lab = c.a, c.d, c.g, c.X, c.Y, c.lab
    c.neck_w = neck_w = c.rx * d.between("neck.width", 0.40, 0.48)
    c.cap = cap = g.ell(0.0, c.head_cy, c.hx, c.hy)
    below = Y >= c.head_cy
    if a.hair_length == 2:
        lab[cap | (g.ell(0.0, c.head_cy, c.hx + d.between("hair.width", 0.01, 0.03),
                         c.ry + d.between("hair.medium_length", 0.12, 0.2)) & below)] = HAIR
    elif a.hair_length == 3:
        lab[cap | (g.ell(0.0, c.head_cy, c.hx + d.between("hair.width", 0.03, 0.07),
                         d.between("hair.long_length", 0.6, 0.75)) & below)] = HAIR
    chin = c.chin
    neck = (np.abs(X) <= neck_w + 0.35 * np.maximum(Y - chin - 0.03, 0.0)) & (Y >= 0.0)
    lab[neck] = NECK
    necklace_y = chin + d.between("necklace.y", 0.03, 0.05)
    sh_y = max(chin + d.between("shoulders.y", 0.06, 0.1), necklace_y + 0.035)
    if not c.close_up:
        sh_y = min(sh_y, (0.88 - c.cy) / c.scale)  # keep the shoulders inside the picture
    if a.necklace:
        curve = min(necklace_y, sh_y - 0.025) + 2.5 * X * X
        lab[g.band(curve, d.between("necklace.thickness", 0.008, 0.013), -neck_w - 0.02, neck_w + 0.02) & neck] = NECK_L
    dip = d.between("cloth.dip", 0.0, 0.07)
    cloth_top = sh_y + 0.25 * np.maximum(np.abs(X) - 0.12, 0.0) + dip * np.maximum(1.0 - np.abs(X) / 0.13, 0.0)
    lab[Y >= cloth_top] = CLOTH
    if a.hair_length == 3:  # long hair falls in front of the shoulders
        over = g.ell(0.0, c.head_cy, c.hx + d.between("hair.width", 0.03, 0.07),
                     d.between("hair.long_length", 0.6, 0.75)) & (Y > chin)
        lab[over & (np.abs(X) > neck_w + d.between("hair.front_gap", 0.02, 0.06))] = HAIR


def _ears(c: _Canvas) -> None:
    """Ears behind the face (and the skin of a bald head)."""
    d, g = c.d, c.g
    if c.a.hair_length == 0:
        c.lab[g.ell(0.0, c.head_cy, c.rx * 1.02, c.ry + 0.03)] = SKIN
    c.ear_y, c.ear_rx, c.ear_ry = (d.between("ears.y", 0.0, 0.03), d.between("ears.rx", 0.04, 0.05),
                                   d.between("ears.ry", 0.065, 0.08))
    c.ear_x = c.rx * 1.0
    r_ear, l_ear = g.ell(-c.ear_x, c.ear_y, c.ear_rx, c.ear_ry), g.ell(c.ear_x, c.ear_y, c.ear_rx, c.ear_ry)
    c.lab[r_ear] = R_EAR  # person's right = image left
    c.lab[l_ear] = L_EAR
    c.ears = r_ear | l_ear


def _face(c: _Canvas) -> None:
    c.face = c.g.tapered(0.0, 0.0, c.rx, c.ry, c.taper)
    c.lab[c.face] = SKIN


def _nose(c: _Canvas) -> None:
    d = c.d
    c.nose_y, nose_h, c.nose_rx = d.between("nose.y", 0.045, 0.065), d.between("nose.h", 0.055, 0.07), \
        d.between("nose.rx", 0.03, 0.042)
    c.lab[c.g.tapered(c.fx, c.nose_y, c.nose_rx, nose_h, -0.9)] = NOSE
    c.nose_bottom = c.nose_y + nose_h


def _eyes(c: _Canvas) -> None:
    """Eyes, with the eyeglasses (lenses, bridge, temples) underneath them."""
    d, g, X, Y, lab, fx = c.d, c.g, c.X, c.Y, c.lab, c.fx
    c.eye_x, c.eye_y = eye_x, eye_y = c.rx * d.between("eyes.x", 0.40, 0.46), d.between("eyes.y", -0.045, -0.02)
    c.eye_rx, c.eye_ry = eye_rx, eye_ry = d.between("eyes.rx", 0.04, 0.05), d.between("eyes.ry", 0.019, 0.026)
    c.frame = frame = np.zeros_like(lab, dtype=bool)
    if c.a.eyeglasses:
        lrx, lry = eye_rx + d.between("glasses.rx", 0.025, 0.04), eye_ry + d.between("glasses.ry", 0.028, 0.04)
        p = 2.0 if d.u01("glasses.shape") < 0.5 else 4.0
        th = max(d.between("glasses.thickness", 0.008, 0.013), 0.6 * g.px)
        glass = np.zeros_like(frame)
        for sx in (-1.0, 1.0):
            cxl = fx + sx * eye_x
            outer = g.ell(cxl, eye_y + 0.005, lrx, lry, p)
            inner = g.ell(cxl, eye_y + 0.005, lrx - th, lry - th, p)
            glass |= outer
            frame |= outer & ~inner
        gap = eye_x - lrx
        bridge = g.band(np.full_like(Y, eye_y - 0.005), th * 0.7, fx - gap - th, fx + gap + th)
        temples = g.band(np.full_like(Y, eye_y - lry * 0.5), th * 0.6, -c.rx * 1.03, c.rx * 1.03) & (
            np.abs(X - fx) >= eye_x + lrx - th)
        frame |= bridge | temples
        glass |= bridge | temples
        lab[glass] = EYE_G
    c.gaze = d.between("eyes.gaze", -0.3, 0.3)
    lab[g.ell(fx - eye_x, eye_y, eye_rx, eye_ry)] = R_EYE
    lab[g.ell(fx + eye_x, eye_y, eye_rx, eye_ry)] = L_EYE


def _brows(c: _Canvas) -> None:
    """Arched bands above the eyes, the inner ends a bit lower."""
    d, g, X = c.d, c.g, c.X
    brow_y = c.eye_y - d.between("brows.y", 0.045, 0.06)
    brow_w, brow_t, arch = (c.eye_rx * d.between("brows.w", 1.2, 1.45), d.between("brows.t", 0.009, 0.014),
                            d.between("brows.arch", 0.008, 0.018))
    for sx, cls in ((-1.0, R_BROW), (1.0, L_BROW)):
        bx = c.fx + sx * c.eye_x
        t = (X - bx) / brow_w
        curve = brow_y - arch * (1.0 - t * t) + 0.006 * sx * t
        c.lab[g.band(curve, brow_t * (1.0 - 0.4 * t * t), bx - brow_w, bx + brow_w)] = cls
    c.brow_top = brow_y - arch - brow_t - 1.5 * g.px


def _mouth(c: _Canvas) -> None:
    """Lips and mouth: closed, smiling (D-shaped opening, corners up, upper teeth) or open."""
    a, d, g, X, Y, fx = c.a, c.d, c.g, c.X, c.Y, c.fx
    mouth_y = d.between("mouth.y", 0.165, 0.19) * (c.ry / 0.295)
    mouth_y = min(mouth_y, c.chin - 0.09)
    mouth_y = max(mouth_y, c.nose_bottom + 0.035)
    mrx = d.between("mouth.rx", 0.075, 0.095) * (1.15 if a.mouth == 1 else 1.0)
    t = np.clip((X - fx) / mrx, -1.0, 1.0)
    teeth = np.zeros_like(c.frame)
    lip_t = max(d.between("mouth.lip", 0.014, 0.02), 1.2 * g.px)
    if a.mouth == 0:  # closed
        line = mouth_y - 0.004 * (t * t)
        outer = g.ell(fx, mouth_y + 0.002, mrx, 2.0 * lip_t)
        interior = np.zeros_like(c.frame)
    elif a.mouth == 1:  # smiling
        iry = max(d.between("mouth.open", 0.018, 0.028), g.rmin + 0.2 * g.px)
        line = mouth_y - 0.45 * iry * t * t
        interior = g.ell(fx, mouth_y - 0.2 * iry, mrx * 0.82, iry * 1.2) & (Y >= line)
        outer = g.ell(fx, mouth_y + 0.2 * iry, mrx, iry * 1.1 + lip_t + g.px)
        outer &= Y >= line - lip_t - 0.5 * g.px
        teeth = interior & (Y < line + 0.6 * iry)
    else:  # open
        iry = max(d.between("mouth.open", 0.022, 0.032), g.rmin)
        line = np.full_like(Y, mouth_y)
        interior = g.ell(fx, mouth_y + 0.005, mrx * 0.6, iry)
        outer = g.ell(fx, mouth_y + 0.005, mrx * 0.85, iry + lip_t + g.px)
        teeth = interior & (Y < mouth_y + 0.005 - 0.6 * iry)
    c.lab[outer & (Y < line)] = U_LIP
    c.lab[outer & (Y >= line)] = L_LIP
    c.lab[interior] = MOUTH
    c.mouth_y, c.mouth_rx, c.teeth = mouth_y, mrx, teeth


def _front_hair(c: _Canvas) -> None:
    """Hair in front of the face: the hairline or bangs, sideburns, the sides of longer hair."""
    a, d, g, X, Y, rx, ry = c.a, c.d, c.g, c.X, c.Y, c.rx, c.ry
    if a.hair_length < 1:
        return
    if a.bangs:
        style = int(d.u01("hair.bangs_style") * 3) % 3  # 0 straight fringe, 1/2 side-swept either way
        if style == 0:
            hairline = -0.4 * ry + 0.006 * np.sin(X * 160.0)
        else:
            hairline = -0.42 * ry + (0.09 if style == 1 else -0.09) * np.clip(X / rx, -1, 1)
        hairline = np.minimum(hairline, c.brow_top)
    else:
        hairline = -0.68 * ry + 0.32 * ry * (X / rx) ** 2
    front = c.cap & (Y < hairline)
    side_depth = (0.0, 0.0, 0.16, 0.24)[a.hair_length] + 0.04 * d.u01("hair.side_depth")
    side_x = rx * (0.93 if a.hair_length == 1 else 0.80)
    if a.hair_length == 1:
        front |= c.cap & (np.abs(X) > side_x) & (Y < c.ear_y - 0.02)  # sideburns
    else:
        outside = (np.abs(X) > side_x) & (Y < side_depth) & ~c.face
        if d.u01("hair.ears_visible") < 0.5:
            outside &= ~c.ears
        front |= outside | (c.face & (np.abs(X) > side_x + 0.02) & (Y < side_depth * 0.5))
        front &= g.ell(0.0, c.head_cy, c.hx + 0.02, max(c.hy, side_depth + 0.1))
    c.lab[front] = HAIR


def _hat(c: _Canvas) -> None:
    d, g = c.d, c.g
    if not c.a.hat:
        return
    brim_y = -0.6 * c.ry - d.between("hat.brim_y", 0.0, 0.02)
    c.lab[g.ell(0.0, brim_y - 0.04, c.hx * 1.04 + 0.01, 0.19) & (c.Y < brim_y)] = HAT
    if d.u01("hat.has_brim") < 0.6:
        c.lab[g.ell(0.0, brim_y, c.hx * 1.3, d.between("hat.brim", 0.018, 0.028))] = HAT


def _earrings(c: _Canvas) -> None:
    d = c.d
    if not c.a.earrings:
        return
    er = d.between("earrings.r", 0.013, 0.02)
    drop = d.between("earrings.drop", 1.0, 1.8)
    for sx in (-1.0, 1.0):
        c.lab[c.g.ell(sx * (c.ear_x + c.ear_rx * 0.3), c.ear_y + c.ear_ry + er * drop, er, er * drop)] = EAR_R
