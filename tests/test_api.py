"""The public API (`cdx.Pipeline`): per-item batches, the boundary's refusals, the README example."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cdx
from cdx.sampling.request import concat_requests, make_request
from cdx.models.masks import load_label_map
from cdx.evaluation.metrics import psnr

CAPTIONS = ["This man has beard of medium length. He is in his thirties.", "This woman has blond hair.",
            "She has red hair and she is smiling.", "He wears eyeglasses."]


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return cdx.Pipeline.load(tiny_bundle, backend="torch")


@pytest.fixture(scope="module")
def masks(mask_png):
    base = load_label_map(mask_png)
    other = base.copy()
    other[: base.shape[0] // 3] = 13  # a hair band across the top
    return [base, other]


def test_batch_items_are_their_lone_requests(pipe, masks):
    out = pipe(text=CAPTIONS[:2], mask=masks, seed=[11, 4], steps=4)
    assert len(out.images) == 2 and out.seeds == [11, 4]
    for i in range(2):
        alone = pipe(text=CAPTIONS[i], mask=masks[i], seed=out.seeds[i], steps=4)
        assert psnr(out.arrays[i], alone.arrays[0]) >= 40
    assert psnr(out.arrays[0], out.arrays[1]) < 30  # the items differ: the test can fail


def test_seed_and_batch_give_consecutive_seeds(pipe, masks):
    out = pipe(text=CAPTIONS[0], mask=masks[0], seed=5, batch=3, steps=3)
    assert out.seeds == [5, 6, 7]
    third = pipe(text=CAPTIONS[0], mask=masks[0], seed=7, steps=3)
    assert psnr(out.arrays[2], third.arrays[0]) >= 40


def test_one_seed_is_the_engines_own_draw(pipe, masks, tiny_bundle):
    """Batch 1 with seed s is exactly the image the engine's loop gives with draw_noise(s, 1, ...)."""
    from cdx.sampling.pipeline import encode_conditions, to_uint8
    from cdx.sampling.loop import draw_noise, make_shaping, sample

    req = make_request(pipe.cfg, text=CAPTIONS[1], mask=masks[0], seed=9, steps=5)
    runner, cfg = pipe.runner, pipe.cfg
    names, contexts = encode_conditions(runner, req)
    table = cfg.step_table(5)
    x_T, noise = draw_noise(9, 1, (cfg.latent_channels, *cfg.latent_size), table.num_steps)
    loop = sample(runner, names, contexts, x_T, noise, table, make_shaping(cfg, names, table, cfg.timesteps))
    want = to_uint8(runner.run("vae_decoder", {"latent": loop.z0})["image"])
    got = pipe(text=CAPTIONS[1], mask=masks[0], seed=9, steps=5)
    assert np.array_equal(got.arrays, want)


def test_mask_forms_agree(pipe, mask_png):
    arr = load_label_map(mask_png)
    by_path = pipe(mask=str(mask_png), seed=1, steps=2).arrays
    by_array = pipe(mask=arr, seed=1, steps=2).arrays
    by_pil = pipe(mask=Image.fromarray(arr, mode="L"), seed=1, steps=2).arrays
    assert np.array_equal(by_path, by_array) and np.array_equal(by_path, by_pil)


def test_result_fields(pipe, masks):
    seen = []
    out = pipe(text=CAPTIONS[2], mask=masks[1], seed=0, steps=3, sampler="ddpm", return_influence=True,
               callback=lambda i, total: seen.append((i, total)))
    n = len(out.timesteps)
    assert n == 4  # ddpm with 3 steps runs 4 (the real table), and the progress says so
    assert seen == [(i, n) for i in range(n)]
    assert out.influence.shape == (n, 2, 1, 16, 16) and out.modalities == ["mask", "text"]
    np.testing.assert_allclose(out.influence.sum(1), 1.0, atol=1e-5)
    assert set(out.timings) == {"encode_ms", "loop_ms", "decode_ms"} and all(v >= 0 for v in out.timings.values())
    assert out.backend.startswith("backend: torch") and out.images[0].size == (64, 64)


def test_concat_requests_keeps_each_items_image(pipe, masks):
    a = make_request(pipe.cfg, text=CAPTIONS[0], mask=masks[0], seed=3, steps=3)
    b = make_request(pipe.cfg, text=CAPTIONS[3], mask=masks[1], seed=[8, 2], steps=3)
    both = pipe.generate(concat_requests([a, b]))
    assert both.seeds == [3, 8, 2]
    assert psnr(both.arrays[0], pipe.generate(a).arrays[0]) >= 40
    assert psnr(both.arrays[2], pipe.generate(b).arrays[1]) >= 40
    with pytest.raises(ValueError):
        concat_requests([a, make_request(pipe.cfg, text=CAPTIONS[0], seed=1, steps=3)])


