"""The fused GroupNorm+SiLU kernel (cdx/kernels/group_norm_silu.py) against the torch ops it replaces.

The Triton kernel runs on CPU under TRITON_INTERPRET=1 (set per test); inputs are fresh random tensors
with a non-zero mean and random affine parameters, shapes chosen so a group slab spans several blocks
and ends inside one. The folded modules are checked inside whole UNets against the reference runner.
"""
from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from cdx.backends.pytorch.eager import TorchRunner
from cdx.backends.pytorch.cuda import GroupNormSiLU, cuda_runner, fold_norm_silu
from cdx.kernels.group_norm_silu import (BLOCK, group_norm_silu, group_norm_silu_reference, group_norm_silu_triton,
                                         kernel_reason)
from cdx.models.config import preset
from cdx.models.random_init import random_model
from cdx.models.unet import ResBlock

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def case(b, c, h, w, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(b, c, h, w, generator=g) + 0.7).to(dtype)
    weight, bias = 1 + 0.3 * torch.randn(c, generator=g), 0.2 * torch.randn(c, generator=g)
    return x, weight, bias


@needs_triton
@pytest.mark.parametrize("shape,groups,seed", [((2, 64, 8, 8), 32, 1), ((1, 96, 12, 20), 32, 2),
                                               ((3, 8, 5, 7), 4, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_kernel_matches_the_torch_ops(interpret, shape, groups, seed, dtype):
    x, weight, bias = case(*shape, dtype, seed)
    assert kernel_reason(x) is None
    got = group_norm_silu_triton(x, groups, weight, bias, 1e-5)
    want = group_norm_silu_reference(x, groups, weight, bias, 1e-5)
    assert got.dtype == dtype and got.shape == x.shape
    exact = torch.nn.functional.silu(torch.nn.functional.group_norm(x.double(), groups, weight.double(),
                                                                    bias.double(), 1e-5))
    # fp32: fp32 arithmetic; fp16: at most twice the error torch's own ops make against float64
    tol = 2e-5 if dtype == torch.float32 else 2 * (want.double() - exact).abs().max().item() + 1e-3
    assert (got.double() - exact).abs().max().item() <= tol


@needs_triton
def test_a_slab_longer_than_several_blocks(interpret):
    x, weight, bias = case(1, 64, 32, 33, torch.float32, 4)  # slab 2 * 1056 values: three blocks, one partial
    assert (64 // 32) * 32 * 33 > 2 * BLOCK
    torch.testing.assert_close(group_norm_silu_triton(x, 32, weight, bias, 1e-6),
                               group_norm_silu_reference(x, 32, weight, bias, 1e-6), rtol=1e-5, atol=1e-5)


@needs_triton
def test_interpreter_switched_on_after_triton_was_imported():
    script = """
import os, torch, triton, triton.language  # compiled mode first, as when another test imported triton
os.environ["TRITON_INTERPRET"] = "1"
from cdx.kernels.group_norm_silu import group_norm_silu_reference, group_norm_silu_triton
g = torch.Generator().manual_seed(7)
x, w, b = 3 * torch.randn(2, 64, 8, 8, generator=g) + 0.5, torch.randn(64, generator=g), torch.randn(64, generator=g)
err = (group_norm_silu_triton(x, 32, w, b, 1e-5) - group_norm_silu_reference(x, 32, w, b, 1e-5)).abs().max()
print(float(err))
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-5


def test_without_the_kernel_it_is_the_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, weight, bias = case(2, 32, 4, 4, torch.float32, 5)
    assert kernel_reason(x) is not None  # CPU tensors without the interpreter
    assert torch.equal(group_norm_silu(x, 8, weight, bias, 1e-5), group_norm_silu_reference(x, 8, weight, bias, 1e-5))
    with pytest.raises(RuntimeError, match="group_norm_silu"):
        group_norm_silu_triton(x, 8, weight, bias, 1e-5)
    assert kernel_reason(x.to(memory_format=torch.channels_last)) is not None


def test_fold_takes_every_norm_silu_pair_of_a_unet_and_keeps_its_outputs(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    unet = random_model(preset("tiny"), seed=1).unets["text"]
    ref = copy.deepcopy(unet)
    pairs = 2 * sum(isinstance(m, ResBlock) for m in unet.modules()) + 1  # both halves of each, the head
    assert fold_norm_silu(unet) == pairs
    assert sum(type(m) is GroupNormSiLU for m in unet.modules()) == pairs
    for seq in unet.modules():  # the SiLU after each folded norm is gone
        if isinstance(seq, torch.nn.Sequential) and type(seq[0]) is GroupNormSiLU:
            assert type(seq[1]) is torch.nn.Identity
    g = torch.Generator().manual_seed(2)
    x, t, ctx = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 900]), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad():
        assert torch.equal(unet(x, t, ctx), ref(x, t, ctx))  # the fallback is the same torch ops


@needs_triton
def test_runner_with_the_kernel_matches_the_reference_runner(interpret):
    model = random_model(preset("tiny"), seed=3)
    ref = TorchRunner(model)
    fast = cuda_runner(copy.deepcopy(model), "fp32", "cpu", fuse_norm_silu=True)
    assert sum(type(m) is GroupNormSiLU for m in fast.model.modules()) > 0
    assert not any(type(m) is GroupNormSiLU for m in fast.model.vae.modules())
    g = torch.Generator().manual_seed(4)
    for net in ("text_unet", "mask_diffuser"):
        spec = ref.specs[net]
        inputs = {"x": torch.randn(1, 3, 16, 16, generator=g), "t": torch.tensor([321]),
                  "context": torch.randn(spec.inputs[2].concrete(1), generator=g)}
        want, got = ref.run(net, inputs), fast.run(net, inputs)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-4)



@pytest.mark.gpu
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_kernel_matches_the_torch_ops(dtype):
    x, weight, bias = (t.cuda() for t in case(4, 320, 32, 32, dtype, 6))
    got = group_norm_silu_triton(x, 32, weight, bias, 1e-5)
    want = group_norm_silu_reference(x, 32, weight, bias, 1e-5)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-3 if dtype == torch.float16 else 1e-5,
                               atol=2e-3 if dtype == torch.float16 else 1e-5)
