"""Where the golden parity data lives, for every test module that compares against it.

``CDX_GOLDEN_DIRS`` (colon-separated folders; relative entries are resolved against the repository
root) names the folders to read. Default: ``<repo>/../shared/golden:<repo>/../shared/tokenizer``.
Every listed folder must exist and hold at least one golden file (``GOLDEN_FILES``); otherwise the
calling test FAILS (never skips): a missing golden set must not turn into a silent pass.

``CDX_EXAMPLES_DIR`` (default ``<repo>/../shared/examples``) is the folder of the official example
inputs (``test_data/`` of the official repository).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_FILES = ("golden_tokens.json", "*_io.pt")  # glob patterns
ENV_DIRS = "CDX_GOLDEN_DIRS"
ENV_EXAMPLES = "CDX_EXAMPLES_DIR"
_DEFAULT_DIRS = ("../shared/golden", "../shared/tokenizer")


def _resolve(entry: str) -> Path:
    p = Path(entry).expanduser()
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p.resolve()


def golden_dirs() -> list[Path]:
    """The golden folders, each checked to exist and to hold at least one golden file (else pytest.fail)."""
    raw = os.environ.get(ENV_DIRS)
    if raw is None:
        entries = list(_DEFAULT_DIRS)
        source = f"default ({':'.join(_DEFAULT_DIRS)} relative to {REPO_ROOT})"
    else:
        entries = [e for e in raw.split(":") if e.strip()]
        source = f"{ENV_DIRS}={raw!r}"
        if not entries:
            pytest.fail(f"{ENV_DIRS} is set but names no folder", pytrace=False)
    dirs: list[Path] = []
    for entry in entries:
        d = _resolve(entry.strip())
        if not d.is_dir():
            pytest.fail(f"golden folder {d} does not exist (from {source})", pytrace=False)
        if not any(p.is_file() for name in GOLDEN_FILES for p in d.glob(name)):
            pytest.fail(f"golden folder {d} holds none of {', '.join(GOLDEN_FILES)} (from {source})",
                        pytrace=False)
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
    """The folder of the official example inputs (fails if it is missing)."""
    raw = os.environ.get(ENV_EXAMPLES)
    d = _resolve(raw) if raw else _resolve("../shared/examples")
    if not d.is_dir():
        pytest.fail(f"examples folder {d} does not exist (set {ENV_EXAMPLES})", pytrace=False)
    return d


def resolve_example(rel: str, golden_dir: Path | None = None) -> Path:
    """Locate an official ``test_data/...`` input: beside the golden file first, then in the examples folder."""
    rel_path = Path(rel)
    parts = rel_path.parts
    stripped = Path(*parts[1:]) if parts and parts[0] == "test_data" and len(parts) > 1 else rel_path
    candidates: list[Path] = []
    if golden_dir is not None:
        candidates += [golden_dir / rel_path, golden_dir / stripped]
    ex = examples_dir()
    candidates += [ex / stripped, ex / rel_path]
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail(f"example input {rel} not found (tried {', '.join(map(str, candidates))})", pytrace=False)
