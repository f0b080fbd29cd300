"""The ONNX Runtime backend: the embedded default on CPU (CUDA provider where onnxruntime-gpu is)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import StaleArtifactError
from ..export.cache import cached_export
from ..export.manifest import read_export_manifest, reexport_hint
from ..export.spec import network_specs
from ..models.bundle import bundle_hash
from ..models.config import ModelConfig
from ..privacy import onnxruntime_imported, telemetry_off
from . import checks
from .registry import Backend, BackendRequest, Runner, register_backend

telemetry_off()  # before any import of onnxruntime: no device id under ~/.cache/Microsoft, no usage events


def ort_providers() -> list[str]:
    import onnxruntime as ort

    onnxruntime_imported(ort)
    have = ort.get_available_providers()
    if "CUDAExecutionProvider" in have and torch.cuda.is_available():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OrtRunner:
    """Runs an export folder's graphs; sessions are created on first use of each network."""

    backend = "onnxruntime"

    def __init__(self, folder: str | os.PathLike, expect_bundle_hash: str | None = None, threads: int | None = None,
                 providers: list[str] | None = None, io_binding: bool | None = None):
        self.folder = Path(folder)
        self.manifest = read_export_manifest(self.folder, expect_bundle_hash)
        self.cfg = ModelConfig.from_dict(self.manifest["config"])
        self.specs = network_specs(self.cfg)
        self.providers = providers or ort_providers()
        self.device = torch.device("cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu")
        self.threads = threads or os.cpu_count() or 1
        # bind torch tensors in place of host copies: on by default on CUDA, where each copy is a round trip
        self.io_binding = self.device.type == "cuda" if io_binding is None else bool(io_binding)
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

    def net_dtype(self, network: str) -> torch.dtype:
        return torch.float32  # the export is fp32 throughout

    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.io_binding:
            return self._run_bound(network, inputs)
        spec = self.specs[network]
        feed = {}
        for t in spec.inputs:
            v = inputs[t.name].detach().cpu().numpy()
            feed[t.name] = np.ascontiguousarray(v.astype(np.int64 if t.dtype == "int64" else np.float32, copy=False))
        outs = self.session(network).run([t.name for t in spec.outputs], feed)
        return {t.name: torch.from_numpy(o).to(self.device) for t, o in zip(spec.outputs, outs)}

    def _run_bound(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """ONNX Runtime reads the inputs and writes the outputs in torch tensors on `device`, in place:
        no copy through the host per call (I/O binding)."""
        spec = self.specs[network]
        dev = self.device
        kind, index = dev.type, dev.index if dev.index is not None else 0
        binding = self.session(network).io_binding()
        keep = []
        for t in spec.inputs:
            want = torch.int64 if t.dtype == "int64" else torch.float32
            v = inputs[t.name].detach().to(device=dev, dtype=want).contiguous()
            keep.append(v)
            binding.bind_input(t.name, kind, index, np.int64 if t.dtype == "int64" else np.float32, tuple(v.shape),
                               v.data_ptr())
        batch = int(keep[0].shape[0])
        outs = {}
        for t in spec.outputs:
            o = torch.empty(t.concrete(batch), dtype=torch.float32, device=dev)
            binding.bind_output(t.name, kind, index, np.float32, tuple(o.shape), o.data_ptr())
            outs[t.name] = o
        if kind == "cuda":
            torch.cuda.synchronize(dev)  # the inputs come from torch's stream; ONNX Runtime runs on its own
        self.session(network).run_with_iobinding(binding)
        return outs


def _ort_why_not(req: BackendRequest) -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    if req.checkpoint is None and req.engine_dir is None:
        return "it needs --checkpoint or --engine-dir"
    if req.dtype not in (None, torch.float32):
        return (f"it runs the fp32 export; --dtype {checks.dtype_name(req.dtype)} is for the torch backend on CUDA and "
                "TensorRT engines")
    if req.device is not None and torch.device(req.device).type == "cuda":
        if ort_providers()[0] != "CUDAExecutionProvider":
            return "--device cuda needs onnxruntime-gpu (its CUDA execution provider) and a CUDA device"
    return None


def _ort_factory(req: BackendRequest) -> Runner:
    providers = ["CPUExecutionProvider"] if req.device is not None and torch.device(req.device).type == "cpu" \
        else None
    if req.engine_dir is not None:
        expect = bundle_hash(req.checkpoint) if req.checkpoint is not None else None  # refuse a foreign export
        runner = OrtRunner(req.engine_dir, expect_bundle_hash=expect, providers=providers)
        checks.check_built_in(runner, req)
        return runner
    folder = cached_export(req.checkpoint, req.progress, req.guidance, req.freeu, req.feature_cache)
    return OrtRunner(folder, expect_bundle_hash=bundle_hash(req.checkpoint), providers=providers)


def _ort_describe(runner) -> str:
    return f"onnxruntime ({', '.join(runner.providers)}) on {runner.folder}"


register_backend(Backend("onnxruntime", _ort_why_not, _ort_factory, _ort_describe))
