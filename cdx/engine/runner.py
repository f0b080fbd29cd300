"""One runner interface for every backend: named tensors in, named tensors out.

The sampling loop only calls `runner.run(network, inputs)` (or, under a CUDA graph, `enqueue`); it never
asks which backend it drives. A backend registers its runner's factory in `cdx.engine.backends`.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..export.spec import NetworkSpec, network_specs
from ..models.collab import CollaborativeModel
from ..models.config import ModelConfig


class Runner(Protocol):
    """What every backend's runner provides."""

    backend: str  # the registry name it was made by (or a variant, e.g. "torch-cuda")
    cfg: ModelConfig  # the model it runs: modalities, guidance, shaping, sizes
    device: torch.device  # where `run` returns its outputs (and where the loop keeps x)
    specs: dict[str, NetworkSpec]  # every network it can run, by name (cdx.export.spec)

    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Named inputs (any device, fp32 or int64) -> named fp32 outputs on `device`; synchronous."""
        ...

    def net_dtype(self, network: str) -> torch.dtype:
        """The dtype `network` computes in (its `enqueue` outputs come in it)."""
        ...


class EnqueueRunner(Runner, Protocol):
    """A runner whose networks can be launched on the current CUDA stream with no host synchronisation,
    which is what lets `cuda_graph.py` capture a step: the torch CUDA path and TensorRT."""

    def enqueue(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Launch `network` on the current stream on device inputs; outputs in its dtype, not synchronised."""
        ...


class TorchRunner:
    """The reference backend: the PyTorch modules, fp32 on CPU, any dtype on CUDA."""

    backend = "torch"

    def __init__(self, model: CollaborativeModel, device: str | torch.device = "cpu", dtype=torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        self.model = model.to(self.device).eval()
        self.cfg = model.cfg
        self.specs = network_specs(model.cfg)
        self._modules = {}
        if dtype != torch.float32:
            from ..models.unet import GroupNorm32

            for m in model.cfg.modalities:  # encoders stay fp32: they run once per request
                for net in (model.unets[m.name], model.diffusers[m.name]):
                    net.to(dtype)
                    for norm in net.modules():  # GroupNorm32 normalises an fp32 copy: fp32 parameters
                        if isinstance(norm, GroupNorm32):
                            norm.float()
        for m in model.cfg.modalities:  # a guided collaborator's null context: made now, never inside a capture
            if m.guidance != 1.0:
                self._module(f"{m.name}_unet")

    def _module(self, name: str):
        if name not in self._modules:
            self._modules[name] = self.model.module(name)
        return self._modules[name]

    def net_dtype(self, name: str):
        return self.dtype if self.specs[name].kind in ("unet", "diffuser") else torch.float32

    @torch.inference_mode()
    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        spec = self.specs[network]
        dt = self.net_dtype(network)
        args = []
        for t in spec.inputs:
            v = inputs[t.name].to(self.device)
            args.append(v.to(dt) if v.is_floating_point() else v)
        out = self._module(network)(*args)
        return {spec.outputs[0].name: out.float() if out.dtype != torch.float32 else out}
