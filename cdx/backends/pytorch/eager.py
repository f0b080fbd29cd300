"""The reference backend's runner: the PyTorch modules, fp32 on CPU, any dtype on CUDA."""
from __future__ import annotations

import torch

from ...export.spec import network_specs
from ...models.collab import CollaborativeModel


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
            from ...models.unet import GroupNorm32

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
        outs = named_outputs(spec, self._module(network)(*args))
        return {k: v.float() if v.dtype != torch.float32 else v for k, v in outs.items()}

    @torch.inference_mode()
    def enqueue(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run `network` on the current stream; inputs already on the device. Floating inputs are cast to
        the network's dtype; outputs keep its dtype and layout (what a CUDA-graph capture records)."""
        spec = self.specs[network]
        dt = self.net_dtype(network)
        args = [v.to(dt) if v.is_floating_point() else v for v in (inputs[t.name] for t in spec.inputs)]
        return named_outputs(spec, self.model.module(network)(*args))


def named_outputs(spec, out) -> dict[str, torch.Tensor]:
    """A module's output (a tensor, or a tuple for a network with several outputs) by the spec's names."""
    outs = out if isinstance(out, tuple) else (out,)
    return {t.name: o for t, o in zip(spec.outputs, outs)}
