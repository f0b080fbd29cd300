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

from ..defaults import cache_subdir
from ..errors import CdxError, StaleArtifactError
from ..models.bundle import load_bundle, read_manifest, verified_bundle_hash
from ..models.config import ModelConfig

SLOTS = 3  # entries tried per key: a slot taken by a foreign file or folder falls through to the next


def cache_key(digest: str, cfg: ModelConfig, opset: int) -> str:
    ident = {"bundle": digest, "config": cfg.to_dict(), "opset": opset}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def cached_export(checkpoint: Path, progress=None, guidance: dict[str, float] | None = None,
                  freeu: tuple | None = None) -> Path:
    """The ONNX export of `checkpoint` in the cache, made on first use (keyed by the verified bundle hash and
    the effective config, which includes the guidance scales that override the bundle's)."""
    from ..export.manifest import read_export_manifest
    from ..export.onnx_export import DEFAULT_OPSET, export_bundle
    from ..io import artifact_format

    digest = verified_bundle_hash(checkpoint)  # every file against bundle.json (hashed once, then by stat)
    cfg = _guided_cfg(ModelConfig.from_dict(read_manifest(checkpoint)["config"]), guidance).with_freeu(freeu)
    key = cache_key(digest, cfg, DEFAULT_OPSET)
    root = cache_subdir("onnx")
    for slot in range(SLOTS):
        folder = root / (key if slot == 0 else f"{key}-{slot}")
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            continue
        if folder.is_dir() and any(folder.iterdir()):
            if artifact_format(folder) != "cdx-onnx":
                continue  # not ours: never replaced, never deleted
            try:
                read_export_manifest(folder, expect_bundle_hash=digest,
                                     expect_config=json.loads(json.dumps(cfg.to_dict())))
                return folder
            except StaleArtifactError:
                fresh = False  # damaged or tampered with: export it again in its place
        else:
            fresh = True
        model = load_bundle(checkpoint)
        model.cfg = cfg
        export_bundle(checkpoint, folder, model=model, progress=progress, overwrite=not fresh, keep_existing=fresh)
        return folder
    raise CdxError(f"the export cache {root} holds files cdx did not write under the key {key}; move them away "
                   "(or set CDX_CACHE to another folder)")


def _guided_cfg(cfg, guidance: dict[str, float] | None):
    """`cfg` with the guidance scales replaced; an unknown modality is a one-line error."""
    if not guidance:
        return cfg
    try:
        return cfg.with_guidance(guidance)
    except KeyError as e:
        raise CdxError(f"--guidance: {e.args[0]}; this model has {', '.join(m.name for m in cfg.modalities)}") \
            from None
