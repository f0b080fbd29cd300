"""`cdx cache ls` / `cdx cache clean`: what cdx keeps in its cache folder ($CDX_CACHE, else ~/.cache/cdx), and
removing it.

An entry is cdx's only when it says so: an artifact folder whose own manifest names its format (cdx.io's
`artifact_format`: ONNX exports, int8 models, random bundles), or a file or folder of the exact shape cdx gives
the caches it hands to a library (OpenVINO's compiled blobs under a 24-hex-digit export digest, inductor's
caches: a 32-hex-digit folder per key with cdx's record `cdx-inductor.json`, or torch's own layout where cdx
handed it all of inductor/ before), its hash records (`verified/<32 hex>.json`), its editing scratch folders
(`tmp/edit-*`) and the temporaries of its atomic writes. Anything else in the folder is listed as not cdx's
and never removed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path

import click

# kind folder -> the artifact format its entries carry (cdx.io.ARTIFACTS)
ARTIFACT_KINDS = {"onnx": "cdx-onnx", "openvino-int8": "cdx-openvino-int8", "random": "cdx-bundle"}
KINDS = ("onnx", "openvino", "openvino-int8", "inductor", "random", "tmp", "verified")
FOREIGN, UNFINISHED = "not cdx's", "unfinished"
_HEX24 = re.compile(r"^[0-9a-f]{24}$")
_VERIFIED = re.compile(r"^[0-9a-f]{32}\.json$")
_TMP_WRITE = re.compile(r"^\..+\.cdx-tmp-[0-9a-f]{12}(\.lock|\.old)?$")  # cdx.io's atomic temporaries
# OpenVINO's own CACHE_DIR blobs (cdx before blobs.py), and cdx's blobs with their records (backends/openvino/blobs.py)
_OPENVINO_FILE = re.compile(r"^(?:[0-9]+\.blob|cdx-[0-9a-f]{32}\.(?:blob|json))$")
# inductor's caches, one folder per key (backends/pytorch/compile.py: its record, its lock, inductor's own tree)
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
INDUCTOR_RECORD, INDUCTOR_FORMAT = "cdx-inductor.json", "cdx-inductor"
_INDUCTOR_ITEMS = (INDUCTOR_RECORD, "cdx-inductor.lock", "torch")
NOTES = {"verified": " (the hashes of checked files, one record per folder)",
         UNFINISHED: " (writes in progress, or left by a killed cdx)",
         FOREIGN: " (cdx did not write these: never removed by cdx cache clean)"}


@dataclasses.dataclass
class Entry:
    kind: str
    path: Path
    size: int
    mtime: float  # the newest modification inside: when it was last written
    what: str = ""  # the model it belongs to, where the entry says

    @property
    def ours(self) -> bool:
        return self.kind != FOREIGN


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError


def human_age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


def _usage(path: Path) -> tuple[int, float]:
    """(bytes, newest mtime) of a file or a folder tree; links are counted, never followed."""
    st = path.lstat()
    folder = path.is_dir() and not path.is_symlink()
    size, newest = 0 if folder else st.st_size, st.st_mtime  # the files' bytes, not the folders' entries
    if folder:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    s = os.lstat(os.path.join(root, name))
                except OSError:
                    continue
                size += s.st_size if name in files else 0
                newest = max(newest, s.st_mtime)
    return size, newest


def _manifest(folder: Path, name: str) -> dict:
    try:
        data = json.loads((folder / name).read_bytes())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _shipped_hash() -> str | None:
    """The shipped model's bundle hash (cdx.models.bundle.manifest_hash of its bundle.json), without torch."""
    from ..defaults import DEFAULT_MODEL

    manifest = _manifest(DEFAULT_MODEL, "bundle.json")
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest() if manifest else None


def _model_label(config: dict, bundle: str | None, shipped: str | None) -> str:
    mods = [m.get("name", "?") for m in config.get("modalities", []) if isinstance(m, dict)] \
        if isinstance(config, dict) else []
    parts = [f"preset {config.get('preset')}" if isinstance(config, dict) and config.get("preset") else "",
             f"({', '.join(mods)})" if mods else ""]
    if bundle:
        label = "the shipped model" if bundle == shipped else f"bundle {bundle[:12]}"
        return f"{' '.join(p for p in parts if p)}, {label}" if any(parts) else label
    return " ".join(p for p in parts if p)


def _kind_of(kind: str, path: Path) -> str:
    """`kind` when `path` (an item of the kind's folder) is an entry cdx wrote there, else FOREIGN."""
    from ..io import artifact_format

    if _TMP_WRITE.match(path.name):
        return UNFINISHED
    if path.is_symlink():
        return FOREIGN
    if kind in ARTIFACT_KINDS:
        return kind if path.is_dir() and artifact_format(path) == ARTIFACT_KINDS[kind] else FOREIGN
    if kind == "openvino":
        ok = path.is_dir() and _HEX24.match(path.name) and all(
            _TMP_WRITE.match(p.name) or (_OPENVINO_FILE.match(p.name) and p.is_file() and not p.is_symlink())
            for p in path.iterdir())
        return kind if ok else FOREIGN
    if kind == "inductor":
        if not _HEX32.match(path.name):
            return kind  # torch's own layout: cdx once handed it all of inductor/ as TORCHINDUCTOR_CACHE_DIR
        ok = path.is_dir() and _manifest(path, INDUCTOR_RECORD).get("format") == INDUCTOR_FORMAT and all(
            _TMP_WRITE.match(p.name) or (p.name in _INDUCTOR_ITEMS and not p.is_symlink()) for p in path.iterdir())
        return kind if ok else FOREIGN
    if kind == "tmp":
        return kind if path.is_dir() and path.name.startswith("edit-") else FOREIGN
    if kind == "verified":
        return kind if path.is_file() and _VERIFIED.match(path.name) else FOREIGN
    return FOREIGN


