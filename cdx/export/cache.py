"""The ONNX export cache: the export of a bundle made on first use, keyed by what it was made from.

The key is the bundle's identity after its files are verified against bundle.json (a corrupted copy of a
bundle is refused before it can land under the key of the intact one), the model config the export is
made with (the bundle's, with the guidance scales a request overrides) and the exporter's opset. An entry
is checked on every use (manifest digest, bundle hash, config, file hashes): a damaged one is exported
again; a slot that holds something cdx did not write is left alone and the next slot is used."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, TypeVar

from ..defaults import cache_subdir
from ..errors import CdxError, StaleArtifactError
from ..models.bundle import load_bundle, read_manifest, verified_bundle_hash
from ..models.config import ModelConfig

T = TypeVar("T")
SLOTS = 3  # entries tried per key: a slot taken by a foreign file or folder falls through to the next


def cache_key(digest: str, cfg: ModelConfig, opset: int) -> str:
    ident = {"bundle": digest, "config": cfg.to_dict(), "opset": opset}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def cached_export(checkpoint: Path, progress=None, guidance: dict[str, float] | None = None,
                  freeu: tuple | None = None, feature_cache: int | None = None) -> Path:
    """The ONNX export of `checkpoint` in the cache, made on first use (keyed by the verified bundle hash and
    the effective config, which includes the guidance scales that override the bundle's)."""
    from .manifest import read_export_manifest
    from .onnx_export import DEFAULT_OPSET, export_bundle
    digest = verified_bundle_hash(checkpoint)  # every file against bundle.json (hashed once, then by stat)
    cfg = guided_cfg(ModelConfig.from_dict(read_manifest(checkpoint)["config"]), guidance).with_freeu(freeu)
    cfg = cfg.with_feature_cache(feature_cache)  # the collaborators' cached and shallow graphs too, when asked
    key = cache_key(digest, cfg, DEFAULT_OPSET)

    def verify(folder: Path) -> Path:
        read_export_manifest(folder, expect_bundle_hash=digest, expect_config=json.loads(json.dumps(cfg.to_dict())))
        return folder

    def build(folder: Path, fresh: bool) -> Path:
        model = load_bundle(checkpoint)
        model.cfg = cfg
        export_bundle(checkpoint, folder, model=model, progress=progress, overwrite=not fresh, keep_existing=fresh)
        return folder

    return cached_entry(cache_subdir("onnx"), key, "cdx-onnx", verify, build, "export cache")


def cached_entry(root: Path, key: str, fmt: str, verify: Callable[[Path], T], build: Callable[[Path, bool], T],
                 what: str) -> T:
    """A cache entry under `root`: the first of SLOTS slots for `key` that `verify` accepts, else `build(folder,
    fresh)` in the first slot that is empty (fresh) or holds a damaged entry of format `fmt` (`verify` raised
    StaleArtifactError). A slot holding anything cdx did not write is never replaced or deleted."""
    from ..io import artifact_format

    for slot in range(SLOTS):
        folder = root / (key if slot == 0 else f"{key}-{slot}")
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            continue
        fresh = not (folder.is_dir() and any(folder.iterdir()))
        if not fresh:
            if artifact_format(folder) != fmt:
                continue  # not ours: never replaced, never deleted
            try:
                return verify(folder)
            except StaleArtifactError:
                pass  # damaged or tampered with: made again in its place
        return build(folder, fresh)
    raise CdxError(f"the {what} {root} holds files cdx did not write under the key {key}; move them away "
                   "(or set CDX_CACHE to another folder)")


def guided_cfg(cfg, guidance: dict[str, float] | None):
    """`cfg` with the guidance scales replaced; an unknown modality is a one-line error."""
    if not guidance:
        return cfg
    try:
        return cfg.with_guidance(guidance)
    except KeyError as e:
        raise CdxError(f"--guidance: {e.args[0]}; this model has {', '.join(m.name for m in cfg.modalities)}") \
            from None
