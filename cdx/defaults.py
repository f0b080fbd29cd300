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


def cache_subdir(*parts: str) -> Path:
    """A folder in the cache, created if needed; an unusable cache is a one-line CdxError."""
    root = cache_dir().joinpath(*parts)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CdxError(f"cannot use the cache folder {root} ({e.strerror or e}); set CDX_CACHE to a writable "
                       "folder") from None
    return root
