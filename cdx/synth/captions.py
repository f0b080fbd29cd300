"""CelebA-Dialog-style captions: templates per attribute level, pronouns, and the sentence builder.

The caption stream (one generator per sample) draws: how many attributes, which, whether one mask
attribute is added and where, one template per attribute, the subject's wording and the joins.
"""
from __future__ import annotations

import numpy as np

from .attributes import LEVELS, MASK_ATTRS, Attributes

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
