"""One runner interface for every backend: named tensors in, named tensors out.

The sampling loop only calls `runner.run(network, inputs)` (or, under a CUDA graph, `enqueue`); it never
asks which backend it drives. A backend registers its runner's factory in `cdx.backends`.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..export.spec import NetworkSpec
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
    which is what lets `graph/capture.py` capture a step: the torch runners and TensorRT."""

    def enqueue(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Launch `network` on the current stream on device inputs; outputs in its dtype, not synchronised."""
        ...
