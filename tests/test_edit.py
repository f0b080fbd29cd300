"""`cdx edit` (Algorithm 3) on a tiny random bundle: state reuse, backends, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cdx.cli import main
from cdx.models.bundle import load_bundle
from cdx.edit.optimise import EditConfig, load_image, reconstruction_loss, run_edit


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    from cdx.synth import generate

    path = tmp_path_factory.mktemp("face") / "face.png"
    Image.fromarray(generate(5, size=96).image).save(path)
    return path


def edit_cli(bundle, face, out, *extra):
    image = [] if face is None else ["--image", face]  # --load-state needs no --image
    args = ["edit", *image, "--checkpoint", bundle, "--out", out, "--embed-steps", 2, "--finetune-steps", 2,
            "--steps", 2, *extra]
    return CliRunner().invoke(main, [str(a) for a in args])


def test_edit_steps_reduce_reconstruction_loss(tiny_bundle, face):
    model = load_bundle(tiny_bundle)
    img = load_image(face, model.cfg.image_size)
    ctx = model.encoders["text"](torch.zeros(1, 77, dtype=torch.long))
    cfg = EditConfig(embed_steps=15, finetune_steps=15, embed_lr=1e-2, finetune_lr=1e-3, batch=8)
    state = run_edit(model, img, {"text": ctx}, cfg)
    assert not torch.equal(state.optimised["text"], ctx)
    z0 = model.module("vae_encoder")(img).detach()
    acp = torch.linspace(0.999, 0.01, 1000)

    def loss(unet, e):
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return float(reconstruction_loss(unet, z0, e, acp, g, 64))

    before = loss(model.unets["text"], ctx)
    after = loss(state.apply(model).unets["text"], state.optimised["text"])
    assert after < before
    mid = state.contexts(0.25)[0]
    assert torch.allclose(mid, 0.25 * ctx + 0.75 * state.optimised["text"])


def test_edit_cli_state_reuse_and_backends(tiny_bundle, face, real_mask, tmp_path):
    out, state = tmp_path / "edit.png", tmp_path / "state"
    r = edit_cli(tiny_bundle, face, out, "--text", "She has red hair.", "--mask", real_mask, "--save-state", state,
                 "--backend", "torch", "--alpha", "0.6,1.0")
    assert r.exit_code == 0, r.output
    strip = np.asarray(Image.open(out))  # a column per alpha, labelled above, framed
    assert strip.shape[0] > 64 + 8 and 2 * 64 + 4 <= strip.shape[1] <= 2 * 64 + 40, strip.shape
    again = tmp_path / "again.png"
    r = edit_cli(tiny_bundle, None, again, "--load-state", state, "--backend", "torch", "--alpha", "0.6,1.0")
    assert r.exit_code == 0, r.output
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))
    onnx_out = tmp_path / "onnx.png"
    r = edit_cli(tiny_bundle, face, onnx_out, "--load-state", state, "--backend", "onnxruntime", "--alpha", "0.6,1.0")
    assert r.exit_code == 0 and "onnxruntime" in r.output, r.output
    diff = np.abs(np.asarray(Image.open(onnx_out)).astype(int) - np.asarray(Image.open(out)).astype(int))
    assert diff.max() <= 2


def test_edit_bad_inputs(tiny_bundle, face, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tiny)
    text = tmp_path / "x.jpg"
    text.write_text("not an image")
    cases = [
        (["--image", tmp_path / "missing.png"], "not found"),
        (["--image", text], "not a decodable"),
        (["--image", tiny], "too small"),
        (["--alpha", "abc"], "--alpha"),
        (["--load-state", tmp_path], "edit state"),
        (["--eta", "-0.5"], "--eta -0.5"),
        (["--eta", "1.5"], "--eta 1.5"),
        (["--guidance", "text"], "--guidance text"),
        (["--guidance", "hair=2"], "this model has"),
    ]
    for extra, needle in cases:
        out = tmp_path / "out.png"
        args = ["edit", "--image", face, "--checkpoint", tiny_bundle, "--out", out, "--text", "a face", "--steps", 2,
                "--embed-steps", 1, "--finetune-steps", 1, "--backend", "torch"]
        # later options override earlier ones in click
        r = CliRunner().invoke(main, [str(a) for a in args + extra])
        assert r.exit_code == 2 and needle in r.output, (extra, r.output)
        assert len(r.output.strip().splitlines()) == 1
        assert not out.exists()


def test_edit_with_a_guided_collaborator_agrees_across_backends(face, real_mask, tmp_path):
    """The fine-tuned collaborator is rendered through the guidance wrapper on torch and ONNX Runtime alike."""
    from cdx.models.bundle import save_bundle
    from cdx.models.config import preset
    from cdx.models.random_init import random_model

    plain, guided = tmp_path / "plain", tmp_path / "guided"
    save_bundle(random_model(preset("tiny"), seed=7), plain)
    save_bundle(random_model(preset("tiny").with_guidance({"text": 30.0}), seed=7), guided)  # same weights
    state = tmp_path / "state"
    outs = {}
    for name, bundle, backend, extra in (("plain", plain, "torch", []),  # the same optimisation, unguided
                                         ("torch", guided, "torch", ["--save-state", state]),
                                         ("onnx", guided, "onnxruntime", ["--load-state", state])):
        outs[name] = tmp_path / f"{name}.png"
        r = edit_cli(bundle, face, outs[name], "--text", "She has red hair.", "--mask", real_mask,
                     "--backend", backend, *extra)
        assert r.exit_code == 0, r.output
    img = {k: np.asarray(Image.open(v)).astype(int) for k, v in outs.items()}
    assert np.abs(img["onnx"] - img["torch"]).max() <= 2
    assert np.abs(img["torch"] - img["plain"]).max() > 10  # guidance changed the rendering
    off = tmp_path / "off.png"  # the guided bundle's saved edit, rendered with its guidance turned off
    r = edit_cli(guided, face, off, "--load-state", state, "--backend", "torch", "--guidance", "text=1")
    assert r.exit_code == 0, r.output
    assert np.abs(np.asarray(Image.open(off)).astype(int) - img["plain"]).max() <= 1


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_edit_reexport_has_the_engines_initializer_names(tmp_path, scale):
    """TensorRT refits by ONNX initializer name and the export names some weights itself (GroupNorm's folded
    scale and shift are `onnx::...` constants, a guided UNet's names carry its wrapper's prefix), so `cdx edit`
    refits from a re-export of the fine-tuned model: its collaborator graphs must hold the same initializer
    names as the export the engines were built from, every name, with the fine-tuned values."""
    import onnx
    from onnx import numpy_helper

    from cdx.export.onnx_export import export_bundle
    from cdx.models.bundle import save_bundle
    from cdx.models.config import preset
    from cdx.models.random_init import random_model

    def initializers(model, name):
        save_bundle(model, tmp_path / name)
        export_bundle(tmp_path / name, tmp_path / f"{name}_onnx", model=model)
        return {n: {t.name: numpy_helper.to_array(t) for t in
                    onnx.load(str(tmp_path / f"{name}_onnx" / f"{n}_unet.onnx")).graph.initializer}
                for n in ("text", "mask")}

    cfg = preset("tiny").with_guidance({"text": scale})
    original, edited = random_model(cfg, seed=4), random_model(cfg, seed=5)  # fine-tuning: new values
    before, after = initializers(original, "orig"), initializers(edited, "edit")
    for n in ("text", "mask"):
        assert set(after[n]) == set(before[n]), n
        anonymous = [k for k in after[n] if k.startswith("onnx::")]
        assert anonymous, "expected the export to name some weights itself"
        changed = [k for k in after[n] if not np.array_equal(after[n][k], before[n][k])]
        assert set(anonymous) & set(changed) and len(changed) > len(after[n]) // 2, n
        unet = edited.unets[n].state_dict()
        named = [k for k in after[n] if k.removeprefix("unet.") in unet]
        assert named, n
        for k in named:
            np.testing.assert_array_equal(after[n][k], unet[k.removeprefix("unet.")].numpy(), err_msg=k)


def test_edit_on_tensorrt_without_usable_engines_is_one_line(tiny_bundle, face, tmp_path):
    out = tmp_path / "out.png"
    r = edit_cli(tiny_bundle, face, out, "--text", "She has red hair.", "--backend", "tensorrt",
                 "--engine-dir", tmp_path / "no_engines")
    assert r.exit_code == 2 and "tensorrt backend unavailable" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_edit_on_tensorrt_refuses_engines_that_share_no_weight_names(monkeypatch, tmp_path):
    """A refit that sets nothing would render the unedited collaborators: refused in one line instead."""
    from cdx.edit import render as edit_render
    from cdx.errors import CdxError
    from cdx.models.config import preset
    from cdx.models.random_init import random_model
    from cdx.edit.optimise import EditState

    class NoNames:  # an engine built from some other export: no initializer name in common
        def refit_from_onnx(self, network, onnx_path):
            assert onnx_path.is_file()
            return 0

    import dataclasses

    from cdx.backends import get_backend, registry, trt

    monkeypatch.setattr(edit_render, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(trt, "_trt_factory", lambda req: NoNames())  # usable engines, as far as the registry knows
    monkeypatch.setitem(registry._REGISTRY, "tensorrt",
                        dataclasses.replace(get_backend("tensorrt"), why_not=lambda req: None))
    model = random_model(preset("tiny"), seed=2)
    state = EditState(["text"], {}, {}, {"text": model.unets["text"].state_dict()}, {})
    with pytest.raises(CdxError, match="shares no weight names"):
        with edit_render.edited_runner(model, state, "tensorrt", tmp_path / "engines"):
            pass
