"""The native checkpoint bundle: a folder holding `bundle.json` (config and file hashes) and one
safetensors file per network. Written into a temporary folder and renamed into place, so an
interrupted save leaves nothing a later load would accept."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CdxError, StaleArtifactError
from ..integrity import file_sha256, verified_sha256
from ..io import atomic_folder
from .collab import CollaborativeModel
from .config import ModelConfig

FORMAT = "cdx-bundle"
VERSION = 1


REBUILD = "re-create it with `cdx convert` or `cdx train assemble`"
_HEX = frozenset("0123456789abcdef")


def manifest_hash(manifest: dict) -> str:
    """The bundle's identity: sha256 of its canonical manifest (config + every file's sha256)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """safetensors' `save_file`, the file then given the mode the user's umask gives a new file: safetensors
    writes through a private temporary file (0600 whatever the umask), bundle.json beside it gets 0644."""
    save_file(tensors, str(path), metadata=metadata)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def save_bundle(model: CollaborativeModel, out: str | os.PathLike, extra: dict | None = None,
                dtype: torch.dtype = torch.float32, overwrite: bool = False) -> str:
    """Write `model` as a bundle folder at `out`, atomically; returns its hash. An existing `out` is replaced
    only when it is a cdx bundle and `overwrite` is set (cdx.io.atomic_folder).

    `dtype=torch.float16` halves the files (the shipped model); loading always casts to fp32."""
    with atomic_folder(out, FORMAT, overwrite=overwrite) as tmp:
        files = {}
        for name, net in model.networks().items():
            state = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().cpu()
                     for k, v in net.state_dict().items()}
            path = tmp / f"{name}.safetensors"
            save_tensors(state, path)
            files[name] = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}
        manifest = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(), "files": files,
                    "extra": extra or {}}
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=1))
    return manifest_hash(manifest)


def is_sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _HEX


def is_count(v) -> bool:
    """A non-negative integer (JSON's true/false are not)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def non_finite(obj, where: str = "") -> str | None:
    """The path of the first NaN or infinite number in a JSON value, else None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return where or "value"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        bad = non_finite(v, f"{where}.{k}" if where else str(k))
        if bad:
            return bad
    return None


def checked_config(d, source: str, rebuild: str) -> ModelConfig:
    """A manifest's `config` as a ModelConfig, or one line naming `source` and how to rebuild it."""
    from .freeu import FREEU_MAX

    def bad(why):
        return StaleArtifactError(f"{source}: malformed model config ({why}); {rebuild}")

    if not isinstance(d, dict):
        raise bad("not an object")
    where = non_finite(d)
    if where:
        raise bad(f"{where} is not a finite number")
    try:
        cfg = ModelConfig.from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise bad(f"{type(e).__name__}: {e}") from None
    checks = [
        (is_count(cfg.timesteps) and 2 <= cfg.timesteps <= 100_000, "timesteps"),
        (isinstance(cfg.linear_start, (int, float)) and isinstance(cfg.linear_end, (int, float))
         and 0 < cfg.linear_start < cfg.linear_end < 1, "linear_start/linear_end"),
        (isinstance(cfg.scale_factor, (int, float)) and cfg.scale_factor > 0, "scale_factor"),
        (isinstance(cfg.eta, (int, float)) and 0 <= cfg.eta <= 1, "eta"),
        (len(cfg.latent_size) == 2 and all(is_count(v) and 0 < v <= 4096 for v in cfg.latent_size), "latent_size"),
        (len(cfg.modalities) >= 1 and len({m.name for m in cfg.modalities}) == len(cfg.modalities), "modalities"),
        (cfg.freeu is None or (len(cfg.freeu) == 4 and all(0 <= v <= FREEU_MAX for v in cfg.freeu)), "freeu"),
    ]
    from .modalities import kinds

    for raw, m in zip(d["modalities"], cfg.modalities):
        words = raw.get("vocabulary")
        checks.append((words is None or (isinstance(words, list) and all(isinstance(w, str) for w in words)),
                       f"{m.name}.vocabulary"))
        checks += [(m.kind in kinds(), f"{m.name}.kind"), (m.decay in ("cosine", "none"), f"{m.name}.decay"),
                   (m.influence_scale > 0, f"{m.name}.influence_scale"),
                   (0 <= m.guidance <= 100, f"{m.name}.guidance")]
    wrong = [name for ok, name in checks if not ok]
    if wrong:
        raise bad(f"{', '.join(wrong)} out of range")
    return cfg


