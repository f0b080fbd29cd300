"""Classifier-free guidance (`cdx.models.guidance`): the guided collaborator is exactly
eps_u + s (eps_c - eps_u), keeps the UNet's interface through ONNX, and every way to ask for a scale
(bundle config, `--guidance`, an export folder) is honoured or refused with a one-line error."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cdx.cli import main
from cdx.backends.registry import make_runner
from cdx.errors import CdxError
from cdx.export.manifest import read_export_manifest
from cdx.models.bundle import save_bundle
from cdx.models.config import preset
from cdx.models.guidance import GuidedUNet, null_condition
from cdx.models.random_init import random_model


def _inputs(seed: int, batch: int = 2, tokens: int = 77):
    """x, t and a random context of `tokens` tokens (77 for text, 19 class tokens for a mask)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 3, 16, 16), generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn((batch, tokens, 64), generator=g)
    return x, t, ctx


def _by_hand(model, name: str, x, t, ctx, scale: float) -> torch.Tensor:
    m = model.cfg.modality(name)
    with torch.no_grad():
        null = model.encoders[name](null_condition(m))
        cond = model.unets[name](x, t, ctx)
        uncond = model.unets[name](x, t, null.expand(x.shape[0], -1, -1))
    return uncond + scale * (cond - uncond)


@pytest.mark.parametrize("name, scale", [("text", 3.0), ("mask", 0.5)])
def test_guided_collaborator_is_the_cfg_combination(name, scale):
    model = random_model(preset("tiny").with_guidance({name: scale}), seed=3)
    net = model.module(f"{name}_unet")
    assert isinstance(net, GuidedUNet) and net is model.module(f"{name}_unet")  # made once
    other = "mask" if name == "text" else "text"
    assert model.module(f"{other}_unet") is model.unets[other]  # scale 1: the plain UNet
    x, t, ctx = _inputs(11, tokens=77 if name == "text" else 19)
    with torch.no_grad():
        got = net(x, t, ctx)
    want = _by_hand(model, name, x, t, ctx, scale)
    plain = model.unets[name](x, t, ctx)
    assert (want - plain).abs().max() > 1e-3  # guidance changes the prediction
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_null_conditions_are_what_training_drops_to():
    cfg = preset("tiny")
    ids = null_condition(cfg.modality("text"), batch=3)
    assert ids.shape == (3, 77) and ids.dtype == torch.int64 and (ids[0] == ids[2]).all()
    assert int((ids != 0).sum(1)[0]) == 2  # [CLS] [SEP], the empty caption
    mask = null_condition(cfg.modality("mask"))
    assert mask.shape == (1, 19, 1024) and int(mask.abs().sum()) == 0


def test_guided_bundle_through_onnx_matches_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    bundle = tmp_path / "guided"
    save_bundle(random_model(preset("tiny").with_guidance({"text": 2.5}), seed=5), bundle)
    torch_runner, _ = make_runner("torch", bundle, device="cpu")
    ort_runner, _ = make_runner("onnxruntime", bundle)
    assert ort_runner.cfg.modality("text").guidance == 2.5
    x, t, ctx = _inputs(12, batch=3)
    inputs = {"x": x, "t": t, "context": ctx}
    want = torch_runner.run("text_unet", inputs)["eps"]
    got = ort_runner.run("text_unet", inputs)["eps"]
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-4, rtol=1e-3)
    # the bundle's weights are stored in full, but the guided network equals the hand-made combination
    torch.testing.assert_close(want, _by_hand(torch_runner.model, "text", x, t, ctx, 2.5), atol=1e-4, rtol=1e-4)


def test_runtime_guidance_overrides_the_bundle_and_has_its_own_export(tiny_bundle, tiny_export, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    runner, _ = make_runner("torch", tiny_bundle, device="cpu", guidance={"text": 4.0})
    assert runner.cfg.modality("text").guidance == 4.0 and runner.cfg.modality("mask").guidance == 1.0
    x, t, ctx = _inputs(13)
    got = runner.run("text_unet", {"x": x, "t": t, "context": ctx})["eps"]
    torch.testing.assert_close(got, _by_hand(runner.model, "text", x, t, ctx, 4.0), atol=1e-4, rtol=1e-4)

    make_runner("onnxruntime", tiny_bundle)
    make_runner("onnxruntime", tiny_bundle, guidance={"text": 4.0})
    make_runner("onnxruntime", tiny_bundle, guidance={"text": 1.0})  # the bundle's own scale: its export
    # two exports: the bundle's scale (asked for twice) and 4; each folder's manifest records its own
    folders = sorted((tmp_path / "cache" / "onnx").iterdir())
    scales = sorted(next(m["guidance"] for m in read_export_manifest(f)["config"]["modalities"] if m["name"] == "text")
                    for f in folders)
    assert len(folders) == 2 and scales == [1.0, 4.0], scales

    with pytest.raises(CdxError, match="exported with guidance text=1, not 4"):
        make_runner("onnxruntime", tiny_bundle, tiny_export, guidance={"text": 4.0})
    with pytest.raises(CdxError, match="no modality named sketch"):
        make_runner("torch", tiny_bundle, device="cpu", guidance={"sketch": 2.0})


@pytest.mark.parametrize("value, message", [
    ("text", "expected MODALITY=SCALE"),
    ("text=abc", "expected MODALITY=SCALE"),
    ("text=-1", "scale >= 0"),
    ("sketch=2", "no modality named sketch"),
])
def test_run_guidance_errors_are_one_line(tiny_bundle, tmp_path, value, message):
    r = CliRunner().invoke(main, ["run", "--backend", "torch", "--checkpoint", str(tiny_bundle), "--text", "x",
                                  "--guidance", value, "--steps", "1", "--out", str(tmp_path / "o.png")])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "o.png").exists()

