"""An ONNX export folder's `manifest.json`: its schema, the digest that covers all of it (config included),
and the check of every file (hashed once, re-checked when it changes; a graph's inputs and outputs must be
those of the network it is listed as)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..errors import StaleArtifactError
from ..integrity import verified_sha256
from ..models.bundle import checked_config, is_sha256

FORMAT = "cdx-onnx"
VERSION = 1
MIN_OPSET, MAX_OPSET = 14, 20  # the range checked to export (torch 2, TorchScript exporter) and run (ONNX Runtime)


def reexport_hint(folder: Path) -> str:
    return f"re-export it with `cdx export --checkpoint BUNDLE --out {folder} --overwrite`"


def manifest_digest(manifest: dict) -> str:
    """sha256 over the whole manifest but its own `digest`: an edited field (the config's guidance, eta,
    shaping, timesteps) no longer matches."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tensor_entry(t) -> dict:
    return {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}


def read_export_manifest(folder: str | os.PathLike, expect_bundle_hash: str | None = None,
                         verify_files: bool = True, expect_config: dict | None = None) -> dict:
    """Load and check an export folder's manifest; refuse anything stale, malformed, truncated or tampered."""
    from .spec import network_specs

    folder = Path(folder)
    mpath = folder / "manifest.json"
    hint = reexport_hint(folder)
    if not mpath.is_file():
        raise StaleArtifactError(f"{folder}: no manifest.json, not a cdx export; {hint}")
    try:
        manifest = json.loads(mpath.read_bytes())
    except (ValueError, RecursionError):
        manifest = None
    except OSError as e:
        raise StaleArtifactError(f"{mpath}: cannot read it ({e.strerror or e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise StaleArtifactError(f"{mpath}: malformed or foreign manifest; {hint}")

    def bad(why):
        return StaleArtifactError(f"{mpath}: malformed export manifest ({why}); {hint}")

    opset = manifest.get("opset")
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise bad("opset")
    if not is_sha256(manifest.get("bundle_hash")):
        raise bad("bundle_hash")
    cfg = checked_config(manifest.get("config"), str(mpath), hint)
    specs = network_specs(cfg)
    nets = manifest.get("networks")
    if not isinstance(nets, dict) or set(nets) != set(specs):
        raise bad("networks do not match its config")
    for name, spec in specs.items():
        entry = nets[name]
        data = entry.get("data", {}) if isinstance(entry, dict) else None
        ok = (isinstance(entry, dict) and entry.get("file") == f"{name}.onnx" and is_sha256(entry.get("sha256"))
              and isinstance(data, dict) and set(data) <= {f"{name}.onnx.data"}
              and all(is_sha256(v) for v in data.values())
              and entry.get("inputs") == [tensor_entry(t) for t in spec.inputs]
              and entry.get("outputs") == [tensor_entry(t) for t in spec.outputs])
        if not ok:
            raise bad(f"entry of {name} does not match its config")
    if manifest.get("digest") != manifest_digest(manifest):
        raise StaleArtifactError(f"{mpath}: edited since export (its digest does not match); {hint}")
    if expect_bundle_hash is not None and manifest["bundle_hash"] != expect_bundle_hash:
        raise StaleArtifactError(f"{folder}: exported from another checkpoint than the one given; {hint}")
    if expect_config is not None and manifest["config"] != expect_config:
        raise StaleArtifactError(f"{folder}: exported with another model config than the one asked for; {hint}")
    if verify_files:
        _verify_files(folder, manifest, specs, hint)
    return manifest


def _verify_files(folder: Path, manifest: dict, specs: dict, hint: str) -> None:
    want = {}
    for name, entry in manifest["networks"].items():
        want[entry["file"]] = (name, entry["sha256"])
        want.update({f: (name, digest) for f, digest in entry.get("data", {}).items()})

    def check_graph(fname: str, path: Path) -> None:
        name = want[fname][0]
        if fname == f"{name}.onnx":
            _check_graph_io(path, specs[name], hint)

    got = verified_sha256(folder, list(want), on_hashed=check_graph)
    for fname, (_, digest) in want.items():
        if got[fname] != digest:
            raise StaleArtifactError(f"{folder / fname}: missing, truncated or modified since export; {hint}")


def _check_graph_io(path: Path, spec, hint: str) -> None:
    """The graph's input and output names, dtypes and fixed sizes are the spec's (a swapped file is refused)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as e:  # onnx raises DecodeError and others for a file that is no ONNX model
        raise StaleArtifactError(f"{path}: not a readable ONNX model ({type(e).__name__}); {hint}") from None
    dtypes = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}

    def matches(values, tensors) -> bool:
        if [v.name for v in values] != [t.name for t in tensors]:
            return False
        for v, t in zip(values, tensors):
            tt = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
            if tt.elem_type != dtypes.get(t.dtype) or len(dims) != len(t.shape):
                return False
            if any(g is not None and g != e for g, e in zip(dims, t.shape)):  # a symbolic size matches any
                return False
        return True

    init = {i.name for i in graph.initializer}
    inputs = [v for v in graph.input if v.name not in init]
    if not (matches(inputs, spec.inputs) and matches(graph.output, spec.outputs)):
        raise StaleArtifactError(f"{path}: its inputs and outputs are not those of {spec.name} (another "
                                 f"network's graph?); {hint}")
