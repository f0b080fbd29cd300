"""Two UNets as one call (cdx/models/paired_unet.py) against the two UNets run one by one."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from cdx.models.config import preset
from cdx.models.paired_unet import PairedUNet, pairable
from cdx.models.random_init import randomize
from cdx.models.unet import UNet


def unets(context_b: int = 64, **change):
    """Two tiny-preset UNets with different random weights; b may have another context width."""
    cfg = preset("tiny").modalities[0].unet
    a = randomize(UNet(cfg), seed=1).eval()
    b = randomize(UNet(dataclasses.replace(cfg, context_dim=context_b, **change)), seed=2).eval()
    return a, b


def inputs(batch, len_a, len_b, width_b=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 16, 16, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, len_a, 64, generator=g), torch.randn(batch, len_b, width_b, generator=g))


@pytest.mark.parametrize("len_b,width_b", [(77, 64), (19, 64), (77, 48)])
def test_paired_unet_equals_the_two_unets(len_b, width_b):
    a, b = unets(context_b=width_b)
    paired = PairedUNet(a, b).eval()
    x, t, ca, cb = inputs(2, 19, len_b, width_b)
    with torch.no_grad():
        got = paired(x, t, ca, cb)
        want = torch.stack([a(x, t, ca), b(x, t, cb)])
    assert got.shape == want.shape == (2, 2, 3, 16, 16)
    assert want[0].abs().max() > 0.1 and (want[0] - want[1]).abs().max() > 0.1  # two different networks
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-5)


def test_pairing_copies_the_weights():
    a, b = unets()
    before = [p.clone() for p in a.parameters()]
    paired = PairedUNet(a, b)
    with torch.no_grad():
        for p in paired.parameters():
            p.add_(1.0)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))


def test_unets_of_different_shapes_are_refused():
    a, b = unets(model_channels=32)
    assert "model_channels" in pairable(a, b)
    with pytest.raises(ValueError, match="cannot run as one call.*model_channels"):
        PairedUNet(a, b)


@pytest.mark.gpu
def test_gpu_fp16_paired_unet_is_close_to_the_two_unets():
    from cdx.backends.pytorch.cuda import keep_norms_fp32

    a, b = (u.cuda().half() for u in unets())
    keep_norms_fp32(a), keep_norms_fp32(b)  # GroupNorm32 normalises in fp32, as in the runner
    paired = PairedUNet(a, b).eval()
    x, t, ca, cb = (v.cuda() for v in inputs(4, 19, 77))
    with torch.no_grad():
        got = paired(x.half(), t, ca.half(), cb.half()).float()
        want = torch.stack([a(x.half(), t, ca.half()), b(x.half(), t, cb.half())]).float()
    assert (got - want).abs().max().item() <= 2e-2 * want.abs().max().item()
