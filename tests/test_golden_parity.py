"""Parity with the official implementation on every golden set: tests/data/golden and CDX_GOLDEN_DIRS.

A golden set is `<name>.json` + `<name>.ckpt` + `<name>_io.pt` (format: tests/data/README.md). The model,
schedule and shaping are rebuilt from the set's own JSON, never from the public set's numbers, so a set of
another architecture is tested the same way.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from golden import golden_dirs
from cdx.sampling.pipeline import to_uint8
from cdx.backends.pytorch.eager import TorchRunner
from cdx.sampling.loop import make_shaping, sample
from cdx.models.schedule import alphas_cumprod, cosine_decay, ddim_table, linear_betas
from cdx.kernels import collaborate
from cdx.models.config import from_official_configs
from cdx.models.convert import convert_official


def golden_sets() -> list[Path]:
    """Every `<name>_io.pt` that has its `.json` and `.ckpt` beside it."""
    sets = []
    for d in golden_dirs():
        for io in sorted(d.glob("*_io.pt")):
            stem = io.name[: -len("_io.pt")]
            if (d / f"{stem}.json").is_file() and (d / f"{stem}.ckpt").is_file():
                sets.append(d / stem)
    return sets


def _ids(paths):
    return [p.name for p in paths]


def _collect() -> tuple[list[Path], str | None]:
    """The sets, or the reason there are none: a missing folder must fail a test, not abort collection."""
    try:
        return golden_sets(), None
    except pytest.fail.Exception as exc:
        return [], str(exc)


SETS, SETS_ERROR = _collect()


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """Max |difference| relative to the reference's max |value|."""
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module", params=SETS, ids=_ids(SETS))
def golden(request):
    stem: Path = request.param
    meta = json.loads(stem.with_suffix(".json").read_text())
    io = torch.load(stem.parent / f"{stem.name}_io.pt", weights_only=True)
    cfg = from_official_configs(meta["configs"], preset_name=stem.name,
                                latent_size=tuple(meta["latent_shape"][1:]))
    assert cfg.latent_channels == meta["latent_shape"][0]
    model = convert_official(stem.with_suffix(".ckpt"), cfg)
    return meta, io, cfg, TorchRunner(model)


def test_golden_sets_found():
    if SETS_ERROR:
        pytest.fail(SETS_ERROR, pytrace=False)
    assert SETS, "no golden set (<name>.json, .ckpt, _io.pt) in any golden folder"


def test_golden_conditioning(golden):
    meta, io, cfg, runner = golden
    ctx_t = runner.run("text_encoder", {"tokens": io["text/token_ids"]})["context"]
    ctx_m = runner.run("mask_encoder", {"mask": io["mask/onehot"]})["context"]
    assert rel_err(ctx_t, io["cond/text"]) <= 1e-5
    assert rel_err(ctx_m, io["cond/seg_mask"]) <= 1e-5


def _single_inputs(io):
    return {"x": io["single/x_t"], "t": io["single/t"]}


def test_golden_single_step_networks(golden):
    meta, io, cfg, runner = golden
    for name, key in (("mask", "seg_mask"), ("text", "text")):
        ctx = io["cond/seg_mask" if name == "mask" else "cond/text"]
        inputs = {**_single_inputs(io), "context": ctx}
        assert rel_err(runner.run(f"{name}_unet", inputs)["eps"], io[f"single/{key}_unet_eps"]) <= 1e-5
        assert rel_err(runner.run(f"{name}_diffuser", inputs)["logits"], io[f"single/{key}_diffuser_raw"]) <= 1e-5


