"""The modality registry: what each kind of condition is, in one place.

A kind says how a user's value becomes its encoder's input (a caption -> token ids, a label map ->
one-hot, a sketch -> a [1, 1024] vector), its null condition for classifier-free guidance, its encoder
and that encoder's input spec, its CLI option, its training-data field and the metric `cdx eval`
scores it with. The sampler, kernels, graphs, export and runners never name a kind: they see
networks and tensors. Adding a kind is one subclass and one `register_kind` call.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import InputError, warn


@dataclass(frozen=True)
class EncoderInput:
    """The encoder's input tensor without its batch axis; `values` tells export how to draw random ones."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "int64" or "float32"
    values: str  # "tokens", "onehot", "unit" (floats in [0, 1])


class ModalityKind:
    """One kind of condition. Subclasses set the class attributes and override the methods."""

    kind: ClassVar[str]
    cli_option: ClassVar[str | None] = None  # e.g. "--text"; None: given with --cond NAME=FILE
    training_field: ClassVar[str]  # the data set's field this kind trains on
    metric: ClassVar[str | None] = None  # the `cdx eval` score of this kind, when it has one
    describe: ClassVar[str] = ""  # what a user passes, for errors and help

    def encoder_input(self, m) -> EncoderInput:
        raise NotImplementedError

    def context_len(self, m) -> int:
        raise NotImplementedError

    def encoder(self, m) -> nn.Module:
        raise NotImplementedError

    def parse(self, value: Any, m, where: str) -> np.ndarray:
        """One item's encoder input (no batch axis) from a user's value; InputError when it is unusable."""
        raise NotImplementedError

    def null(self, m) -> np.ndarray:
        """One item's null condition (what condition dropout trains on)."""
        raise NotImplementedError

    def training_vocabulary(self, stored) -> tuple[str, ...] | None:
        """What a collaborator's config records of the values it was trained on (`stored`: the training data's
        stored forms, arrays of items); None: nothing for this kind."""
        return None

    def batch(self, values: list, m, where: str) -> torch.Tensor:
        """(B, ...) encoder input of a list of user values."""
        ins = self.encoder_input(m)
        dt = np.int64 if ins.dtype == "int64" else np.float32
        return torch.from_numpy(np.stack([np.asarray(self.parse(v, m, where), dtype=dt) for v in values]))

    def null_batch(self, m, batch: int = 1) -> torch.Tensor:
        ins = self.encoder_input(m)
        dt = np.int64 if ins.dtype == "int64" else np.float32
        return torch.from_numpy(np.asarray(self.null(m), dtype=dt)).unsqueeze(0).repeat(batch, *[1] * len(ins.shape))


