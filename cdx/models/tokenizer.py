"""BERT-uncased WordPiece tokenizer matching the official Collaborative Diffusion text pipeline.

The official BERTEmbedder calls ``BertTokenizerFast("bert-base-uncased")`` on ``text.lower()`` with
``truncation=True, max_length=77, padding="max_length"``. This module rebuilds the same pipeline with the
``tokenizers`` library from the vocabulary shipped in ``cdx/data`` (no network access):

* normaliser: BERT clean-up (control characters removed, whitespace unified), CJK characters split,
  lowercase, accents stripped (NFD then drop combining marks), as bert-base-uncased does;
* pre-tokeniser: BERT (split on whitespace and punctuation);
* model: WordPiece, ``##`` continuation prefix, ``[UNK]`` for words it cannot cover (or over 100 chars);
* ``[CLS] ... [SEP]``, truncated so that ``[SEP]`` stays last, padded with ``[PAD]`` = 0.

Only the part of a caption that the truncation keeps is tokenized (``used_part``): a caption of megabytes
costs what its first few thousand characters do, with the same ids as tokenizing all of it.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError

PAD_ID = 0
UNK_ID = 100
CLS_ID = 101
SEP_ID = 102
MASK_ID = 103

_VOCAB_NAME = "bert-base-uncased-vocab.txt"
# where a caption may be cut without changing the tokens before the cut: ASCII whitespace and punctuation
# and the CJK ideographs the normaliser puts spaces around (BERT's pre-tokeniser splits before each, and
# normalisation is per character once Python has lower-cased)
_BOUNDARY = re.compile("[ \t\n\r!-/:-@\\[-`{-~\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
                       "\U00020000-\U0002a6df\U0002a700-\U0002ceaf\U0002f800-\U0002fa1f]")
_FIRST_CUT_CHARS_PER_TOKEN = 64  # the first try: 64 characters per kept token (a caption is a few per token)


def vocab_path() -> Path:
    """Path of the shipped BERT uncased vocabulary (package data)."""
    try:
        p = Path(str(resources.files("cdx").joinpath("data").joinpath(_VOCAB_NAME)))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - unusual installs
        p = Path(__file__).resolve().parent.parent / "data" / _VOCAB_NAME
    if not p.is_file():
        p = Path(__file__).resolve().parent.parent / "data" / _VOCAB_NAME
    return p


def _read_vocab(path: Path) -> dict[str, int]:
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            tok = line.rstrip("\n").rstrip("\r")
            # the first occurrence wins, as in the reference loaders
            vocab.setdefault(tok, i)
    return vocab


class Tokenizer:
    """``encode(texts) -> (ids int64 [B, max_length], truncated flags)``."""

    def __init__(self, max_length: int = 77, vocab_file: str | Path | None = None):
        from tokenizers import Tokenizer as _HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

        if int(max_length) < 2:
            raise InputError(f"tokenizer: max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        self.max_length = int(max_length)
        path = Path(vocab_file) if vocab_file is not None else vocab_path()
        if not path.is_file():
            raise InputError(f"{path}: tokenizer vocabulary file not found")
        vocab = _read_vocab(path)
        for name, want in (("[PAD]", PAD_ID), ("[UNK]", UNK_ID), ("[CLS]", CLS_ID), ("[SEP]", SEP_ID)):
            if vocab.get(name) != want:
                raise InputError(f"{path}: not a BERT uncased vocabulary ({name} is {vocab.get(name)}, expected {want})")
        self._vocab = vocab

        tok = _HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                            max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=True, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.BertProcessing(("[SEP]", SEP_ID), ("[CLS]", CLS_ID))
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
        tok.enable_truncation(max_length=self.max_length, strategy="longest_first", direction="right")
        tok.enable_padding(direction="right", pad_id=PAD_ID, pad_type_id=0, pad_token="[PAD]",
                           length=self.max_length)
        self._tok = tok

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[bool]]:
        """Token ids ``int64 [len(texts), max_length]`` and, per text, whether it was truncated."""
        if isinstance(texts, str):
            raise InputError("tokenizer: encode() takes a list of captions, got a single string")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputError(f"tokenizer: caption {i} is {type(t).__name__}, expected str")
        if not texts:
            return np.zeros((0, self.max_length), dtype=np.int64), []
        # the official pipeline lower-cases with Python before the (also lower-casing) tokenizer
        used = [self.used_part(t.lower()) for t in texts]  # what truncation keeps, not megabytes of it
        encs = self._tok.encode_batch(used, add_special_tokens=True)
        ids = np.asarray([e.ids for e in encs], dtype=np.int64).reshape(len(texts), self.max_length)
        truncated = [len(e.overflowing) > 0 for e in encs]
        return ids, truncated

    def used_part(self, text: str) -> str:
        """The start of a lower-cased caption that encodes to the same ids (and the same truncation flag) as
        all of it: the caption itself when it is short; else the text before a space, an ASCII punctuation
        mark or a CJK ideograph, so that the words before the cut are split exactly as in the whole caption, where that part
        already holds more tokens than the encoding keeps (tried at 64 characters a kept token, then 4x
        further each time). A long caption thus costs what its first few thousand characters do."""
        chars = _FIRST_CUT_CHARS_PER_TOKEN * self.max_length
        while chars < len(text):
            m = _BOUNDARY.search(text[chars - 1::-1])  # the last boundary in text[:chars]
            if m is not None:
                head = text[:chars - 1 - m.start()]
                if self._tok.encode(head, add_special_tokens=True).overflowing:
                    return head  # more tokens than are kept, all of them the whole caption's own
            chars *= 4
        return text

    def words(self, text: str) -> list[str]:
        """The caption's words as the encoder splits them: lower-cased, accents stripped, split on whitespace
        and punctuation (a punctuation mark is a word); of a caption longer than the encoding keeps, those of
        a start of it that holds every kept token (`used_part`)."""
        norm = self._tok.normalizer.normalize_str(self.used_part(text.lower()))
        return [w for w, _ in self._tok.pre_tokenizer.pre_tokenize_str(norm)]

    def spells(self, word: str) -> bool:
        """Whether WordPiece covers `word` without [UNK]."""
        return all(t.id != UNK_ID for t in self._tok.model.tokenize(word))

    def words_of_ids(self, ids: Sequence[int]) -> list[str]:
        """The words a row of ids spells: a piece with the ## prefix continues the word before it; [PAD],
        [CLS], [SEP] and [MASK] are dropped."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i in (PAD_ID, CLS_ID, SEP_ID, MASK_ID):
                continue
            piece = self._tok.id_to_token(i)
            if piece is None:
                raise InputError(f"tokenizer: id {i} is not in the vocabulary ({self.vocab_size} ids)")
            if piece.startswith("##") and words:
                words[-1] += piece[2:]
            else:
                words.append(piece)
        return words

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of a row of ids (for diagnostics)."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(max_length={self.max_length}, vocab_size={self.vocab_size})"
