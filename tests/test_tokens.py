"""Tokenizer parity with the official text pipeline (BertTokenizerFast bert-base-uncased on text.lower())."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from cdx.errors import InputError
from cdx.models.tokenizer import CLS_ID, PAD_ID, SEP_ID, UNK_ID, Tokenizer, vocab_path

try:  # tests/ on sys.path (rootdir-relative "prepend" import mode)
    from golden import find_golden
except ImportError:  # tests/ is a package
    from tests.golden import find_golden

VOCAB_SHA256 = "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


def _load_cases(path: Path) -> list[dict]:
    data = json.loads(path.read_text(encoding="utf-8"))
    cases = data["cases"]
    assert cases, f"{path}: no cases"
    return cases


def test_token_ids_match_golden(tok):
    for path in find_golden("golden_tokens.json"):
        cases = _load_cases(path)
        ids, truncated = tok.encode([c["text"] for c in cases])
        assert ids.dtype == np.int64 and ids.shape == (len(cases), 77)
        assert len(truncated) == len(cases)
        for i, c in enumerate(cases):
            want = np.asarray(c["input_ids"], dtype=np.int64)
            assert want.shape == (77,), f"{path} case {i}: golden row has {want.shape}"
            assert np.array_equal(ids[i], want), (
                f"{path} case {i} {c['text'][:60]!r}: first mismatch at position "
                f"{int(np.argmax(ids[i] != want))}: got {ids[i].tolist()} want {want.tolist()}"
            )


def test_token_golden_one_by_one_equals_batch(tok):
    for path in find_golden("golden_tokens.json"):
        cases = _load_cases(path)
        batch, tb = tok.encode([c["text"] for c in cases])
        for i, c in enumerate(cases):
            single, ts = tok.encode([c["text"]])
            assert np.array_equal(single[0], batch[i]) and ts[0] == tb[i]


def test_token_truncation_flag_on_golden(tok):
    wide = Tokenizer(max_length=512)
    for path in find_golden("golden_tokens.json"):
        cases = _load_cases(path)
        texts = [c["text"] for c in cases]
        ids, truncated = tok.encode(texts)
        full, full_truncated = wide.encode(texts)
        for i in range(len(cases)):
            expect = bool(full_truncated[i] or int((full[i] != PAD_ID).sum()) > 77)
            assert truncated[i] == expect, f"{path} case {i}: truncated={truncated[i]}, expected {expect}"
            if truncated[i]:
                assert ids[i, -1] == SEP_ID and PAD_ID not in ids[i].tolist()
                # the kept tokens are the prefix of the full encoding, then [SEP]
                assert np.array_equal(ids[i, :76], full[i, :76])


def test_token_truncation_keeps_sep_last(tok):
    ids, truncated = tok.encode(["x " * 74, "x " * 75, "x " * 76, "very " * 300])
    assert truncated == [False, False, True, True]
    assert ids[0, 75] == SEP_ID and ids[0, 76] == PAD_ID
    for r in ids[1:]:
        assert r[0] == CLS_ID and r[-1] == SEP_ID and PAD_ID not in r.tolist()
    assert np.array_equal(ids[1], ids[2])


def test_token_empty_and_special_ids(tok):
    ids, truncated = tok.encode([""])
    assert ids[0, :2].tolist() == [CLS_ID, SEP_ID] and (ids[0, 2:] == PAD_ID).all()
    assert truncated == [False]
    ids, _ = tok.encode(["   \t\n "])
    assert ids[0, :2].tolist() == [CLS_ID, SEP_ID] and (ids[0, 2:] == PAD_ID).all()


def test_token_lowercase_and_accents(tok):
    a, _ = tok.encode(["A SMILING WOMAN with BANGS"])
    b, _ = tok.encode(["a smiling woman with bangs"])
    assert np.array_equal(a, b)
    c, _ = tok.encode(["café résumé naïve"])
    d, _ = tok.encode(["cafe resume naive"])
    assert np.array_equal(c, d)
    # CJK characters are split one per token; unknown characters become [UNK]
    e, _ = tok.encode(["北京"])
    assert e[0, 0] == CLS_ID and e[0, 3] == SEP_ID and UNK_ID not in e[0, 1:3].tolist()


def test_token_vocab_file_and_size(tok):
    p = vocab_path()
    assert p.is_file()
    assert hashlib.sha256(p.read_bytes()).hexdigest() == VOCAB_SHA256
    assert tok.vocab_size == 30522
    # no bulky side files: the vocabulary alone drives the tokenizer
    assert Tokenizer(max_length=77).vocab_size == 30522


def test_token_custom_max_length():
    t = Tokenizer(max_length=8)
    ids, truncated = t.encode(["one two three four five six seven", "one"])
    assert ids.shape == (2, 8)
    assert truncated == [True, False]
    assert ids[0, -1] == SEP_ID and ids[1, 3] == PAD_ID


def test_token_empty_batch(tok):
    ids, truncated = tok.encode([])
    assert ids.shape == (0, 77) and ids.dtype == np.int64 and truncated == []


def test_token_bad_input(tok):
    with pytest.raises(InputError, match="list of captions"):
        tok.encode("a single string")
    with pytest.raises(InputError, match="caption 1"):
        tok.encode(["ok", 3])
    with pytest.raises(InputError, match="max_length"):
        Tokenizer(max_length=1)
