"""Feature caching (DeepCache): the full call's eps and the shallow call around its cache are the plain
UNet's exactly (plain, guided and FreeU collaborators, every branch); the exported graphs against torch;
interval 1 is the plain loop; an interval > 1 through the API on torch and ONNX Runtime."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from cdx.models.config import preset
from cdx.models.deepcache import CachingUNet, ShallowUNet, cache_shape
from cdx.models.random_init import random_model

CAPTION = "This person has brown hair."


def inputs(cfg, m, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, *cfg.latent_size, generator=g), torch.tensor([900, 13][:batch]),
            torch.randn(batch, 77 if m.kind == "text" else 19, m.context_dim, generator=g))


@pytest.mark.parametrize("variant", ["plain", "guided", "freeu"])
def test_full_and_shallow_calls_are_the_unet_exactly(variant):
    cfg = preset("tiny")
    if variant == "guided":
        cfg = cfg.with_guidance({"text": 3.0})
    if variant == "freeu":
        cfg = cfg.with_freeu((1.1, 1.2, 0.9, 0.8))
    model = random_model(cfg, seed=3).eval()
    m = cfg.modality("text")
    unet = model.module("text_unet")
    x, t, c = inputs(cfg, m)
    with torch.no_grad():
        ref = unet(x, t, c)
        for branch in range(len(model.unets["text"].output_blocks) - 1):
            eps, cache = CachingUNet(unet, branch)(x, t, c)
            want = cache_shape(m.unet, branch, cfg.latent_size)
            assert tuple(cache.shape) == (2, want[0] * (2 if variant == "guided" else 1), *want[1:])
            assert torch.equal(eps, ref) and torch.equal(ShallowUNet(unet, branch)(x, t, c, cache), ref)


def test_the_model_names_the_cached_networks_only_with_feature_caching():
    cfg = preset("tiny")
    model = random_model(cfg.with_feature_cache(1), seed=1)
    assert isinstance(model.module("mask_unet_full"), CachingUNet)
    assert isinstance(model.module("mask_unet_shallow"), ShallowUNet)
    model.cfg = cfg
    with pytest.raises(KeyError, match="feature caching is off"):
        model.module("mask_unet_full")
    assert "feature_cache" not in cfg.to_dict()  # absent when off: bundle and export keys unchanged


def test_exported_cached_graphs_match_torch(tiny_bundle, tmp_path):
    pytest.importorskip("polygraphy")
    from cdx.backends.pytorch.eager import TorchRunner
    from cdx.export.onnx_export import export_bundle
    from cdx.export.verify import TOLERANCE, verify_export
    from cdx.models.bundle import load_bundle

    model = load_bundle(tiny_bundle)
    model.cfg = model.cfg.with_feature_cache(1)
    export_bundle(tiny_bundle, tmp_path / "onnx", model=model)
    worst = verify_export(TorchRunner(model), tmp_path / "onnx", seed=5)
    assert {"text_unet_full", "text_unet_shallow", "mask_unet_full", "mask_unet_shallow"} <= set(worst)
    assert max(worst.values()) <= TOLERANCE


def test_interval_one_is_the_plain_loop_and_an_interval_runs_on_every_backend(tiny_bundle):
    import cdx

    torch_pipe = cdx.Pipeline.load(tiny_bundle, backend="torch")
    kw = dict(text=CAPTION, mask=np.zeros((32, 32), np.uint8), seed=4, steps=6, sampler="dpmpp-2m")
    plain = torch_pipe(**kw)
    assert np.array_equal(torch_pipe(**kw, cache_interval=1).arrays, plain.arrays)
    cached = torch_pipe(**kw, cache_interval=3)
    ort = cdx.Pipeline.load(tiny_bundle, backend="onnxruntime")(**kw, cache_interval=3)
    assert np.abs(cached.arrays.astype(int) - ort.arrays.astype(int)).max() <= 2  # the same maths, to rounding
    assert not np.array_equal(cached.arrays, plain.arrays)  # the shallow steps did change something
    assert "feature" not in torch_pipe.description
