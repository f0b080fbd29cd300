"""The OpenVINO backend (CPU): the same ONNX export ONNX Runtime runs, compiled by OpenVINO with static
shapes per request shape, the compiled models kept in cdx's cache as blobs with recorded hashes (`blobs.py`).

A network is read from the export once, reshaped to the concrete shapes of a batch (its spec's "batch"
axis made a number) and compiled for that batch on first use; a later process with the same export and
the same batch imports the compiled blob from the cache instead of compiling again, after checking that its
bytes are the ones cdx wrote (a damaged blob is compiled again, with a one-line notice). The cache folder
is keyed by the export manifest's digest (which covers the bundle hash, the config and every file hash),
as the ONNX export cache is keyed by the bundle: another export never meets these blobs.

One runner may be shared by threads: an infer request runs one inference at a time, so `run` holds a lock
from the compile to the copy of the outputs.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from ...defaults import cache_subdir
from ...errors import StaleArtifactError
from ...export.manifest import read_export_manifest, reexport_hint
from ...export.spec import network_specs
from ...models.config import ModelConfig


def openvino_version() -> str | None:
    try:
        import openvino

        return openvino.__version__
    except ImportError:
        return None


def compiled_cache_dir(manifest: dict) -> Path:
    """Where OpenVINO keeps the compiled models of the export `manifest` describes."""
    return cache_subdir("openvino", manifest["digest"][:24])


class OpenVinoRunner:
    """Runs an export folder's graphs with OpenVINO on the CPU, one static-shape compiled model per
    (network, batch)."""

    backend = "openvino"
    thread_safe = True  # `run` holds the runner's lock: threads sharing it take turns on its infer requests

    def __init__(self, folder: str | os.PathLike, expect_bundle_hash: str | None = None, threads: int | None = None,
                 cache: bool = True, precision: str = "f32", notice=None):
        import openvino as ov

        self.folder = Path(folder)
        self.manifest = read_export_manifest(self.folder, expect_bundle_hash)
        self.cfg = ModelConfig.from_dict(self.manifest["config"])
        self.specs = network_specs(self.cfg)
        self.device = torch.device("cpu")
        self.threads = threads or os.cpu_count() or 1
        self.precision = precision  # "f32": the export's own arithmetic, so the image matches torch's
        self.cache = compiled_cache_dir(self.manifest) if cache else None
        self.core = ov.Core()
        self.int8: dict[str, Path] = {}  # network -> its int8 model (openvino_int8.py), read instead of the export
        self._read: dict[str, object] = {}
        self._compiled: dict[tuple[str, int], object] = {}
        self._requests: dict[tuple[str, int], object] = {}
        self._lock = threading.RLock()
        self.notice = notice or (lambda msg: print(msg, file=sys.stderr, flush=True))

    def config(self) -> dict:
        """The compile properties: latency (one stream, all cores on one request), fp32 unless asked."""
        return {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                "INFERENCE_PRECISION_HINT": self.precision}

    def use_int8(self, models: dict[str, Path]) -> None:
        """Run these networks from their int8 models from now on."""
        with self._lock:
            self.int8 = dict(models)
            for key in [k for k in self._compiled if k[0] in self.int8]:
                del self._compiled[key], self._requests[key]
            for name in self.int8:
                self._read.pop(name, None)

    def _source_hash(self, network: str) -> dict:
        """What the compiled model is made from: the int8 model's file hashes, or the export's."""
        if network in self.int8:
            from ...integrity import verified_sha256

            xml = Path(self.int8[network])
            return verified_sha256(xml.parent, [xml.name, xml.with_suffix(".bin").name])
        entry = self.manifest["networks"][network]
        return {"onnx": entry["sha256"], **entry.get("data", {})}

    def _blob_key(self, network: str, batch: int) -> str:
        from .blobs import blob_key

        return blob_key({"network": network, "batch": batch, "config": self.config(),
                         "model": self._source_hash(network), "openvino": openvino_version(),
                         "cpu": self.core.get_property("CPU", "FULL_DEVICE_NAME"),
                         "capabilities": self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")})

    def _model(self, network: str):
        if network not in self._read:
            path = self.int8.get(network) or self.folder / self.manifest["networks"][network]["file"]
            try:
                self._read[network] = self.core.read_model(str(path))
            except Exception as e:  # OpenVINO raises RuntimeError with a multi-line trace for a corrupt model
                raise StaleArtifactError(f"{path}: OpenVINO cannot read it ({str(e).splitlines()[0][:120]}); "
                                         f"{reexport_hint(self.folder)}") from None
        return self._read[network]

    def compiled(self, network: str, batch: int):
        """The compiled model of `network` for `batch` (compiled, or imported from the cache, on first use)."""
        from .blobs import load_or_compile

        key = (network, batch)
        with self._lock:
            if key not in self._compiled:
                model = self._model(network).clone()
                spec = self.specs[network]
                model.reshape({t.name: list(t.concrete(batch)) for t in spec.inputs})  # static shapes
                blob = self._blob_key(network, batch) if self.cache is not None else ""
                self._compiled[key] = load_or_compile(self.core, model, self.config(), self.cache, blob, self.notice)
                self._requests[key] = self._compiled[key].create_infer_request()
            return self._compiled[key]

    def net_dtype(self, network: str) -> torch.dtype:
        return torch.float32

    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.specs[network]
        feed = {}
        for t in spec.inputs:
            v = inputs[t.name].detach().cpu().numpy()
            feed[t.name] = np.ascontiguousarray(v.astype(np.int64 if t.dtype == "int64" else np.float32, copy=False))
        batch = int(feed[spec.inputs[0].name].shape[0])
        with self._lock:  # one inference at a time per request ("Infer Request is busy" otherwise)
            compiled = self.compiled(network, batch)
            request = self._requests[(network, batch)]
            request.infer(feed, share_inputs=True)
            # the request's output buffers are reused by its next call: copy them out
            return {t.name: torch.from_numpy(np.array(request.get_tensor(compiled.output(t.name)).data))
                    for t in spec.outputs}
