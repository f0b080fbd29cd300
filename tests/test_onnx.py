"""ONNX export, the ONNX Runtime runner, backend parity and refusal of stale or tampered exports."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from cdx.cli import main
from cdx.backends.ort import OrtRunner
from cdx.errors import StaleArtifactError
from cdx.backends.pytorch.eager import TorchRunner  # noqa: E402
from cdx.export.verify import verify_export
from cdx.models.bundle import load_bundle
from cdx.evaluation.metrics import psnr

CAPTION = "She has blond hair and heavy lipstick. She is in her twenties."


def test_onnx_export_files_pass_full_check(tiny_export):
    manifest = json.loads((tiny_export / "manifest.json").read_text())
    assert manifest["opset"] >= 17 and len(manifest["bundle_hash"]) == 64
    names = set(manifest["networks"])
    assert {"text_encoder", "mask_encoder", "text_unet", "mask_unet", "text_diffuser", "mask_diffuser",
            "vae_decoder", "vae_encoder"} <= names
    for name, entry in manifest["networks"].items():
        path = tiny_export / entry["file"]
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path), load_external_data=False)
        batch_dims = [i.type.tensor_type.shape.dim[0].dim_param for i in model.graph.input]
        assert all(d == "batch" for d in batch_dims), (name, batch_dims)


def test_onnx_verify_against_torch(tiny_bundle, tiny_export):
    worst = verify_export(TorchRunner(load_bundle(tiny_bundle)), tiny_export)
    assert len(worst) == 8
    assert all(err <= 1e-4 for err in worst.values()), worst


def test_onnx_and_torch_same_image(tiny_bundle, tiny_export, real_mask, tmp_path):
    outs = {}
    for backend, extra in (("torch", ["--checkpoint", tiny_bundle]), ("onnxruntime", ["--engine-dir", tiny_export])):
        out = tmp_path / f"{backend}.png"
        r = CliRunner().invoke(main, [str(a) for a in ["run", "--backend", backend, *extra, "--text", CAPTION, "--mask",
                                                       real_mask, "--steps", 4, "--seed", 3, "--out", out]])
        assert r.exit_code == 0, r.output
        assert f"backend: {backend}" in r.output
        outs[backend] = np.asarray(Image.open(out))
    assert psnr(outs["torch"], outs["onnxruntime"]) >= 40


def test_onnx_auto_backend_exports_into_cache(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    for _ in range(2):  # the second run reuses the cached export
        r = CliRunner().invoke(main, ["run", "--checkpoint", str(tiny_bundle), "--text", CAPTION, "--steps", "2",
                                      "--out", str(tmp_path / "auto.png")])
        assert r.exit_code == 0, r.output
        assert "backend: onnxruntime" in r.output or "backend: openvino" in r.output  # openvino where installed
    exports = list((tmp_path / "cache" / "onnx").iterdir())
    assert len(exports) == 1 and (exports[0] / "manifest.json").is_file()
    assert not [p for p in (tmp_path / "cache" / "onnx").iterdir() if p.name.startswith(".")]


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage", ["truncate", "tamper", "manifest"])
def test_onnx_refuses_damaged_export(tiny_export, tmp_path, damage):
    folder = _copy(tiny_export, tmp_path / "export")
    target = folder / "text_unet.onnx"
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "tamper":
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        (folder / "manifest.json").write_text("{not json")
    with pytest.raises(StaleArtifactError, match="cdx export"):
        OrtRunner(folder)
    r = CliRunner().invoke(main, ["run", "--backend", "onnxruntime", "--engine-dir", str(folder), "--text", CAPTION,
                                  "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "cdx export" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_onnx_refuses_export_of_another_bundle(tiny_export, tmp_path):
    from cdx.models.bundle import save_bundle
    from cdx.models.config import preset
    from cdx.models.random_init import random_model

    other = tmp_path / "other"
    save_bundle(random_model(preset("tiny"), seed=99), other)
    r = CliRunner().invoke(main, ["run", "--backend", "onnxruntime", "--engine-dir", str(tiny_export), "--checkpoint",
                                  str(other), "--text", CAPTION, "--out", str(tmp_path / "x.png")])
    assert r.exit_code == 2 and "another checkpoint" in r.output
