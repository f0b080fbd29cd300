"""Export every network of a bundle to ONNX, with a manifest, into a folder that appears atomically."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from ..errors import InputError
from ..io import atomic_folder, check_folder_target
from ..models.bundle import bundle_hash, file_sha256, load_bundle
from ..models.collab import CollaborativeModel
from .manifest import FORMAT, MAX_OPSET, MIN_OPSET, VERSION, manifest_digest, tensor_entry
from .spec import NetworkSpec, network_specs

DEFAULT_OPSET = 17
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GB limit, with headroom


def random_inputs(spec: NetworkSpec, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Fresh random inputs that respect each input's meaning (token ids, one-hot masks, timesteps)."""
    out = {}
    for t in spec.inputs:
        shape = t.concrete(batch)
        if t.values in ("tokens", "timestep"):
            out[t.name] = torch.randint(0, 1000, shape, generator=generator)
        elif t.values == "onehot":  # (B, classes, tokens): one class per token
            ids = torch.randint(0, shape[1], (shape[0], shape[2]), generator=generator)
            out[t.name] = torch.nn.functional.one_hot(ids, shape[1]).transpose(1, 2).contiguous()
        elif t.values == "image":
            out[t.name] = torch.rand(shape, generator=generator) * 2 - 1
        elif t.values == "unit":
            out[t.name] = torch.rand(shape, generator=generator)
        else:
            out[t.name] = torch.randn(shape, generator=generator)
    return out


def export_network(model: CollaborativeModel, spec: NetworkSpec, path: Path, opset: int) -> None:
    import onnx

    module = model.module(spec.name).eval()
    args = tuple(random_inputs(spec, 2, torch.Generator().manual_seed(0)).values())
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, args, str(path), input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs], dynamic_axes=spec.dynamic_axes(),
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )
    proto = onnx.load(str(path), load_external_data=True)
    big = sum(init.ByteSize() for init in proto.graph.initializer) > EXTERNAL_DATA_BYTES
    for leftover in path.parent.glob("*"):  # the exporter may have written loose external tensors
        if leftover.name not in (path.name,) and not leftover.name.endswith((".onnx", ".onnx.data")):
            leftover.unlink()
    onnx.save_model(proto, str(path), save_as_external_data=big, all_tensors_to_one_file=True,
                    location=f"{path.name}.data" if big else None)
    onnx.checker.check_model(str(path), full_check=True)


def check_opset(opset) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset {opset}: cdx exports opsets {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    return opset


def export_bundle(bundle: str | os.PathLike, out: str | os.PathLike, opset: int = DEFAULT_OPSET,
                  model: CollaborativeModel | None = None, progress=None, overwrite: bool = False,
                  keep_existing: bool = False) -> dict:
    """Export all networks of `bundle` into folder `out` (created atomically: cdx.io.atomic_folder, which
    replaces an existing `out` only when it is a cdx export and `overwrite` is set); returns the manifest."""
    bundle, out = Path(bundle), Path(out)
    check_opset(opset)
    check_folder_target(out, FORMAT, overwrite or keep_existing)
    model = model or load_bundle(bundle)
    specs = network_specs(model.cfg)
    with atomic_folder(out, FORMAT, overwrite=overwrite, keep_existing=keep_existing) as tmp:
        nets = {}
        for name, spec in specs.items():
            if progress:
                progress(name)
            sub = tmp / name  # one folder per export so loose external-data files cannot collide
            sub.mkdir()
            export_network(model, spec, sub / f"{name}.onnx", opset)
            for f in sub.iterdir():
                os.replace(f, tmp / f.name)
            sub.rmdir()
            nets[name] = {
                "file": f"{name}.onnx",
                "sha256": file_sha256(tmp / f"{name}.onnx"),
                "data": {f.name: file_sha256(f) for f in [tmp / f"{name}.onnx.data"] if f.exists()},
                "inputs": [tensor_entry(t) for t in spec.inputs],
                "outputs": [tensor_entry(t) for t in spec.outputs],
            }
        manifest = {"format": FORMAT, "version": VERSION, "opset": opset, "bundle_hash": bundle_hash(bundle),
                    "config": model.cfg.to_dict(), "networks": nets}
        manifest["digest"] = manifest_digest(manifest)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest
