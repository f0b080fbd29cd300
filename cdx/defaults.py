"""Where cdx finds its shipped default model and its cache."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import CdxError

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
DEFAULT_MODEL = PACKAGE_DATA / "default_model"


def default_checkpoint() -> Path:
    if not (DEFAULT_MODEL / "bundle.json").is_file():
        raise CdxError("no default model is shipped with this install; pass --checkpoint BUNDLE")
    return DEFAULT_MODEL


def cache_dir() -> Path:
    """$CDX_CACHE, else $XDG_CACHE_HOME/cdx, else ~/.cache/cdx."""
    if os.environ.get("CDX_CACHE"):
        return Path(os.environ["CDX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cdx"
