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

The package's parts: :mod:`.attributes` (the attributes, their levels and words, the sampler),
:mod:`.layout` (the label map, part by part), :mod:`.colours` (the image), :mod:`.captions`, and :mod:`.faces`
(a sample from one seed: four streams spawned from it, one per part: attributes, layout, colours, caption).

Everything is numpy-vectorised on a pixel-centre grid (no per-pixel Python loops): a 64x64 sample takes on the
order of a millisecond or two on one core.
"""
from __future__ import annotations

from ..models.masks import CLASS_NAMES
from .attributes import ALL_ATTRS, LEVEL_WORDS, LEVELS, MASK_ATTRS, TEXT_ATTRS, Attributes, sample_attributes
from .captions import make_caption
from .faces import Sample, SyntheticFaces, caption_of, generate, generate_batch, render, render_with
from .layout import (BG, CLOTH, EAR_R, EYE_G, HAIR, HAT, L_BROW, L_EAR, L_EYE, L_LIP, MOUTH, NECK, NECK_L, NOSE,
                     R_BROW, R_EAR, R_EYE, SKIN, U_LIP, render_layout)

__all__ = [
    "Attributes", "Sample", "TEXT_ATTRS", "MASK_ATTRS", "ALL_ATTRS", "LEVELS", "LEVEL_WORDS", "CLASS_NAMES",
    "sample_attributes", "render", "render_layout", "render_with", "make_caption", "caption_of", "generate",
    "generate_batch",
    "SyntheticFaces", "BG", "SKIN", "NOSE", "EYE_G", "L_EYE", "R_EYE", "L_BROW", "R_BROW", "L_EAR", "R_EAR", "MOUTH",
    "U_LIP", "L_LIP", "HAIR", "HAT", "EAR_R", "NECK_L", "NECK", "CLOTH",
]