def _describe(entries: list[Entry]) -> None:
    """Fill in `what`: the model each export, compiled-model and int8 entry was made from."""
    shipped = _shipped_hash()
    exports = {}  # export digest -> its label
    for e in entries:
        if e.kind == "onnx":
            m = _manifest(e.path, "manifest.json")
            e.what = _model_label(m.get("config", {}), m.get("bundle_hash"), shipped)
            if isinstance(m.get("digest"), str):
                exports[m["digest"]] = (e.path.name, e.what)
        elif e.kind == "random":
            m = _manifest(e.path, "bundle.json")
            e.what = _model_label(m.get("config", {}), None, None) + " with random weights"
        elif e.kind == "inductor" and _HEX32.match(e.path.name):
            m = _manifest(e.path, INDUCTOR_RECORD)
            label = _model_label(m.get("config", {}), None, None)
            e.what = ", ".join(p for p in (label, str(m.get("target", ""))) if p)
    for e in entries:
        digest = None
        if e.kind == "openvino":
            digest = next((d for d in exports if d.startswith(e.path.name)), None)
        elif e.kind == "openvino-int8":
            digest = _manifest(e.path, "int8.json").get("export_digest")
        if digest in exports:
            e.what = f"{exports[digest][1]}, from export onnx/{exports[digest][0]}"
        elif e.kind in ("openvino", "openvino-int8"):
            e.what = "from an export no longer in the cache"


def scan(root: Path) -> list[Entry]:
    """Every item of the cache folder `root`, as entries of its kinds (or FOREIGN, or UNFINISHED)."""
    entries = []
    if not root.is_dir():
        return entries
    for top in sorted(root.iterdir()):
        if _TMP_WRITE.match(top.name):
            entries.append(Entry(UNFINISHED, top, *_usage(top)))
        elif top.name not in KINDS or top.is_symlink() or not top.is_dir():
            entries.append(Entry(FOREIGN, top, *_usage(top)))
        else:
            for item in sorted(top.iterdir()):
                try:
                    entries.append(Entry(_kind_of(top.name, item), item, *_usage(item)))
                except OSError:
                    continue  # removed while we looked
    _describe(entries)
    return entries


@click.group()
def cache():
    """The cache folder: list it (ls) or remove what cdx wrote there (clean)."""


@cache.command("ls")
def ls_cmd():
    """Sizes per kind and per model or key of what cdx keeps in its cache folder."""
    from ..defaults import cache_dir

    root = cache_dir()
    entries = scan(root)
    total = sum(e.size for e in entries if e.ours)
    click.echo(f"{root}: {human_size(total)} in {sum(e.ours for e in entries)} entries cdx wrote"
               + ("" if root.is_dir() else " (the folder does not exist yet)"))
    now = time.time()
    for kind in (*KINDS, UNFINISHED, FOREIGN):
        group = [e for e in entries if e.kind == kind]
        if not group:
            continue
        click.echo(f"  {kind:<14} {human_size(sum(e.size for e in group)):>9}  {len(group)} "
                   f"{'entry' if len(group) == 1 else 'entries'}{NOTES.get(kind, '')}")
        for e in ([] if kind == "verified" else sorted(group, key=lambda e: -e.size)):
            name = e.path.relative_to(root)
            click.echo(f"    {str(name):<40} {human_size(e.size):>9}  {human_age(now - e.mtime):>8} ago"
                       + (f"  {e.what}" if e.what else ""))


@cache.command("clean")
@click.option("--older-than", "days", type=float, default=None, metavar="DAYS",
              help="Remove the entries last written more than DAYS days ago.")
@click.option("--all", "everything", is_flag=True, help="Remove every entry cdx wrote.")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
def clean_cmd(days, everything, dry_run):
    """Remove cache entries cdx wrote (--older-than DAYS or --all); nothing else is ever removed."""
    from ..defaults import cache_dir
    from ..errors import InputError
    from ..io import remove_stale

    if (days is None) == (not everything):
        raise InputError("give --older-than DAYS or --all (one of them)")
    if days is not None and not days >= 0:  # NaN fails this too
        raise InputError(f"--older-than {days}: must be a number of days >= 0")
    root = cache_dir()
    entries = scan(root)
    cutoff = time.time() - (days or 0) * 86400
    chosen = [e for e in entries if e.ours and e.kind != UNFINISHED and (everything or e.mtime < cutoff)]
    freed = 0
    for e in chosen:
        click.echo(f"{'would remove' if dry_run else 'removed'} {e.path.relative_to(root)} ({human_size(e.size)})")
        if not dry_run:
            _remove(e.path)
        freed += e.size
    if not dry_run:  # the temporaries of writes whose writer is gone (a live writer's are kept: it holds a lock)
        for parent in {e.path.parent for e in entries if e.kind == UNFINISHED}:
            for name in remove_stale(parent):
                click.echo(f"removed the unfinished write {(parent / name).relative_to(root)}")
    kept = [e for e in entries if e.ours and e.kind != UNFINISHED and e not in chosen]
    foreign = [e for e in entries if not e.ours]
    click.echo(f"{'would free' if dry_run else 'freed'} {human_size(freed)} in {len(chosen)} entries"
               + (f"; kept {len(kept)} newer than {days:g} days" if kept else "")
               + (f"; left {len(foreign)} items cdx did not write" if foreign else ""))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


command = cache