BAD_CALLS = [
    ({}, "at least one condition"),
    ({"text": 3}, "caption"),
    ({"text": ["a", None]}, "None"),
    ({"text": []}, "empty list"),
    ({"text": "a", "seed": -1}, "out of range"),
    ({"text": "a", "seed": 2 ** 64}, "out of range"),
    ({"text": "a", "seed": 1.5}, "integer"),
    ({"text": "a", "seed": True}, "integer"),
    ({"text": "a", "seed": 2 ** 64 - 2, "batch": 3}, "2**64"),
    ({"text": "a", "steps": 0}, "out of range"),
    ({"text": "a", "steps": 1001}, "out of range"),
    ({"text": "a", "steps": "10"}, "integer"),
    ({"text": "a", "batch": 0}, "out of range"),
    ({"text": "a", "batch": 10 ** 6}, "GiB"),
    ({"text": ["a", "b"], "seed": [1, 2, 3]}, "differ in length"),
    ({"text": ["a", "b"], "batch": 3}, "differ in length"),
    ({"text": "a", "seed": [1, 2], "batch": 2}, "not both"),
    ({"text": "a", "sampler": "euler"}, "sampler"),
    ({"text": "a", "eta": 2.0}, "out of range"),
    ({"text": "a", "eta": float("nan")}, "out of range"),
    ({"text": "a", "shaping": "yes"}, "shaping"),
    ({"text": "a", "guidance": {"text": float("inf")}}, "out of range"),
    ({"text": "a", "guidance": {"text": 1e9}}, "out of range"),
    ({"text": "a", "guidance": {"sketch": 2}}, "no modality"),
    ({"text": "a", "guidance": [("text", 2)]}, "mapping"),
    ({"mask": np.full((8, 8), 19)}, "0..18"),
    ({"mask": np.zeros((2, 8, 8), np.uint8)}, "shape"),
    ({"mask": np.zeros((8, 8), np.float32)}, "integer"),
    ({"mask": "no/such/mask.png"}, "not found"),
    ({"mask": Image.new("F", (8, 8))}, "mode"),
    ({"mask": 5}, "label-map"),
    ({"conditions": {"sketch": np.zeros((32, 32))}}, "no modality"),
    ({"text": "a", "conditions": {"text": "b"}}, "twice"),
    ({"text": "a", "callback": 3}, "callable"),
]


@pytest.mark.parametrize("kwargs, words", BAD_CALLS, ids=[str(i) for i in range(len(BAD_CALLS))])
def test_every_bad_value_is_an_input_error(pipe, kwargs, words):
    with pytest.raises(cdx.InputError) as e:
        pipe(steps=kwargs.pop("steps", 2), **kwargs)
    msg = str(e.value)
    assert words in msg and "\n" not in msg, msg


def test_load_refusals(tiny_bundle, tmp_path):
    with pytest.raises(cdx.InputError):
        cdx.Pipeline.load(tiny_bundle, backend="nonesuch")
    with pytest.raises(cdx.InputError):
        cdx.Pipeline.load(tiny_bundle, backend="torch", dtype="fp8")
    with pytest.raises(cdx.CdxError, match="fp32"):
        cdx.Pipeline.load(tiny_bundle, backend="onnxruntime", dtype="fp16")
    with pytest.raises(cdx.CdxError):
        cdx.Pipeline.load(tmp_path)  # not a bundle
    with pytest.raises(cdx.InputError):
        cdx.Pipeline.load(tiny_bundle, backend="torch", device="bogus")


def test_empty_caption_warns(pipe):
    with pytest.warns(UserWarning, match="empty"):
        pipe(text="   ", seed=0, steps=1)


def test_readme_api_example_runs_as_written(tmp_path):
    """The README's Python API block, run as a script in a fresh folder holding the mask it names."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    block = next(b for b in blocks if "cdx.Pipeline.load" in b)
    root = Path(__file__).resolve().parents[1]
    mask_names = {n for n in re.findall(r"[\w./-]+\.png", block) if "mask" in n}
    for name in mask_names:  # the mask the block reads, where a clone's root has it (else an example mask)
        source = root / name if (root / name).is_file() else root / "examples" / "mask_long_hair.png"
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(source.read_bytes())
    script = tmp_path / "example.py"
    script.write_text(block)
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**__import__("os").environ, "CDX_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-2000:]
    written = [p for p in tmp_path.iterdir() if p.suffix == ".png" and p.name not in {Path(n).name for n in mask_names}]
    assert written and all(Image.open(p).size == (64, 64) for p in written)


def test_freeu_through_onnxruntime_matches_torch_and_changes_the_image(tiny_bundle, tmp_path, monkeypatch,
                                                                       mask_png):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    args = dict(text=CAPTIONS[1], mask=mask_png, seed=4, steps=3)
    on_torch = cdx.Pipeline.load(tiny_bundle, backend="torch", freeu=(1.4, 1.6, 0.6, 0.4))(**args)
    on_ort = cdx.Pipeline.load(tiny_bundle, backend="onnxruntime", freeu="1.4,1.6,0.6,0.4")(**args)
    off = cdx.Pipeline.load(tiny_bundle, backend="onnxruntime")(**args)
    assert psnr(on_torch.arrays[0], on_ort.arrays[0]) >= 40
    assert psnr(on_ort.arrays[0], off.arrays[0]) < 40
    with pytest.raises(cdx.InputError):
        cdx.Pipeline.load(tiny_bundle, backend="torch", freeu=(1, 2))


def test_intermediates_are_each_steps_predicted_x0(pipe, masks):
    out = pipe(text=CAPTIONS[0], mask=masks[0], seed=2, steps=4, batch=2, return_intermediates=True)
    n = len(out.timesteps)
    assert out.intermediates.shape == (n, 2, 64, 64, 3) and out.intermediates.dtype == np.uint8
    # at the last step (t = 1) the prediction is all but the final image; at the first it is far from it
    assert psnr(out.intermediates[-1, 1], out.arrays[1]) > psnr(out.intermediates[0, 1], out.arrays[1])
    assert psnr(out.intermediates[-1, 0], out.arrays[0]) >= 30
