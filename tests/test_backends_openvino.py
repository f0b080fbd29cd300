"""The OpenVINO backend: the same image as torch for the same seed, per-network parity with ONNX Runtime on
fresh random inputs, static shapes per batch, the on-disk compiled-model cache, one-line refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'cdx[openvino]')")

from cdx.cli import main  # noqa: E402
from cdx.backends.registry import backend_names, make_runner  # noqa: E402
from cdx.backends.openvino import native_bf16  # noqa: E402
from cdx.backends.openvino.runner import OpenVinoRunner  # noqa: E402
from cdx.backends.ort import OrtRunner  # noqa: E402
from cdx.errors import CdxError  # noqa: E402
from cdx.export.onnx_export import random_inputs  # noqa: E402
from cdx.evaluation.metrics import psnr  # noqa: E402

CAPTION = "She has blond hair and heavy lipstick. She is in her twenties."


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_openvino_is_registered():
    assert "openvino" in backend_names()


def cdx_run(backend, bundle, mask_png, out, *extra):
    """`cdx run` of one caption and mask, 4 steps, seed 5, on `backend`: (the image, the command's output)."""
    r = CliRunner().invoke(main, [str(a) for a in ["run", "--backend", backend, "--checkpoint", bundle, "--text",
                                                   CAPTION, "--mask", mask_png, "--steps", 4, "--seed", 5, "--out",
                                                   out, *extra]])
    assert r.exit_code == 0, r.output
    return np.asarray(Image.open(out)), r.output


def test_openvino_and_torch_same_image(tiny_bundle, mask_png, tmp_path, cache):
    outs = {}
    for backend in ("torch", "openvino"):
        outs[backend], output = cdx_run(backend, tiny_bundle, mask_png, tmp_path / f"{backend}.png")
        assert f"backend: {backend}" in output
    assert outs["torch"].std() > 1  # a real picture, not a flat one
    assert psnr(outs["torch"], outs["openvino"]) >= 40


needs_bf16 = pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")


@needs_bf16
def test_openvino_bf16_runs_in_bf16_close_to_fp32(tiny_bundle, mask_png, tmp_path, cache):
    fp32, _ = cdx_run("openvino", tiny_bundle, mask_png, tmp_path / "fp32.png")
    bf16, output = cdx_run("openvino-bf16", tiny_bundle, mask_png, tmp_path / "bf16.png")
    assert "CPU, bf16" in output
    db = psnr(fp32, bf16)
    assert 20 <= db < 60, db  # bf16 arithmetic: near the fp32 image, not equal to it


def test_openvino_bf16_is_refused_without_native_bf16(tiny_bundle, monkeypatch):
    from cdx.backends import openvino as openvino_backend
    from cdx.backends.registry import BackendRequest

    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: False)
    why = openvino_backend._bf16_why_not(BackendRequest(checkpoint=tiny_bundle))
    assert why is not None and "no native bf16" in why


def test_openvino_runs_freeu_as_torch_does(tiny_bundle, mask_png, tmp_path, cache):
    outs = {}
    for backend, freeu in (("torch", "1.3,1.4,0.6,0.3"), ("openvino", "1.3,1.4,0.6,0.3"), ("openvino", None)):
        outs[backend, freeu], _ = cdx_run(backend, tiny_bundle, mask_png, tmp_path / f"{backend}-{freeu}.png",
                                          *(["--freeu", freeu] if freeu else []))
    assert psnr(outs["torch", "1.3,1.4,0.6,0.3"], outs["openvino", "1.3,1.4,0.6,0.3"]) >= 40
    assert psnr(outs["openvino", "1.3,1.4,0.6,0.3"], outs["openvino", None]) < 40  # FreeU is on, not dropped


def test_openvino_matches_onnxruntime_per_network(tiny_export, cache):
    ov, ort = OpenVinoRunner(tiny_export), OrtRunner(tiny_export, providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(11)
    for batch in (3, 1):  # an awkward batch, then another static shape of the same network
        for name, spec in ov.specs.items():
            inputs = random_inputs(spec, batch, g)
            a, b = ov.run(name, inputs), ort.run(name, inputs)
            for key in a:
                assert a[key].shape == spec.outputs[0].concrete(batch)
                scale = b[key].abs().max().item()
                assert scale > 0
                assert (a[key] - b[key]).abs().max().item() <= 1e-4 * max(1.0, scale), (name, batch)
    assert {k for k in ov._compiled if k[0] == "text_unet"} == {("text_unet", 3), ("text_unet", 1)}


def test_openvino_outputs_are_not_overwritten_by_the_next_call(tiny_export, cache):
    ov = OpenVinoRunner(tiny_export)
    g = torch.Generator().manual_seed(2)
    spec = ov.specs["text_unet"]
    first_in, second_in = random_inputs(spec, 2, g), random_inputs(spec, 2, g)
    first = ov.run("text_unet", first_in)["eps"].clone()
    kept = ov.run("text_unet", first_in)["eps"]
    ov.run("text_unet", second_in)
    assert torch.equal(kept, first)


def test_openvino_compiled_models_are_cached_on_disk(tiny_export, cache):
    g = torch.Generator().manual_seed(3)
    spec = OpenVinoRunner(tiny_export).specs["mask_unet"]
    inputs = random_inputs(spec, 2, g)
    first = OpenVinoRunner(tiny_export)
    a = first.run("mask_unet", inputs)["eps"]
    blobs = sorted(p.name for p in first.cache.rglob("*") if p.is_file())
    assert blobs, "OpenVINO wrote nothing to CACHE_DIR"
    assert first.cache.parent == cache / "openvino"
    second = OpenVinoRunner(tiny_export)  # a new Core: imports the blob instead of compiling
    b = second.run("mask_unet", inputs)["eps"]
    assert sorted(p.name for p in second.cache.rglob("*") if p.is_file()) == blobs
    assert torch.equal(a, b)


def test_openvino_refuses_what_it_cannot_run(tiny_bundle, cache):
    from cdx.backends.registry import BackendRequest
    from cdx.backends.openvino import _why_not

    with pytest.raises(CdxError) as e:
        make_runner("openvino", tiny_bundle, dtype=torch.float16)
    assert "fp32 export" in str(e.value) and "\n" not in str(e.value)
    assert "CPU only" in _why_not(BackendRequest(tiny_bundle, device="cuda"))
    assert "--checkpoint or --engine-dir" in _why_not(BackendRequest())


def test_openvino_refuses_a_damaged_export(tiny_export, tmp_path, cache):
    folder = tmp_path / "export"
    folder.mkdir()
    for f in tiny_export.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "text_unet.onnx").write_bytes(b"not a model")
    r = CliRunner().invoke(main, ["run", "--backend", "openvino", "--engine-dir", str(folder), "--text", CAPTION,
                                  "--steps", "2", "--out", str(tmp_path / "x.png")])
    assert r.exit_code != 0 and r.output.startswith("error: ") and "Traceback" not in r.output
