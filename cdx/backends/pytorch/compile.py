"""The torch.compile backend ("torch-compile"): the torch runner's networks compiled by inductor, on the
CPU (C++/OpenMP kernels) or CUDA (Triton kernels, launched inside cdx's CUDA-graph loop).

Each network is compiled for the static shapes it is first called with (`dynamic=False`), once per
shape; the first call of a shape says on stderr that it is compiling. Inductor keeps what it compiled
in its on-disk caches (FX graph cache, compiled kernels) under $CDX_CACHE/inductor unless
TORCHINDUCTOR_CACHE_DIR says otherwise, so a second process recompiles nothing it has seen.

On CUDA the default mode is "max-autotune-no-cudagraphs": inductor autotunes its kernels but leaves the
CUDA graphs to `cuda_graph.py`, which captures the compiled networks as it captures the eager ones
(inductor's own graphs cannot be captured inside another capture).
"""
from __future__ import annotations

import os
import sys

import torch

from ...defaults import cache_dir
from .eager import TorchRunner, named_outputs

CPU_MODE, CUDA_MODE = "default", "max-autotune-no-cudagraphs"


def inductor_cache() -> str:
    """Where inductor caches what it compiles (set once for this process, before the first compile)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


class CompiledRunner:
    """A TorchRunner (or its CUDA fast-path subclass) whose loop networks run through torch.compile.
    The encoders and the VAE run eagerly: they run once per request, compiling them would cost more."""

    backend = "torch-compile"

    def __init__(self, base: TorchRunner, mode: str | None = None, notice=None):
        self.base = base
        self.cfg, self.device, self.specs = base.cfg, base.device, base.specs
        self.dtype, self.streams = base.dtype, getattr(base, "streams", 1)
        self.mode = mode or (CUDA_MODE if self.device.type == "cuda" else CPU_MODE)
        self.cache = inductor_cache()
        self.notice = notice or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._compiled: dict[str, object] = {}
        self._seen: set[tuple] = set()

    def net_dtype(self, network: str) -> torch.dtype:
        return self.base.net_dtype(network)

    def module(self, network: str):
        if self.specs[network].kind not in ("unet", "diffuser"):
            return self.base.model.module(network)
        if network not in self._compiled:
            self._compiled[network] = torch.compile(self.base.model.module(network), mode=self.mode, dynamic=False)
        return self._compiled[network]

    def _args(self, network: str, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        dt = self.net_dtype(network)
        args = []
        for t in self.specs[network].inputs:
            v = inputs[t.name].to(self.device)
            args.append(v.to(dt) if v.is_floating_point() else v)
        key = (network, *(tuple(a.shape) for a in args))
        if key not in self._seen and self.specs[network].kind in ("unet", "diffuser"):
            self._seen.add(key)
            self.notice(f"torch.compile: compiling {network} for {tuple(args[0].shape)} ({self.mode}; first use of "
                        f"this shape, cached in {self.cache})")
        return args

    def enqueue(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Launch the compiled network on the current stream (CUDA-graph capture); outputs in its dtype."""
        with torch.inference_mode():
            return named_outputs(self.specs[network], self.module(network)(*self._args(network, inputs)))

    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.float().contiguous() for k, v in self.enqueue(network, inputs).items()}
