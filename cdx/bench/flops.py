"""How much arithmetic an image costs and how close to the machine's limit a backend runs: the GFLOP of each
network (torch's FlopCounterMode on one call at batch 1), the network evaluations and GFLOP of one image for
given sampling settings, and this machine's measured matmul peak in fp32 and bf16."""
from __future__ import annotations

import time

import torch

from ..export.onnx_export import random_inputs
from ..export.spec import network_specs
from ..sampling.settings import Sampling


def network_gflop(model) -> dict[str, float]:
    """{network: GFLOP of one call at batch 1} for every network of `model`'s config (a multiply-add is 2 FLOP)."""
    from torch.utils.flop_counter import FlopCounterMode

    g = torch.Generator().manual_seed(0)
    out = {}
    for name, spec in network_specs(model.cfg).items():
        inputs = random_inputs(spec, 1, g)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model.module(name)(*(inputs[t.name] for t in spec.inputs))
        out[name] = counter.get_total_flops() / 1e9
    return out


def evaluations(cfg, sampling: Sampling, names: list[str]) -> dict[str, int]:
    """Network calls of one image: encoders once, per step each modality's collaborator (full or, with feature
    caching, shallow), the diffusers every `influence_interval` steps (none for one modality), the VAE decoder
    once. Influence gating's savings depend on the image and are not counted."""
    n = sampling.table(cfg).num_steps
    k = sampling.cache_interval
    full = -(-n // k)  # refresh steps: 0, K, 2K, ...
    calls = {f"{m}_encoder": 1 for m in names}
    for m in names:
        calls[f"{m}_unet" if k == 1 else f"{m}_unet_full"] = full
        if k > 1:
            calls[f"{m}_unet_shallow"] = n - full
        if len(names) > 1:
            calls[f"{m}_diffuser"] = -(-n // sampling.influence_interval)
    calls["vae_decoder"] = 1
    return calls


def image_cost(gflop: dict[str, float], calls: dict[str, int]) -> dict:
    """{"evaluations": collaborator and diffuser calls of the loop, "gflop": of the whole image}."""
    loop = sum(c for name, c in calls.items() if "_unet" in name or name.endswith("_diffuser"))
    return {"evaluations": loop, "gflop": round(sum(gflop[name] * c for name, c in calls.items()), 2)}


def matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of repeated n x n matmuls in `dtype` on this CPU with torch's threads (a short probe)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)  # warm-up
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        count += 1
    return 2 * n ** 3 * count / (time.perf_counter() - t0) / 1e9
