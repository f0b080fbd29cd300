"""The modality registry: a model with a third kind of condition runs through the API on torch and on ONNX
Runtime, and through `cdx run --cond`, with no code that names the kind outside the registry."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import cdx
from cdx.cli import main
from cdx.models.bundle import save_bundle
from cdx.models.config import ModalityConfig, preset
from cdx.models.modalities import kind_of, kinds
from cdx.models.random_init import random_model
from cdx.evaluation.metrics import psnr


def three_modalities():
    cfg = preset("tiny")
    mask = cfg.modality("mask")
    sketch = ModalityConfig("sketch", "sketch", mask.unet, mask.diffuser, context_dim=mask.context_dim)
    return dataclasses.replace(cfg, modalities=(*cfg.modalities, sketch), shaping=False)


@pytest.fixture(scope="module")
def sketch_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("sketch") / "bundle"
    save_bundle(random_model(three_modalities(), seed=5), path)
    return path


@pytest.fixture(scope="module")
def sketch_png(tmp_path_factory):
    rng = np.random.default_rng(3)
    img = (rng.random((48, 48)) > 0.8).astype(np.uint8) * 255  # sparse white strokes
    path = tmp_path_factory.mktemp("sketch_in") / "sketch.png"
    Image.fromarray(img, mode="L").save(path)
    return path


def test_the_registry_holds_each_kind_once():
    assert set(kinds()) >= {"text", "mask", "sketch"}
    m = three_modalities().modality("sketch")
    ins = kind_of("sketch").encoder_input(m)
    assert ins.shape == (1, 1024) and ins.dtype == "float32"
    assert kind_of("sketch").null_batch(m, 2).shape == (2, 1, 1024)
    with pytest.raises(ValueError, match="unknown modality kind"):
        kind_of("audio")


def test_sketch_values_are_parsed_or_refused(sketch_png):
    m = three_modalities().modality("sketch")
    k = kind_of("sketch")
    from_file = k.parse(str(sketch_png), m, "sketch")
    from_pil = k.parse(Image.open(sketch_png), m, "sketch")
    assert from_file.shape == (1, 1024) and 0 <= from_file.min() and from_file.max() <= 1
    np.testing.assert_array_equal(from_file, from_pil)
    for bad in (np.full((32, 32), 2.0), np.zeros((2, 32, 32)), "missing.png"):
        with pytest.raises(cdx.InputError):
            k.parse(bad, m, "sketch")


def test_three_modalities_through_the_api_on_torch_and_onnxruntime(sketch_bundle, sketch_png, mask_png, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    args = dict(text="This woman has blond hair.", mask=mask_png, conditions={"sketch": sketch_png}, seed=2,
                steps=4, return_influence=True)
    torch_pipe = cdx.Pipeline.load(sketch_bundle, backend="torch")
    ort_pipe = cdx.Pipeline.load(sketch_bundle, backend="onnxruntime")  # exported on first use
    a, b = torch_pipe(**args), ort_pipe(**args)
    assert a.modalities == b.modalities == ["mask", "text", "sketch"]
    assert a.influence.shape[1] == 3
    assert psnr(a.arrays[0], b.arrays[0]) >= 40
    np.testing.assert_allclose(a.influence, b.influence, atol=2e-3)
    two = torch_pipe(text=args["text"], mask=mask_png, seed=2, steps=4)
    assert psnr(a.arrays[0], two.arrays[0]) < 40  # the sketch changes the image
    sketch_only = ort_pipe(conditions={"sketch": np.asarray(Image.open(sketch_png), np.float32) / 255}, seed=1,
                           steps=2)
    assert sketch_only.modalities == ["sketch"]


def test_exported_sketch_encoder_matches_torch(sketch_bundle, tmp_path):
    from cdx.backends.ort import OrtRunner
    from cdx.backends.pytorch.eager import TorchRunner
    from cdx.export.onnx_export import export_bundle, random_inputs
    from cdx.models.bundle import load_bundle

    export_bundle(sketch_bundle, tmp_path / "onnx")
    ort, ref = OrtRunner(tmp_path / "onnx"), TorchRunner(load_bundle(sketch_bundle))
    g = torch.Generator().manual_seed(0)
    for name in ("sketch_encoder", "sketch_unet", "sketch_diffuser"):
        inputs = random_inputs(ref.specs[name], 3, g)
        want, got = ref.run(name, inputs), ort.run(name, inputs)
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=1e-4, rtol=1e-4)


def test_cdx_run_takes_cond(sketch_bundle, sketch_png, tmp_path):
    out = tmp_path / "face.png"
    r = CliRunner().invoke(main, ["run", "--backend", "torch", "--checkpoint", str(sketch_bundle), "--steps", "2",
                                  "--cond", f"sketch={sketch_png}", "--text", "He is smiling.", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "text, sketch" in r.output and Image.open(out).size == (64, 64)
    bad = CliRunner().invoke(main, ["run", "--backend", "torch", "--checkpoint", str(sketch_bundle), "--cond",
                                    "sketch", "--out", str(tmp_path / "x.png")])
    assert bad.exit_code == 2 and "NAME=FILE" in bad.output


def test_io_binding_gives_the_same_outputs(tiny_export):
    """ONNX Runtime reading and writing torch tensors in place equals its host-copy path (CPU here)."""
    from cdx.backends.ort import OrtRunner
    from cdx.export.onnx_export import random_inputs

    plain, bound = OrtRunner(tiny_export), OrtRunner(tiny_export, io_binding=True)
    g = torch.Generator().manual_seed(4)
    for name in ("text_encoder", "mask_unet", "text_diffuser", "vae_decoder"):
        inputs = random_inputs(plain.specs[name], 2, g)
        want, got = plain.run(name, inputs), bound.run(name, inputs)
        for k in want:
            assert torch.equal(want[k], got[k])
