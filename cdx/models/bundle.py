"""The native checkpoint bundle: a folder holding `bundle.json` (config and file hashes) and one
safetensors file per network. Written into a temporary folder and renamed into place, so an
interrupted save leaves nothing a later load would accept."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import CdxError, StaleArtifactError
from .collab import CollaborativeModel
from .config import ModelConfig

FORMAT = "cdx-bundle"
VERSION = 1


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_hash(manifest: dict) -> str:
    """The bundle's identity: sha256 of its canonical manifest (config + every file's sha256)."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def save_bundle(model: CollaborativeModel, out: str | os.PathLike, extra: dict | None = None,
                dtype: torch.dtype = torch.float32) -> str:
    """Write `model` as a bundle folder at `out` (replacing an existing bundle); returns its hash.

    `dtype=torch.float16` halves the files (the shipped model); loading always casts to fp32."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        files = {}
        for name, net in model.networks().items():
            state = {k: v.detach().to(dtype if v.is_floating_point() else v.dtype).contiguous().cpu()
                     for k, v in net.state_dict().items()}
            path = tmp / f"{name}.safetensors"
            save_file(state, str(path))
            files[name] = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}
        manifest = {"format": FORMAT, "version": VERSION, "config": model.cfg.to_dict(), "files": files,
                    "extra": extra or {}}
        (tmp / "bundle.json").write_text(json.dumps(manifest, indent=1))
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest_hash(manifest)


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    mpath = path / "bundle.json"
    if not path.is_dir() or not mpath.is_file():
        raise CdxError(f"{path}: not a cdx bundle (no bundle.json); make one with `cdx convert` or `cdx train`")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CdxError(f"{mpath}: malformed bundle manifest ({e.__class__.__name__})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CdxError(f"{mpath}: not a version-{VERSION} cdx bundle")
    return manifest


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


def load_bundle(path: str | os.PathLike, verify_hashes: bool = False, dtype=torch.float32) -> CollaborativeModel:
    """Build the model from the bundle's config and load every network's weights (strictly)."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        cfg = ModelConfig.from_dict(manifest["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CdxError(f"{path}: bundle config is malformed ({e})") from None
    with torch.device("meta"):
        model = CollaborativeModel(cfg)
    nets = model.networks()
    if set(nets) != set(manifest["files"]):
        raise StaleArtifactError(f"{path}: bundle networks {sorted(manifest['files'])} do not match its config")
    for name, net in nets.items():
        entry = manifest["files"][name]
        fpath = path / entry["file"]
        if not fpath.is_file() or fpath.stat().st_size != entry["bytes"]:
            raise StaleArtifactError(f"{fpath}: missing or truncated; re-create the bundle")
        if verify_hashes and file_sha256(fpath) != entry["sha256"]:
            raise StaleArtifactError(f"{fpath}: content does not match bundle.json; re-create the bundle")
        try:
            state = load_file(str(fpath))
        except (SafetensorError, OSError) as e:
            raise StaleArtifactError(f"{fpath}: unreadable safetensors ({e})") from None
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        missing, unexpected = _diff_keys(net.state_dict(), state)
        if missing or unexpected:
            raise StaleArtifactError(f"{fpath}: keys do not match the config (missing {missing[:5]}, "
                                     f"unexpected {unexpected[:5]})")
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise StaleArtifactError(f"{fpath}: tensor shapes do not match the config ({str(e).splitlines()[-1].strip()})") from None
    return model.eval()


def _diff_keys(expected: dict, got: dict) -> tuple[list, list]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