def read_manifest(path: str | os.PathLike) -> dict:
    """`bundle.json`, schema-checked: any malformed content is one line naming the file and the fix."""
    path = Path(path)
    mpath = path / "bundle.json"
    if not path.is_dir() or not mpath.is_file():
        raise CdxError(f"{path}: not a cdx bundle (no bundle.json); make one with `cdx convert` or `cdx train`")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CdxError(f"{mpath}: malformed bundle manifest ({e.__class__.__name__}); {REBUILD}") from None
    except OSError as e:
        raise CdxError(f"{mpath}: cannot read it ({e.strerror or e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CdxError(f"{mpath}: not a version-{VERSION} cdx bundle manifest; {REBUILD}")
    checked_config(manifest.get("config"), str(mpath), REBUILD)
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise StaleArtifactError(f"{mpath}: malformed bundle manifest (no files); {REBUILD}")
    for name, entry in files.items():
        ok = (isinstance(entry, dict) and entry.get("file") == f"{name}.safetensors"
              and is_sha256(entry.get("sha256")) and is_count(entry.get("bytes")))
        if not ok:
            raise StaleArtifactError(f"{mpath}: malformed entry for {name!r} (file, sha256, bytes); {REBUILD}")
    if not isinstance(manifest.get("extra", {}), dict):
        raise StaleArtifactError(f"{mpath}: malformed bundle manifest (extra); {REBUILD}")
    return manifest


def verify_files(path: str | os.PathLike, manifest: dict | None = None) -> dict:
    """Every file of the bundle against bundle.json's size and sha256 (hashed once, then re-checked only when
    a file's size or times change); returns the manifest."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    entries = manifest["files"].values()
    for entry in entries:
        f = path / entry["file"]
        if not f.is_file() or f.stat().st_size != entry["bytes"]:
            raise StaleArtifactError(f"{f}: missing or truncated; {REBUILD}")
    got = verified_sha256(path, [e["file"] for e in entries])
    for entry in entries:
        if got[entry["file"]] != entry["sha256"]:
            raise StaleArtifactError(f"{path / entry['file']}: content does not match bundle.json (sha256); "
                                     f"{REBUILD}")
    return manifest


def verified_bundle_hash(path: str | os.PathLike) -> str:
    """The bundle's identity, once its files are checked to be the ones its manifest names."""
    return manifest_hash(verify_files(path))


def stored_dtype(path: str | os.PathLike) -> torch.dtype:
    """float16 when every floating tensor of the bundle's files is stored in half precision, else float32."""
    path = Path(path)
    seen = set()
    for entry in read_manifest(path)["files"].values():
        with safe_open(str(path / entry["file"]), framework="pt") as f:
            seen |= {f.get_slice(k).get_dtype() for k in f.keys()}
    floats = {d for d in seen if d.startswith(("F", "BF"))}
    return torch.float16 if floats == {"F16"} else torch.float32


def bundle_hash(path: str | os.PathLike) -> str:
    return manifest_hash(read_manifest(path))


def load_bundle(path: str | os.PathLike, verify_hashes: bool = True, dtype=torch.float32) -> CollaborativeModel:
    """Build the model from the bundle's config and load every network's weights (strictly), after checking
    every file against bundle.json (`verify_hashes=False`: sizes only) and every weight to be finite."""
    path = Path(path)
    manifest = verify_files(path) if verify_hashes else read_manifest(path)
    cfg = ModelConfig.from_dict(manifest["config"])  # read_manifest checked it
    try:
        with torch.device("meta"):
            model = CollaborativeModel(cfg)
    except Exception as e:  # the modules' own constructors reject impossible sizes, each in its own way
        raise StaleArtifactError(f"{path}: its config describes no buildable model ({type(e).__name__}); "
                                 f"{REBUILD}") from None
    nets = model.networks()
    if set(nets) != set(manifest["files"]):
        raise StaleArtifactError(f"{path}: bundle networks {sorted(manifest['files'])} do not match its config")
    for name, net in nets.items():
        entry = manifest["files"][name]
        fpath = path / entry["file"]
        if not fpath.is_file() or fpath.stat().st_size != entry["bytes"]:
            raise StaleArtifactError(f"{fpath}: missing or truncated; {REBUILD}")
        try:
            state = load_file(str(fpath))
        except (SafetensorError, OSError) as e:
            raise StaleArtifactError(f"{fpath}: unreadable safetensors ({e})") from None
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        missing, unexpected = _diff_keys(net.state_dict(), state)
        if missing or unexpected:
            raise StaleArtifactError(f"{fpath}: keys do not match the config (missing {missing[:5]}, "
                                     f"unexpected {unexpected[:5]})")
        bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise StaleArtifactError(f"{fpath}: weight {bad} holds NaN or infinite values; {REBUILD}")
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise StaleArtifactError(f"{fpath}: tensor shapes do not match the config "
                                     f"({str(e).strip().splitlines()[-1].strip()})") from None
    return model.eval()


def _diff_keys(expected: dict, got: dict) -> tuple[list, list]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
