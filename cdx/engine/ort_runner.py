"""The ONNX Runtime backend: the embedded default on CPU (CUDA provider where onnxruntime-gpu is)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import StaleArtifactError
from ..export.onnx_export import FORMAT, VERSION
from ..export.spec import network_specs
from ..models.bundle import file_sha256
from ..models.config import ModelConfig


def reexport_hint(folder: Path) -> str:
    return f"re-export it with `cdx export --checkpoint BUNDLE --out {folder}`"


def read_export_manifest(folder: str | os.PathLike, expect_bundle_hash: str | None = None,
                         verify_files: bool = True) -> dict:
    """Load and check an export folder's manifest; refuse anything stale, truncated or tampered."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise StaleArtifactError(f"{folder}: no manifest.json, not a cdx export; {reexport_hint(folder)}")
    try:
        manifest = json.loads(mpath.read_text())
        ok = manifest.get("format") == FORMAT and manifest.get("version") == VERSION
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        ok = False
    if not ok:
        raise StaleArtifactError(f"{mpath}: malformed or foreign manifest; {reexport_hint(folder)}")
    if expect_bundle_hash is not None and manifest["bundle_hash"] != expect_bundle_hash:
        raise StaleArtifactError(f"{folder}: exported from another checkpoint than the one given; "
                                 f"{reexport_hint(folder)}")
    if verify_files:
        for name, entry in manifest["networks"].items():
            files = {entry["file"]: entry["sha256"], **entry.get("data", {})}
            for fname, digest in files.items():
                f = folder / fname
                if not f.is_file() or file_sha256(f) != digest:
                    raise StaleArtifactError(f"{f}: missing, truncated or modified since export; "
                                             f"{reexport_hint(folder)}")
    return manifest


def ort_providers() -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if "CUDAExecutionProvider" in have and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner:
    """Runs an export folder's graphs; sessions are created on first use of each network."""

    backend = "onnxruntime"

    def __init__(self, folder: str | os.PathLike, expect_bundle_hash: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None):
        self.folder = Path(folder)
        self.manifest = read_export_manifest(self.folder, expect_bundle_hash)
        self.cfg = ModelConfig.from_dict(self.manifest["config"])
        self.specs = network_specs(self.cfg)
        self.providers = providers or ort_providers()
        self.device = torch.device("cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu")
        self.threads = threads or os.cpu_count() or 1
        self._sessions = {}

    def session(self, network: str):
        if network not in self._sessions:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = self.threads
            opts.inter_op_num_threads = 1
            opts.log_severity_level = 3
            # Between graphs the loop runs torch ops on the same cores: spinning ORT workers would starve them.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            path = self.folder / self.manifest["networks"][network]["file"]
            try:
                self._sessions[network] = ort.InferenceSession(str(path), opts, providers=self.providers)
            except Exception as e:  # onnxruntime raises its own exception types for a corrupt model
                raise StaleArtifactError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0][:120]}); "
                                         f"{reexport_hint(self.folder)}") from None
        return self._sessions[network]

    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.specs[network]
        feed = {}
        for t in spec.inputs:
            v = inputs[t.name].detach().cpu().numpy()
            feed[t.name] = np.ascontiguousarray(v.astype(np.int64 if t.dtype == "int64" else np.float32, copy=False))
        outs = self.session(network).run([t.name for t in spec.outputs], feed)
        return {t.name: torch.from_numpy(o).to(self.device) for t, o in zip(spec.outputs, outs)}
