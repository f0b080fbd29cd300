"""`--init-from BUNDLE`: start a stage from the trained weights of an existing bundle (fine-tuning).

A stage's fresh module is filled from the bundle's part of the same name (the autoencoder, one
modality's UNet and condition encoder, or the dynamic diffusers); the architecture must match
exactly. The stage's manifest records the bundle's hash and the bundle's record of that part, so the
provenance reaches `assemble`.
"""
from __future__ import annotations

import os

from torch import nn

from ..errors import InputError
from ..models.bundle import load_bundle, manifest_hash, read_manifest


def bundle_part(model, part: str) -> nn.Module:
    """'vae', 'collaborator:<name>' (ModuleDict unet, encoder) or 'diffusers' (ModuleDict by name)."""
    if part == "vae":
        return model.vae
    if part == "diffusers":
        return nn.ModuleDict({name: model.diffusers[name] for name in model.diffusers})
    kind, _, name = part.partition(":")
    if kind == "collaborator" and name in model.unets:
        return nn.ModuleDict({"unet": model.unets[name], "encoder": model.encoders[name]})
    raise InputError(f"--init-from: the bundle has no {part!r}")


def init_from_bundle(module: nn.Module, path: str | os.PathLike, part: str) -> dict:
    """Copy `part` of the bundle at `path` into `module` in place. Returns what the stage's manifest records
    of its start: `init_from` (the bundle's hash) and `init_stage` (the bundle's own record of how that part
    was trained, when it has one), so that a chain of fine-tuning legs keeps every leg's record."""
    src = bundle_part(load_bundle(path), part)
    try:
        module.load_state_dict(src.state_dict(), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(f"--init-from {path}: its {part} does not match this preset ({first})") from None
    manifest = read_manifest(path)
    record = ((manifest.get("extra") or {}).get("stages") or {}).get(part)
    return {"init_from": manifest_hash(manifest), **({"init_stage": record} if record else {})}
