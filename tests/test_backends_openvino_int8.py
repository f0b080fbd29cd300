"""The openvino-int8 backend: the per-step networks really quantized (NNCF) from a calibration run, close to
fp32 on the inputs they meet in sampling, cached and checked, re-quantized when damaged, never chosen by auto."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'cdx[openvino]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'cdx[openvino]')")

from cdx.cli import main  # noqa: E402
from cdx.backends.openvino import int8 as Q  # noqa: E402
from cdx.backends.registry import choose_auto, make_runner, BackendRequest  # noqa: E402
from cdx.export.cache import cached_export  # noqa: E402
from cdx.backends.openvino.runner import OpenVinoRunner  # noqa: E402
from cdx.errors import CdxError  # noqa: E402

CAPTION = "She has blond hair and heavy lipstick. She is in her twenties."
SMALL = {**Q.RECIPE, "faces": 4, "batch": 2, "steps": 4}  # a quick calibration for the cache tests


@pytest.fixture(scope="module")
def quantized(tiny_bundle, tmp_path_factory):
    """The tiny model run once from the CLI on openvino-int8 (calibrated and quantized for real, the default
    recipe), in a cache of this module's own: (cache, the export, the run's output)."""
    cache = tmp_path_factory.mktemp("int8-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CDX_CACHE", str(cache))
        out = cache.parent / "int8.png"
        r = CliRunner().invoke(main, [str(a) for a in ["run", "--backend", "openvino-int8", "--checkpoint",
                                                       tiny_bundle, "--text", CAPTION, "--steps", 4, "--seed", 5,
                                                       "--out", out]])
        assert r.exit_code == 0, r.output
        yield cache, cached_export(tiny_bundle), r.output, out


@pytest.fixture
def cache(quantized, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(quantized[0]))
    return quantized[0]


def _ops(path) -> set[str]:
    import openvino as ov

    return {op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops()}


def test_int8_runs_from_the_cli_and_auto_never_picks_it(quantized, tiny_bundle, cache):
    _, _, output, out = quantized
    assert "openvino-int8: quantizing text_unet (first use)" in output
    assert "int8 mask_diffuser+mask_unet+text_diffuser+text_unet" in output
    assert np.asarray(Image.open(out)).std() > 1
    assert choose_auto(BackendRequest(tiny_bundle, device="cpu"))[0] != "openvino-int8"
    with pytest.raises(CdxError, match="fp32 export"):
        make_runner("openvino-int8", tiny_bundle, dtype=torch.float16)


def test_int8_quantizes_the_per_step_networks_and_stays_close_to_fp32(quantized, cache):
    export = quantized[1]
    fp32 = OpenVinoRunner(export)
    said = []
    models = Q.int8_models(fp32, notice=said.append)
    assert said == []  # the CLI run's models, from the cache: no calibration, no quantization
    assert set(models) == {n for n, s in fp32.specs.items() if s.kind in ("unet", "diffuser")}
    for path in models.values():
        assert "FakeQuantize" in _ops(path)  # int8 weights and activations, not an fp32 copy
    feeds = Q.calibration_feeds(fp32, SMALL)  # the inputs the networks meet in sampling
    int8 = OpenVinoRunner(export)
    int8.use_int8(models)
    for name in models:
        inputs = {k: torch.from_numpy(v) for k, v in feeds[name][-1].items()}
        a, b = fp32.run(name, inputs), int8.run(name, inputs)
        for key in a:
            x, y = a[key].flatten().double(), b[key].flatten().double()
            assert not torch.equal(x, y)  # really computed in 8 bits
            assert torch.corrcoef(torch.stack([x, y]))[0, 1] > 0.9, name  # and still the same function


def test_int8_cache_is_checked_and_requantized_when_damaged(quantized, cache):
    export = quantized[1]
    first = Q.int8_models(OpenVinoRunner(export), notice=lambda msg: None)
    folder = next(iter(first.values())).parent
    assert folder.parent == cache / "openvino-int8" and (folder / "int8.json").is_file()
    victim = next(folder.glob("*.bin"))
    victim.write_bytes(victim.read_bytes()[:100])  # truncated
    said = []
    again = Q.int8_models(OpenVinoRunner(export), notice=said.append)
    assert any("quantizing" in s for s in said) and again == first
    assert Q.read_int8_manifest(folder, OpenVinoRunner(export).manifest["digest"], Q.RECIPE)
    assert Q.recipe_key("d" * 64, SMALL) != Q.recipe_key("d" * 64, Q.RECIPE) != Q.recipe_key("e" * 64, Q.RECIPE)


def test_int8_leaves_a_foreign_folder_alone(quantized, cache, monkeypatch):
    runner = OpenVinoRunner(quantized[1])
    monkeypatch.setattr(Q, "quantize_network", lambda name, model, feeds, recipe: model)  # the slot logic, not NNCF
    slot = cache / "openvino-int8" / Q.recipe_key(runner.manifest["digest"], SMALL)
    slot.mkdir(parents=True)
    (slot / "mine.txt").write_text("not cdx's")
    models = Q.int8_models(runner, notice=lambda msg: None, recipe=SMALL)
    assert (slot / "mine.txt").read_text() == "not cdx's"
    assert next(iter(models.values())).parent.name == f"{slot.name}-1"
