"""Training work folders (and data caches) are cdx artifacts: each holds its own manifest, `work.json`
(format "cdx-train-work") or `cache.json` ("cdx-train-data-cache"). cdx writes into a folder only when it
is new, empty, or has that manifest; anything else is refused in one line, before any work, so that no file
a user had there is ever replaced. The work manifest records the model configuration it was started with,
which `cdx train assemble` uses when no --preset is given.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputError
from ..io import atomic_write_text, probe_writable, read_json
from . import dist

KINDS = {"cdx-train-work": ("work.json", "cdx training work folder"),
         "cdx-train-data-cache": ("cache.json", "cdx training data cache")}
VERSION = 1


def _manifest(folder: Path, fmt: str) -> dict | None:
    path = folder / KINDS[fmt][0]
    try:
        doc = read_json(path) if path.is_file() else None
    except (OSError, ValueError):  # malformed, not UTF-8, nested too deeply to parse: not a work folder of cdx's
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == fmt else None


def check_folder(folder: str | os.PathLike, fmt: str, what: str) -> Path:
    """Refuse a folder cdx may not write into (checked the same way on every process)."""
    folder = Path(folder)
    name = KINDS[fmt][1]
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{what} {folder}: exists and is not a folder; choose another path")
    if folder.is_dir():
        try:
            empty = not any(folder.iterdir())
        except OSError as e:
            raise InputError(f"{what} {folder}: cannot read it ({e.strerror or e})") from None
        if not empty and _manifest(folder, fmt) is None:
            raise InputError(f"{what} {folder}: exists and is not a {name} (no readable {KINDS[fmt][0]}); choose a "
                             "new or empty folder (cdx never writes into a folder it did not make)")
    return folder


def open_folder(folder, fmt: str, what: str, record: dict | None = None) -> Path:
    """`folder` checked, created and given its manifest (by rank 0; the others wait)."""
    folder = check_folder(folder, fmt, what)
    if dist.is_main():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{what} {folder}: cannot create it ({e.strerror or e})") from None
        probe_writable(folder, f"{what} {folder}")
        if _manifest(folder, fmt) is None:
            doc = {"format": fmt, "version": VERSION, **(record or {})}
            atomic_write_text(folder / KINDS[fmt][0], json.dumps(doc, indent=1))
    dist.barrier()
    return folder


def open_work(folder, cfg) -> Path:
    return open_folder(folder, "cdx-train-work", "--work", {"preset": cfg.preset, "config": cfg.to_dict()})


def work_config(folder):
    """The model configuration a work folder was started with (None: not a work folder)."""
    from ..models.config import ModelConfig

    doc = _manifest(Path(folder), "cdx-train-work")
    try:
        return None if doc is None else ModelConfig.from_dict(doc["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{Path(folder) / 'work.json'}: malformed ({e}); pass --preset") from None
