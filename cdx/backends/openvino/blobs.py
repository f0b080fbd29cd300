"""The OpenVINO backend's compiled-model cache: blobs cdx writes itself and checks on every use.

A network compiled for one batch is exported (`CompiledModel.export_model`) to `cdx-<key>.blob` in the
runner's cache folder, its record `cdx-<key>.json` (format "cdx-openvino-blob": the blob's sha256 and size)
written first, both atomically. A later process reads the blob once, hashes exactly the bytes it imports and
imports them only when they are the ones recorded: a damaged, truncated or replaced blob, an unreadable
record (malformed JSON, nesting too deep to parse) or a blob OpenVINO refuses is compiled again and
rewritten, with a one-line notice. The key covers the network, the batch, the compile properties, the
model's own hash, the OpenVINO version and the CPU, so a blob is only ever imported where it was made for.
A blob at cdx's name without cdx's record is not cdx's: it is left alone and the network compiled in
memory. An unwritable cache only costs compiling again next time.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

from ...io import atomic_write_bytes, atomic_write_text, read_json

FORMAT = "cdx-openvino-blob"
VERSION = 1


def blob_key(ident: dict) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str).encode()
                          ).hexdigest()[:32]


def _record(path: Path) -> dict | None:
    """The record at `path` if it is a well-formed one of cdx's; None if it is missing or unreadable."""
    try:
        doc = read_json(path, limit=1 << 16)
    except (OSError, ValueError):
        return None
    ok = (isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == VERSION
          and isinstance(doc.get("sha256"), str) and isinstance(doc.get("bytes"), int))
    return doc if ok else None


def load_or_compile(core, model, config: dict, folder: Path | None, key: str,
                    notice: Callable[[str], None]):
    """The compiled `model` (compiled with `config` on the CPU): imported from folder/cdx-<key>.blob when
    that blob is intact, else compiled and (where the cache is usable) written there with its record."""
    if folder is None:
        return core.compile_model(model, "CPU", config)
    blob, rec = folder / f"cdx-{key}.blob", folder / f"cdx-{key}.json"
    has_record, has_blob = os.path.lexists(rec), os.path.lexists(blob)
    record = _record(rec) if has_record else None
    if has_blob and not has_record:  # not written by cdx (cdx writes the record first): never replaced
        notice(f"openvino cache: {blob} was not written by cdx; left alone, compiling in memory")
        return core.compile_model(model, "CPU", config)
    if has_blob and blob.is_file():
        why = f"has an unreadable record ({rec.name})" if record is None else None
        if record is not None:
            compiled, why = _import(core, blob, record, config)
            if compiled is not None:
                return compiled
        notice(f"openvino cache: {blob.name} {why}; compiling it again")
    elif has_record and record is None:
        notice(f"openvino cache: {rec.name} is unreadable; writing it again")
    compiled = core.compile_model(model, "CPU", config)
    _write(compiled, blob, rec)
    return compiled


def _import(core, blob: Path, record: dict, config: dict):
    """(the compiled model, None) from an intact blob; (None, why not) otherwise."""
    try:
        data = blob.read_bytes()
    except OSError as e:
        return None, f"is unreadable ({e.strerror or e})"
    if len(data) != record["bytes"] or hashlib.sha256(data).hexdigest() != record["sha256"]:
        return None, "is damaged (not the bytes cdx wrote)"
    try:
        return core.import_model(data, "CPU", config), None
    except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError with a multi-line trace for a bad blob
        return None, f"cannot be imported ({(str(e).splitlines() or [''])[0][:80]})"


def _write(compiled, blob: Path, rec: Path) -> None:
    try:
        data = compiled.export_model()
        data = data.getvalue() if hasattr(data, "getvalue") else bytes(data)
    except Exception:  # noqa: BLE001 - a plugin that cannot export: the model runs uncached
        return
    doc = {"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    try:
        atomic_write_text(rec, json.dumps(doc))  # the record first: a blob without one is never cdx's
        atomic_write_bytes(blob, data)
    except OSError:
        pass  # an unwritable cache only costs compiling again next time