@pytest.mark.parametrize("pp", [True, False], ids=["shaped", "plain"])
def test_golden_single_step_influence(golden, pp):
    meta, io, cfg, runner = golden
    t = int(io["single/t"][0])
    k = cosine_decay(t, cfg.timesteps)
    assert k == pytest.approx(float(io["single/cosine_schedule_scale"]), abs=0)
    eps = torch.stack([io["single/seg_mask_unet_eps"], io["single/text_unet_eps"]])
    logits = torch.stack([io["single/seg_mask_diffuser_raw"], io["single/text_diffuser_raw"]])
    x = io["single/x_t"]
    coeffs = torch.tensor([[0.6, 0.8, 0.9, 0.3, 0.0, 0.1]])  # any update: only eps and the weights are compared
    kwargs = {}
    if pp:
        boost = float(meta["postprocess_defaults"]["seg_mask_scale_factor"])
        kwargs = dict(decay=torch.tensor([[k, 1.0]]), scale=torch.tensor([boost, 1.0]), receiver=1)
    e, _, w = collaborate(eps, logits, x, torch.randn_like(x), coeffs, 0, return_weights=True, **kwargs)
    tag = "single_pp" if pp else "single_nopp"
    assert rel_err(w[0], io[f"{tag}/seg_mask_influence"]) <= 1e-5
    assert rel_err(w[1], io[f"{tag}/text_influence"]) <= 1e-5
    assert rel_err(e, io[f"{tag}/eps"]) <= 1e-5


def _runs(meta):
    return sorted(meta["runs"])


def test_golden_ddim_runs(golden):
    meta, io, cfg, runner = golden
    acp = alphas_cumprod(linear_betas(cfg.timesteps, cfg.linear_start, cfg.linear_end))
    ctx = [io["cond/seg_mask"], io["cond/text"]]
    assert meta["runs"], "golden set has no runs"
    for run, spec in meta["runs"].items():
        table = ddim_table(acp, meta["ddim_steps_requested"], spec["eta"])
        np.testing.assert_array_equal(table.timesteps, io[f"{run}/timesteps"].numpy())
        np.testing.assert_allclose(table.coeffs[:, 5], io[f"{run}/ddim_sigmas"].numpy()[::-1], rtol=1e-6, atol=1e-7)
        shaping = make_shaping(dataclasses.replace(cfg, shaping=spec["postprocess"]), ["mask", "text"], table)
        if spec["postprocess"]:
            np.testing.assert_array_equal(shaping.decay[:, 0], io[f"{run}/cosine_schedule_scale"].numpy())
        out = sample(runner, ["mask", "text"], ctx, io[f"{run}/x_T"], io[f"{run}/noise"], table, shaping,
                     return_influence=True, trace=True)
        assert rel_err(out.trace["eps"][0], io[f"{run}/eps"][0]) <= 1e-5, run
        assert rel_err(out.influence[0, 0], io[f"{run}/seg_mask_influence"][0]) <= 1e-5, run
        assert rel_err(out.influence[:, 1], io[f"{run}/text_influence"]) <= 1e-4, run
        assert rel_err(out.trace["x"], io[f"{run}/x_t_out"]) <= 1e-4, run
        assert rel_err(out.z0, io[f"{run}/z_0"]) <= 1e-4, run
        image = runner.run("vae_decoder", {"latent": out.z0})["image"]
        assert rel_err(image, io[f"{run}/x_0"]) <= 1e-4, run
        diff = np.abs(to_uint8(image).astype(int) - io[f"{run}/x_0_uint8"].numpy().astype(int))
        assert diff.max() <= 1, run


def test_golden_vae_encoder(golden):
    meta, io, cfg, runner = golden
    moments = runner.model.vae.encode_moments(io["vae_enc/x"])
    assert rel_err(moments, io["vae_enc/moments"]) <= 1e-5
    z = runner.run("vae_encoder", {"image": io["vae_enc/x"]})["latent"]
    assert rel_err(z, io["vae_enc/z_scaled"]) <= 1e-5


def test_golden_bundle_round_trip(golden, tmp_path):
    """convert -> save_bundle -> load_bundle keeps every network's output (and fp16 bundles stay close)."""
    from cdx.models.bundle import load_bundle, save_bundle

    meta, io, cfg, runner = golden
    inputs = {"x": io["single/x_t"], "t": io["single/t"], "context": io["cond/text"]}
    ref = runner.run("text_unet", inputs)["eps"]
    save_bundle(runner.model, tmp_path / "b32")
    again = TorchRunner(load_bundle(tmp_path / "b32", verify_hashes=True))
    assert torch.equal(again.run("text_unet", inputs)["eps"], ref)
    save_bundle(runner.model, tmp_path / "b16", dtype=torch.float16)
    half = TorchRunner(load_bundle(tmp_path / "b16"))
    assert 0 < rel_err(half.run("text_unet", inputs)["eps"], ref) <= 1e-2
