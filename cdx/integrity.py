"""File hashes verified once: a file's sha256 is recorded in the cache with its (size, mtime, ctime, inode)
and computed again only when one of them changes (a write, a copy, a rename onto it: ctime cannot be set
back by a user, so an edit that restores size and mtime is still seen)."""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Callable

from .defaults import cache_dir
from .io import atomic_write_text, read_json


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _record_path(folder: Path) -> Path:
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
    return cache_dir() / "verified" / f"{key}.json"


def _read_record(path: Path) -> dict:
    """The record at `path`; {} when it is missing or unreadable (nested too deeply to parse included): it is
    then written again from the files' hashes."""
    try:
        data = read_json(path)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def verified_sha256(folder: str | os.PathLike, names, on_hashed: Callable[[str, Path], None] | None = None
                    ) -> dict[str, str | None]:
    """{name: sha256 of folder/name, or None when it is missing or unreadable}, from the record where the
    file is unchanged since it was last hashed. `on_hashed(name, path)` runs on every file that had to be
    hashed (a content check that then need not run again); it may raise to refuse the file."""
    folder = Path(folder)
    rpath = _record_path(folder)
    record = _read_record(rpath)
    out, changed = {}, False
    for name in names:
        path = folder / name
        try:
            st = path.stat()
            if not path.is_file():
                raise FileNotFoundError(name)
        except OSError:
            out[name] = None
            continue
        old = record.get(name)
        if isinstance(old, list) and len(old) == 6 and old[:5] == _stamp(st):
            out[name] = old[5]
            continue
        try:
            digest = file_sha256(path)
        except OSError:
            out[name] = None
            continue
        if on_hashed is not None:
            on_hashed(name, path)
        out[name] = digest
        record[name] = [*_stamp(st), digest]
        changed = True
    if changed:
        try:
            rpath.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(rpath, json.dumps(record))
        except OSError:
            pass  # an unwritable cache only costs hashing again next time
    return out


def tree_sha256(folder: str | os.PathLike, skip: Callable[[str], bool] = lambda rel: False
                ) -> tuple[dict[str, str | None], list[str]]:
    """({path relative to `folder`: sha256, or None when unreadable} of every regular file under `folder`,
    [every other entry: links, FIFOs, sockets]), hashed through the folder's record as `verified_sha256` does.
    Links are listed, never followed; a path `skip(rel)` names is left out, with everything under it."""
    folder = Path(folder)
    files, odd = [], []
    for root, dirs, names in os.walk(folder):
        base = Path(root).relative_to(folder)
        for name in list(dirs):
            rel = (base / name).as_posix()
            if skip(rel) or os.path.islink(os.path.join(root, name)):
                dirs.remove(name)  # not entered (os.walk never follows a link, but it lists one among the dirs)
                if not skip(rel):
                    odd.append(rel)
        for name in names:
            rel = (base / name).as_posix()
            if skip(rel):
                continue
            try:
                regular = stat.S_ISREG(os.lstat(os.path.join(root, name)).st_mode)
            except OSError:
                regular = True  # gone while we looked: hashed as missing
            (files if regular else odd).append(rel)
    return verified_sha256(folder, sorted(files)), sorted(odd)
