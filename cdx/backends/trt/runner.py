"""The TensorRT backend of the Runner interface: one plan, one execution context and preallocated
device buffers per network.

Buffers are torch CUDA tensors sized for the profile's largest batch and bound once with
set_tensor_address, so their addresses never change; a smaller batch uses a prefix of each buffer.
`enqueue` copies the inputs in, calls execute_async_v3 on the torch stream and returns views of the
output buffers without synchronising, so a CUDA graph can capture it (call it once with the same
shapes before capturing); `capture` records such a body through cuda-python (graph.py). `run`
returns copies, as every runner does.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ...errors import CdxError, InputError, StaleArtifactError
from ...export.spec import network_specs
from ...models.config import ModelConfig
from .env import require_tensorrt
from .manifest import check_engine_manifest, rebuild_hint

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "INT8": torch.int8, "UINT8": torch.uint8, "BOOL": torch.bool}


class _Engine:
    """A deserialised plan with its execution context and I/O buffers."""

    def __init__(self, trt, runtime, plan: Path, device: torch.device):
        # Not polygraphy's EngineFromBytes: it sets runtime.engine_host_code_allowed, which lets a
        # version-compatible plan run the code it carries; cdx builds no such plan and loads none.
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise StaleArtifactError(f"{plan}: TensorRT could not deserialise it; {rebuild_hint(plan.parent)}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.limits = {n: tuple(tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)) for n in self.inputs}
        self.shapes = {}
        for n in self.inputs:  # largest shapes first, so output buffers get their largest size
            self._set_shape(n, self.limits[n][2])
        self.buffers = {}
        for n in names:
            dtype = _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name]
            self.buffers[n] = torch.empty(tuple(self.context.get_tensor_shape(n)), dtype=dtype, device=device)
            self.context.set_tensor_address(n, self.buffers[n].data_ptr())

    def _set_shape(self, name: str, shape: tuple) -> None:
        if self.shapes.get(name) != shape:
            if not self.context.set_input_shape(name, shape):
                raise InputError(f"TensorRT refused shape {shape} for input {name!r}")
            self.shapes[name] = shape

    def view(self, name: str, shape: tuple) -> torch.Tensor:
        return self.buffers[name].view(-1)[:math.prod(shape)].view(shape)  # prefix of the max-size buffer

    def enqueue(self, inputs: dict[str, torch.Tensor], stream: torch.cuda.Stream) -> dict[str, torch.Tensor]:
        for n in self.inputs:
            shape = tuple(inputs[n].shape)
            lo, _, hi = self.limits[n]
            if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                raise InputError(f"input {n!r} has shape {shape}; this engine takes {lo} to {hi} "
                                 "(rebuild with `cdx build-engine --batch MIN,OPT,MAX`)")
            self._set_shape(n, shape)
            self.view(n, shape).copy_(inputs[n], non_blocking=True)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise CdxError("TensorRT failed to enqueue the engine (its log above says why)")
        return {n: self.view(n, tuple(self.context.get_tensor_shape(n))) for n in self.outputs}


class TensorRTRunner:
    """Runs the engines of an engine folder built by `build_engines`, checked against its manifest."""

    backend = "tensorrt"

    def __init__(self, engine_dir, onnx_dir=None, device: str | torch.device = "cuda", networks=None,
                 verify_plans: bool = False):
        trt = require_tensorrt()
        self._trt = trt
        self.engine_dir = Path(engine_dir)
        self.device = torch.device(device)
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        with torch.cuda.device(self.device):
            self.manifest = check_engine_manifest(engine_dir, onnx_dir, networks=networks, verify_plans=verify_plans)
            self.cfg = ModelConfig.from_dict(self.manifest["config"])
            names = list(self.manifest["networks"]) if networks is None else list(networks)
            self.specs = {n: s for n, s in network_specs(self.cfg).items() if n in names}
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)  # must outlive the engines it deserialised
            self._engines = {n: _Engine(trt, self._runtime, self.engine_dir / self.manifest["networks"][n]["file"],
                                        self.device) for n in self.specs}

    def _engine(self, network: str) -> _Engine:
        if network not in self._engines:
            raise InputError(f"no engine for {network!r} in {self.engine_dir}; it has {', '.join(self._engines)}")
        return self._engines[network]

    def enqueue(self, network: str, inputs: dict[str, torch.Tensor],
                stream: torch.cuda.Stream | None = None) -> dict[str, torch.Tensor]:
        """Launch `network` on `stream` (default: torch's current one); returns views of its output
        buffers, valid until the next enqueue of the same network. No host synchronisation."""
        stream = stream or torch.cuda.current_stream(self.device)
        with torch.cuda.stream(stream):
            return self._engine(network).enqueue(inputs, stream)

    def net_dtype(self, network: str) -> torch.dtype:
        """The dtype of the engine's (first) output buffer, which `enqueue` returns views of."""
        eng = self._engine(network)
        return eng.buffers[eng.outputs[0]].dtype

    def capture(self, fn, device=None):
        """A CUDA graph of `fn`'s launches, captured through cuda-python (graph.py); `.replay()` runs it."""
        from .graph import capture

        return capture(fn, device or self.device)

    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.specs[network]
        stream = torch.cuda.current_stream(self.device)
        outs = self.enqueue(network, {t.name: inputs[t.name] for t in spec.inputs}, stream)
        return {t.name: outs[t.name].float() if outs[t.name].dtype != torch.float32 else outs[t.name].clone()
                for t in spec.outputs}

    def refit(self, network: str, weights: dict, strict: bool = True) -> int:
        """Replace weights of a refittable engine, by ONNX initializer name; returns how many were set.

        The values must be laid out as the ONNX initializers are (e.g. transposed MatMul weights).
        Written against TensorRT's Refitter: polygraphy has no refit loader. Captured loops of this
        runner are dropped (cuda_graph.forget): they are captured again with the new weights."""
        trt, eng = self._trt, self._engine(network)
        if not eng.engine.refittable:
            raise CdxError(f"the {network} engine was built without --refittable; "
                           f"{rebuild_hint(self.engine_dir, None, self.manifest, '--refittable')}")
        torch.cuda.current_stream(self.device).synchronize()  # no launch may read the weights meanwhile
        refitter = trt.Refitter(eng.engine, self._logger)
        known = set(refitter.get_all_weights())
        unknown = sorted(set(weights) - known)
        if unknown and strict:
            raise InputError(f"{network} has no refittable weights named {', '.join(unknown[:5])}")
        held = []  # trt.Weights does not copy: keep the arrays alive until the refit is done
        for name in sorted(set(weights) & known):
            proto = refitter.get_weights_prototype(name)
            w = weights[name]
            arr = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
            arr = np.ascontiguousarray(arr, dtype=trt.nptype(proto.dtype))
            if arr.size != proto.size:
                raise InputError(f"refit weight {name!r} has {arr.size} values, the engine holds {proto.size}")
            held.append(arr)
            if not refitter.set_named_weights(name, trt.Weights(arr)):
                raise CdxError(f"TensorRT rejected refit weight {name!r} of {network}")
        missing = refitter.get_missing_weights()
        if missing:
            raise InputError(f"refit of {network} also needs {', '.join(sorted(missing)[:5])}")
        if not refitter.refit_cuda_engine():
            raise CdxError(f"TensorRT failed to refit {network} (its log above says why)")
        from ...sampling.graph.capture import forget

        forget(self)
        return len(held)

    def refit_from_onnx(self, network: str, onnx_path) -> int:
        """Refit from the initializers of an ONNX file with the same graph (e.g. a re-export)."""
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(onnx_path), load_external_data=True)
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return self.refit(network, weights, strict=False)