def check_text(value: str, where: str) -> None:
    """Refuse a caption that is not valid text: lone surrogates, what Python makes of bytes that are not UTF-8
    in a command line (or a JSON escape like \\udcff)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{where}: the caption is not valid text ({e.reason} at character {e.start}: bytes that "
                         "are not UTF-8); give it as UTF-8 text") from None


class TextKind(ModalityKind):
    kind = "text"
    cli_option = "--text"
    training_field = "caption"
    metric = "text_accuracy"
    describe = "a caption (str)"
    _tokenizer = None

    def encoder_input(self, m) -> EncoderInput:
        return EncoderInput("tokens", (m.text.max_seq_len,), "int64", "tokens")

    def context_len(self, m) -> int:
        return m.text.max_seq_len

    def encoder(self, m) -> nn.Module:
        from .text_encoder import TextEncoder

        return TextEncoder(m.text)

    @classmethod
    def tokenizer(cls):
        if cls._tokenizer is None:
            from .tokenizer import Tokenizer

            cls._tokenizer = Tokenizer()
        return cls._tokenizer

    def parse(self, value, m, where):
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a caption string, got {type(value).__name__}")
        check_text(value, where)
        if not value.strip():
            warn(f"{where}: the caption is empty; the text collaborator gets no condition")
        else:
            self._warn_unseen(value, m, where)
        ids, truncated = self.tokenizer().encode([value])
        if truncated[0]:
            warn(f"{where}: caption longer than {ids.shape[1]} tokens: truncated, as the official code does")
        return ids[0]

    def null(self, m):
        return self.tokenizer().encode([""])[0][0]

    def unseen_words(self, caption: str, m) -> list[str]:
        """The caption's words (in order, once each) that the model never saw in training when its config
        records a vocabulary; without one, the words the tokenizer can only spell as [UNK]."""
        tok = self.tokenizer()
        words = dict.fromkeys(tok.words(caption))
        if m.vocabulary is not None:
            known = set(m.vocabulary)
            return [w for w in words if w not in known]
        return [w for w in words if not tok.spells(w)]

    def _warn_unseen(self, caption: str, m, where: str) -> None:
        unseen = self.unseen_words(caption, m)
        if not unseen:
            return
        named = ", ".join(repr(w) for w in unseen[:12]) + (f" and {len(unseen) - 12} more" if len(unseen) > 12 else "")
        them = "it" if len(unseen) == 1 else "them"
        if m.vocabulary is None:
            why = f"the text encoder's vocabulary cannot spell {them} ([UNK])"
        else:
            why = (f"the model never saw {them} in training (the {len(m.vocabulary)} words it knows are its "
                   f"config's {m.name} vocabulary, in bundle.json)")
        whole = "none of the caption's words mean anything to it: " if len(unseen) == len(self.tokenizer().words(
            caption)) else ""
        warn(f"{where}: {whole}{named}: {why}")

    def training_vocabulary(self, stored) -> tuple[str, ...]:
        """The sorted words of every caption in `stored` (arrays of token-id rows)."""
        tok = self.tokenizer()
        words: set[str] = set()
        for rows in stored:
            for row in np.unique(np.asarray(rows).reshape(-1, np.asarray(rows).shape[-1]), axis=0):
                words.update(tok.words_of_ids(row))
        return tuple(sorted(words))


class MaskKind(ModalityKind):
    kind = "mask"
    cli_option = "--mask"
    training_field = "mask"
    metric = "mask_accuracy"
    describe = "a label-map PNG path, a PIL label-map image or an (H, W) array of class ids 0..18"

    def encoder_input(self, m) -> EncoderInput:
        from .config import MASK_CLASSES, MASK_TOKENS

        return EncoderInput("mask", (MASK_CLASSES, MASK_TOKENS), "int64", "onehot")

    def context_len(self, m) -> int:
        from .config import MASK_CLASSES

        return MASK_CLASSES

    def encoder(self, m) -> nn.Module:
        from .config import MASK_TOKENS
        from .text_encoder import MaskEncoder

        return MaskEncoder(MASK_TOKENS, m.context_dim)

    def parse(self, value, m, where):
        from .masks import label_map_to_ids, one_hot

        try:
            return one_hot(label_map_to_ids(_label_map(value, where)))[0]  # (19, 1024)
        except InputError as e:
            msg = str(e)
            raise InputError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    def null(self, m):
        from .config import MASK_CLASSES, MASK_TOKENS

        return np.zeros((MASK_CLASSES, MASK_TOKENS), dtype=np.int64)


class SketchKind(ModalityKind):
    """A line drawing as the official data stores it: a 32x32 map in [0, 1], flattened to [1, 1024]."""

    kind = "sketch"
    training_field = "sketch"
    describe = "a greyscale sketch image (path or PIL) or an (H, W) float array in [0, 1]"
    side = 32

    def encoder_input(self, m) -> EncoderInput:
        return EncoderInput("sketch", (1, self.side * self.side), "float32", "unit")

    def context_len(self, m) -> int:
        return 1

    def encoder(self, m) -> nn.Module:
        from .text_encoder import MaskEncoder  # Linear(1024 -> context), as for the one-hot mask

        return MaskEncoder(self.side * self.side, m.context_dim)

    def parse(self, value, m, where):
        from PIL import Image

        if isinstance(value, (str, os.PathLike)):
            value = _open_image(value, where)
        if isinstance(value, Image.Image):
            grey = _pil_pixels(value, where, lambda im: im.convert("L").resize((self.side, self.side), Image.BILINEAR))
            arr = np.asarray(grey, np.float32) / 255.0
        else:
            arr = np.asarray(value)
            if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
                raise InputError(f"{where}: expected an (H, W) numeric array, got shape {arr.shape} {arr.dtype}")
            arr = arr.astype(np.float32)
            if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
                raise InputError(f"{where}: sketch values must be finite and in [0, 1]")
            if arr.shape != (self.side, self.side):
                img = Image.fromarray(arr, mode="F").resize((self.side, self.side), Image.BILINEAR)
                arr = np.asarray(img, np.float32)
        return arr.reshape(1, -1)

    def null(self, m):
        return np.zeros((1, self.side * self.side), np.float32)


def _open_image(path, where):
    from PIL import Image, UnidentifiedImageError

    from ..validate import check_image_size

    try:
        with Image.open(path) as im:
            check_image_size(*im.size, f"{where} {path}")  # from the header, before decoding
            im.load()
            return im.copy()
    except FileNotFoundError:
        raise InputError(f"{where} {path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise InputError(f"{where} {path}: not a readable image ({type(e).__name__})") from None


def _pil_pixels(image, where: str, read):
    """`read(image)` for a PIL image a user gave: its size bounded first; a closed, truncated or otherwise
    unreadable image is an InputError."""
    from ..validate import check_image_size

    check_image_size(*image.size, where)
    try:
        return read(image)
    except (ValueError, OSError, AttributeError, SyntaxError, EOFError) as e:  # "Operation on closed image", ...
        raise InputError(f"{where}: the PIL image cannot be read ({' '.join(str(e).split()) or type(e).__name__}); "
                         "give an open image, a path or an array") from None


def _label_map(value, where) -> np.ndarray:
    """A (H, W) label map from a path, a PIL image (palette/greyscale ids, or palette colours) or an array
    of class ids; `label_map_to_ids` checks the ids."""
    from PIL import Image

    from .masks import _rgb_to_ids, load_label_map

    if isinstance(value, (str, os.PathLike)):
        return load_label_map(value)
    if isinstance(value, Image.Image):
        if value.mode in ("RGB", "RGBA"):
            return _rgb_to_ids(_pil_pixels(value, where, np.asarray)[..., :3], where)
        if value.mode not in ("P", "L", "1") and not value.mode.startswith("I"):
            raise InputError(f"{where}: a PIL label map must be a palette, greyscale or palette-coloured RGB "
                             f"image, got mode {value.mode}")
        return _pil_pixels(value, where, np.asarray)
    if not isinstance(value, np.ndarray):
        raise InputError(f"{where}: expected {MaskKind.describe}, got {type(value).__name__}")
    return value


_KINDS: dict[str, ModalityKind] = {}


def register_kind(kind: ModalityKind) -> ModalityKind:
    """Make a kind of condition known to every part of cdx (model building, export, API, CLI, training)."""
    _KINDS[kind.kind] = kind
    return kind


def kind_of(name: str) -> ModalityKind:
    """The registered kind `name`; an unknown one is a ValueError naming the known kinds."""
    if name not in _KINDS:
        raise ValueError(f"unknown modality kind {name!r}; known: {', '.join(_KINDS)}")
    return _KINDS[name]


def kinds() -> dict[str, ModalityKind]:
    return dict(_KINDS)


for _k in (TextKind(), MaskKind(), SketchKind()):
    register_kind(_k)
