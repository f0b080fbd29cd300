"""Where the golden parity data and the official example inputs live, for every test module that reads them.

Golden data (always read): the project's own copy in ``tests/data/golden`` (the public golden set: tensors
and a checkpoint of a reduced model, made by running the official code) and ``tests/data/tokenizer``
(reference token ids). ``CDX_GOLDEN_DIRS`` (colon-separated folders; relative entries are resolved against
the repository root) names MORE folders, for example a golden set of another architecture. Every folder
must exist and hold at least one golden file (``GOLDEN_FILES``); otherwise the calling test FAILS (never
skips): a missing golden set must not turn into a silent pass.

Official example inputs (CelebAMask-HQ masks and a face, non-commercial: never copied into the project):
``CDX_EXAMPLES_DIR``, else ``<repo>/../shared/examples``. Tests that need them SKIP, saying why, when the
default folder is absent (a clone of the project alone), and FAIL when a folder named by
``CDX_EXAMPLES_DIR`` is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "tests" / "data"
GOLDEN_FILES = ("golden_tokens.json", "*_io.pt")  # glob patterns
ENV_DIRS = "CDX_GOLDEN_DIRS"
ENV_EXAMPLES = "CDX_EXAMPLES_DIR"
OWN_DIRS = (DATA_DIR / "golden", DATA_DIR / "tokenizer")
DEFAULT_EXAMPLES = "../shared/examples"


def _resolve(entry: str) -> Path:
    p = Path(entry).expanduser()
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p.resolve()


def _check(d: Path, source: str) -> None:
    if not d.is_dir():
        pytest.fail(f"golden folder {d} does not exist (from {source})", pytrace=False)
    if not any(p.is_file() for name in GOLDEN_FILES for p in d.glob(name)):
        pytest.fail(f"golden folder {d} holds none of {', '.join(GOLDEN_FILES)} (from {source})", pytrace=False)


def golden_dirs() -> list[Path]:
    """The project's golden folders and those named by CDX_GOLDEN_DIRS, each checked (else pytest.fail)."""
    named: list[tuple[Path, str]] = [(d.resolve(), "the project's tests/data") for d in OWN_DIRS]
    raw = os.environ.get(ENV_DIRS)
    if raw is not None:
        entries = [e.strip() for e in raw.split(":") if e.strip()]
        if not entries:
            pytest.fail(f"{ENV_DIRS} is set but names no folder", pytrace=False)
        named += [(_resolve(e), f"{ENV_DIRS}={raw!r}") for e in entries]
    dirs: list[Path] = []
    for d, source in named:
        _check(d, source)
        if d not in dirs:
            dirs.append(d)
    return dirs


def find_golden(name: str, required: bool = True) -> list[Path]:
    """Every file matching the glob ``name`` across the golden folders, in folder order.

    Fails (via ``golden_dirs``) if a listed folder is missing or holds no golden file; with
    ``required`` (the default) also fails when no folder holds ``name``.
    """
    dirs = golden_dirs()
    found = [p for d in dirs for p in sorted(d.glob(name)) if p.is_file()]
    if required and not found:
        pytest.fail(f"no {name} in any golden folder: {', '.join(map(str, dirs))}", pytrace=False)
    return found


def examples_dir() -> Path:
    """The folder of the official example inputs: skips when the default is absent, fails when a named one is."""
    raw = os.environ.get(ENV_EXAMPLES)
    if raw:
        d = _resolve(raw)
        if not d.is_dir():
            pytest.fail(f"examples folder {d} does not exist (from {ENV_EXAMPLES}={raw!r})", pytrace=False)
        return d
    d = _resolve(DEFAULT_EXAMPLES)
    if not d.is_dir():
        pytest.skip(f"needs the official CelebAMask-HQ example inputs (non-commercial, not part of the project): "
                    f"{d} is absent; put them there or set {ENV_EXAMPLES}")
    return d


def resolve_example(rel: str, golden_dir: Path | None = None) -> Path:
    """Locate an official ``test_data/...`` input: beside the golden file first, then in the examples folder."""
    rel_path = Path(rel)
    parts = rel_path.parts
    stripped = Path(*parts[1:]) if parts and parts[0] == "test_data" and len(parts) > 1 else rel_path
    candidates: list[Path] = []
    if golden_dir is not None:
        candidates += [golden_dir / rel_path, golden_dir / stripped]
        for c in candidates:
            if c.is_file():
                return c
    ex = examples_dir()
    candidates += [ex / stripped, ex / rel_path]
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail(f"example input {rel} not found (tried {', '.join(map(str, candidates))})", pytrace=False)
