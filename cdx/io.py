"""Atomic writes of files and folders: written beside the target, then renamed into place.

A folder target is replaced only when it is a cdx artifact of the same kind, as its own manifest's
`format` field says (never by a file name alone), and only when the caller allows it; anything else is
refused in one line. A writer claims its temporary folder with a lock file held for as long as it runs,
so the next writer in the same folder can tell a killed run's leftovers from a live one and remove them.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
import tempfile
from pathlib import Path

from .errors import InputError

# format -> (its manifest file, what it is called in messages)
ARTIFACTS = {
    "cdx-bundle": ("bundle.json", "cdx bundle"),
    "cdx-onnx": ("manifest.json", "cdx ONNX export"),
    "cdx-edit-state": ("edit.json", "cdx edit state"),
    "cdx-trt": ("engines.json", "cdx TensorRT engine folder"),
    "cdx-openvino-int8": ("int8.json", "cdx OpenVINO int8 cache entry"),
}
TMP_TAG = ".cdx-tmp-"
_TMP_RE = re.compile(r"^\..+\.cdx-tmp-[0-9a-f]{12}(\.lock|\.old)?$")
_MAX_MANIFEST = 64 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path` (not yet created); rename it over `path` only if the block succeeds.
    A killed writer's temporary is removed by the next atomic write in the same folder."""
    path = Path(path)
    remove_stale(path.parent)
    with _claim(path.parent, path.name, folder=False) as tmp:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_paths(paths):
    """Yield {path: temporary path} for several files written as one set: each temporary (not yet created) is
    in a claimed folder beside its target; only when the block succeeds are they all renamed into place, so a
    failure half-way (a full disk) leaves every target as it was and no temporary behind."""
    paths = [Path(p) for p in paths]
    with contextlib.ExitStack() as stack:
        folders = {}
        for parent in dict.fromkeys(p.parent for p in paths):
            remove_stale(parent)
            first = next(p for p in paths if p.parent == parent)
            folders[parent] = stack.enter_context(_claim(parent, first.name))
        tmps = {p: folders[p.parent] / f"{i}-{p.name}" for i, p in enumerate(paths)}
        yield tmps
        for tmp in tmps.values():
            os.chmod(tmp, 0o666 & ~_umask())
        for p, tmp in tmps.items():
            os.replace(tmp, p)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def loads_json(data: bytes | str):
    """json.loads, with every way text can fail to be JSON a ValueError: nesting too deep for the parser
    (RecursionError) included."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None


def read_json(path: str | os.PathLike, limit: int = _MAX_MANIFEST):
    """The JSON document in the regular file `path` (at most `limit` bytes). ValueError: not JSON (malformed,
    not UTF-8, nested too deeply, too large); OSError: missing, not a regular file, unreadable."""
    p = Path(path)
    if not p.is_file():  # never open a FIFO or a device, which could block or never end
        raise FileNotFoundError(errno.ENOENT, "not a regular file", str(p))
    with open(p, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes")
    return loads_json(data)


def probe_writable(folder: str | os.PathLike, what: str) -> None:
    """Create and remove a file in `folder`: the only test that holds for root, /proc, read-only mounts."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".cdx-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise InputError(f"{what}: cannot write in {folder} ({e.strerror or e})") from None


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """Refuse, before any work, a file output that cannot be written: no folder, a folder in its place, or a
    folder that refuses files (read-only, /proc, /sys)."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{what} {p}: folder {parent} does not exist")
    if p.is_dir():
        raise InputError(f"{what} {p}: is a folder; give a file path")
    if p.exists() and not p.is_file():
        raise InputError(f"{what} {p}: exists and is not a regular file")
    probe_writable(parent, f"{what} {p}")
    return p


def artifact_format(folder: str | os.PathLike) -> str | None:
    """The format of the cdx artifact folder at `folder`, read from its own manifest; None if it is not one."""
    folder = Path(folder)
    for fmt, (manifest, _) in ARTIFACTS.items():
        m = folder / manifest
        try:
            if not m.is_file():  # not a FIFO or a device that would block a read
                continue
            data = read_json(m)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == fmt:
            return fmt
    return None


def check_folder_target(target: str | os.PathLike, fmt: str, overwrite: bool = False, what: str = "--out") -> None:
    """Refuse, before any work, a folder target that cdx may not (or was not told to) replace."""
    target = Path(target)
    name = ARTIFACTS[fmt][1]
    if target.is_symlink():
        raise InputError(f"{what} {target}: is a symbolic link; give a real folder path")
    if not target.exists():
        ancestor = target.parent
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent  # the folders up to it are made when the artifact is written
        if not ancestor.is_dir():
            raise InputError(f"{what} {target}: {ancestor} is not a folder")
        probe_writable(ancestor, f"{what} {target}")
        return
    if not target.is_dir():
        raise InputError(f"{what} {target}: exists and is not a folder; choose another path")
    try:
        if not any(target.iterdir()):
            return  # an empty folder holds nothing to lose
    except OSError as e:
        raise InputError(f"{what} {target}: cannot read it ({e.strerror or e})") from None
    have = artifact_format(target)
    if have != fmt:
        it = f"a {ARTIFACTS[have][1]}" if have else "not a cdx artifact"
        raise InputError(f"{what} {target}: exists and is {it}, not a {name}; choose another path (cdx never "
                         "replaces what it did not write)")
    if not overwrite:
        raise InputError(f"{what} {target}: a {name} is already there; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, fmt: str, overwrite: bool = False, keep_existing: bool = False,
                  what: str = "--out"):
    """Yield an empty temporary folder beside `target`; when the block succeeds, rename it to `target`.

    `fmt` is the artifact's format (a key of ARTIFACTS). An existing `target` is replaced only if it is an
    artifact of that format and `overwrite` is set; with `keep_existing` (a cache whose entries are equal),
    an artifact of that format that appeared meanwhile is kept and the new one dropped. Stale temporary
    folders of killed writers beside `target` are removed first."""
    target = Path(target)
    check_folder_target(target, fmt, overwrite or keep_existing, what)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{what} {target}: cannot create folder {parent} ({e.strerror or e})") from None
    probe_writable(parent, f"{what} {target}")
    remove_stale(parent)
    with _claim(parent, target.name) as tmp:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        _install(tmp, target, fmt, overwrite, keep_existing, what)


def _install(tmp: Path, target: Path, fmt: str, overwrite: bool, keep_existing: bool, what: str) -> None:
    try:
        os.rename(tmp, target)  # atomic; only succeeds onto nothing or an empty folder
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise
    check_folder_target(target, fmt, overwrite or keep_existing, what)  # what is there now
    if keep_existing:
        return  # a concurrent writer of the same entry won the race: its result is equally valid
    old = tmp.with_name(tmp.name + ".old")
    os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


# The temporary paths this process holds now: stem -> (lock fd, lock path, the target it becomes).
_CLAIMED: dict[Path, tuple[int, Path, Path]] = {}


@contextlib.contextmanager
def _claim(parent: Path, name: str, folder: bool = True):
    """A fresh temporary path `.NAME.cdx-tmp-XXXX` in `parent` (an empty folder, or for `folder=False` a name
    to write a file at), its lock file `.NAME.cdx-tmp-XXXX.lock` held until the block ends."""
    while True:
        stem = parent / f".{name[:96]}{TMP_TAG}{secrets.token_hex(6)}"
        lock = stem.with_name(stem.name + ".lock")
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break  # a cleaner that saw this lock before we held it removed it: try another name
        os.close(fd)
    _CLAIMED[stem] = (fd, lock, parent / name)
    try:
        if folder:
            stem.mkdir()
        yield stem
    finally:
        if stem in _CLAIMED:  # not already released by a signal handler
            _release(stem)


def _release(stem: Path) -> None:
    """Remove a claimed temporary path and its lock. A replaced target caught between its two renames
    (target -> .old, temporary -> target) gets its old content back."""
    fd, lock, target = _CLAIMED.pop(stem)
    old = stem.with_name(stem.name + ".old")
    if old.exists() and not os.path.lexists(target):
        os.rename(old, target)
    _remove(stem)
    _remove(old)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock)
    os.close(fd)


def release_all_claims() -> None:
    """Remove every temporary path this process holds: for a signal handler that exits at once (os._exit)
    instead of unwinding through whatever C++ code the main thread is in."""
    for stem in list(_CLAIMED):
        with contextlib.suppress(OSError):
            _release(stem)


def remove_stale(parent: str | os.PathLike) -> list[str]:
    """Remove the temporary folders in `parent` whose writer is gone (its lock is free); returns their names."""
    parent = Path(parent)
    try:
        names = [e.name for e in os.scandir(parent) if _TMP_RE.match(e.name)]
    except OSError:
        return []
    removed = []
    for stem in sorted({re.sub(r"\.(lock|old)$", "", n) for n in names}):
        lock = parent / f"{stem}.lock"
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            fd = None  # a writer creates its lock first and removes it last: without one, nobody owns these
        except OSError:
            continue
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its writer is alive
            for member in (stem, f"{stem}.old"):
                _remove(parent / member)
            if fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
            removed.append(stem)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def _remove(path: Path) -> None:
    """Remove a temporary file or folder of ours, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            path.unlink()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
