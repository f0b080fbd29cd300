"""Training on your own data: folder and official layouts, `cdx data check`, bad samples refused or skipped,
each stage on a folder data set, and the bundle it assembles runs."""
from __future__ import annotations

import json

import numpy as np
import torch
from click.testing import CliRunner
from PIL import Image

from cdx.cli import main
from cdx.models.config import preset
from cdx.models.masks import save_label_map
from cdx.train.data import encode_sample, trainable
from cdx.train.sources import load_image, open_source
from cdx.synth import generate
from test_train import one_thread  # noqa: F401  (autouse: one torch thread)

CAPTION = "This man has beard of medium length. He is in his thirties."


def write_folder(root, n: int = 24, size: int = 64, seed: int = 77, masks: bool = True, caption_files=False):
    """`n` synthetic faces as images/<i>.png, masks/<i>.png and captions.json (or captions/<i>.txt)."""
    (root / "images").mkdir(parents=True)
    if masks:
        (root / "masks").mkdir()
    captions = {}
    for i in range(n):
        s = generate((seed, i), size)
        Image.fromarray(s.image).save(root / "images" / f"{i}.png")
        if masks:
            save_label_map(root / "masks" / f"{i}.png", s.label)
        captions[str(i)] = s.caption if i % 3 else [s.caption, s.caption.replace("This", "The")]
    if caption_files:
        (root / "captions").mkdir()
        for k, v in captions.items():
            (root / "captions" / f"{k}.txt").write_text("\n".join(v if isinstance(v, list) else [v]))
    else:
        (root / "captions.json").write_text(json.dumps(captions))
    return root


def test_data_folder_samples_are_what_inference_makes_of_the_files(tmp_path):
    from cdx.models.modalities import kind_of

    root = write_folder(tmp_path / "d", n=4)
    cfg = preset("tiny")
    src = open_source(root, 64)
    assert src.kind == "folder" and len(src) == 4 and src.fields == ("caption", "mask") and not src.problems
    assert [m.name for m in trainable(cfg, src)] == ["mask", "text"]
    image, conds = encode_sample(src, 0, trainable(cfg, src), 64)
    s = generate((77, 0), 64)
    assert np.array_equal(image, s.image)
    mask, text = cfg.modality("mask"), cfg.modality("text")
    want = kind_of("mask").batch([str(root / "masks" / "0.png")], mask, "m")[0]
    assert np.array_equal(np.eye(19, dtype=np.int64)[conds["mask"][0]].T, want.numpy())
    assert len(conds["text"]) == 2  # a list of captions: every one stored
    assert np.array_equal(conds["text"][0], kind_of("text").batch([s.caption], text, "t")[0].numpy())


def test_data_images_are_resized_and_centre_cropped_as_the_official_code_does():
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)  # h 50, w 90
    got = load_image(wide, "x", 32)
    # short side to 32 (bicubic, PIL's default), width int(90 * 32 / 50) = 57, centre crop offset (57 - 32) // 2
    want = np.asarray(Image.fromarray(wide).resize((57, 32), Image.Resampling.BICUBIC))[:, 12:44]
    assert got.shape == (32, 32, 3) and np.array_equal(got, want)
    tall = rng.integers(0, 256, (70, 40, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(tall).resize((32, 56), Image.Resampling.BICUBIC))[12:44]
    assert np.array_equal(load_image(tall, "x", 32), want)


def test_data_official_layout_reads_one_hot_tensors_and_dialog_captions(tmp_path):
    root = tmp_path / "datasets"
    for sub in ("image/image_64_downsampled", "mask/mask_one_hot_2d_tensor", "text"):
        (root / sub).mkdir(parents=True)
    captions = {}
    for i in range(3):
        s = generate((5, i), 64)
        Image.fromarray(s.image).resize((80, 80)).save(root / "image/image_64_downsampled" / f"{i}.jpg")
        from cdx.models.masks import label_map_to_ids, one_hot

        onehot = torch.from_numpy(one_hot(label_map_to_ids(s.label))[0]).float()  # [19, 1024]
        torch.save(onehot, root / "mask/mask_one_hot_2d_tensor" / f"{i}.pt")
        captions[f"{i}.jpg"] = {"Beard_and_Age": s.caption.upper(), "other": "x"}
    torch.save(torch.ones(19, 1024), root / "mask/mask_one_hot_2d_tensor" / "2.pt")  # not one-hot
    (root / "text" / "captions_hq_beard_and_age_2022-08-19.json").write_text(json.dumps(captions))
    cfg = preset("tiny")
    src = open_source(root, 64)
    assert src.kind == "official" and len(src) == 3 and set(src.fields) == {"caption", "mask"}
    image, conds = encode_sample(src, 1, trainable(cfg, src), 64)
    s = generate((5, 1), 64)
    assert image.shape == (64, 64, 3)
    assert np.array_equal(conds["mask"][0], label_map_to_ids(s.label).astype(np.uint8))
    from cdx.models.modalities import kind_of

    lower = kind_of("text").batch([s.caption.lower()], cfg.modality("text"), "t")[0].numpy()
    assert np.array_equal(conds["text"][0], lower)
    r = CliRunner().invoke(main, ["data", "check", str(root), "--preset", "tiny"])
    assert r.exit_code == 2 and "bad 2: mask 2.pt is not a one-hot" in r.output, r.output


def test_data_check_reports_counts_classes_and_vocabulary(tmp_path):
    root = write_folder(tmp_path / "d", n=6, caption_files=True)
    r = CliRunner().invoke(main, ["data", "check", str(root), "--preset", "tiny"])
    assert r.exit_code == 0, r.output
    assert "usable samples: 6 of 6 images; problems: 0" in r.output and "trains: mask, text" in r.output
    lines = r.output.splitlines()
    skin = next(ln for ln in lines if ln.split()[:2] == ["1", "skin"])
    assert int(skin.split()[-1]) == 6  # every face has skin
    assert "captions: 8, vocabulary" in r.output  # two captions for samples 0 and 3


def bad_folder(tmp_path):
    root = write_folder(tmp_path / "bad", n=10, caption_files=True)
    (root / "masks" / "3.png").unlink()  # a missing mask
    (root / "captions" / "ghost.txt").write_text("A caption for no image.")
    raw = (root / "images" / "5.png").read_bytes()
    (root / "images" / "5.png").write_bytes(raw[: len(raw) // 2])  # a truncated image
    Image.fromarray(np.full((32, 32), 25, np.uint8), mode="L").save(root / "masks" / "7.png")  # ids over 18
    (root / "captions" / "8.txt").write_text("")  # an empty caption file
    return root


def test_data_check_names_every_bad_sample(tmp_path):
    root = bad_folder(tmp_path)
    r = CliRunner().invoke(main, ["data", "check", str(root), "--preset", "tiny"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    bad = {ln.split()[1].rstrip(":"): ln for ln in r.output.splitlines() if ln.startswith("  bad ")}
    assert set(bad) == {"3", "ghost", "5", "7", "8"}, r.output
    assert "no mask" in bad["3"] and "for no image" in bad["ghost"] and "truncated" in bad["5"]
    assert "class ids must be in 0..18" in bad["7"] and "empty caption" in bad["8"]
    assert "usable samples: 6 of 10 images; problems: 5" in r.output  # "ghost" is no image
    assert r.output.splitlines()[-1].startswith("error: ") and "5 bad sample(s)" in r.output


def test_training_refuses_bad_data_in_one_line_or_skips_it_naming_each(tmp_path):
    root = bad_folder(tmp_path)
    args = ["train", "vae", "--data", str(root), "--preset", "tiny", "--steps", "1", "--batch", "2",
            "--threads", "1"]
    r = CliRunner().invoke(main, [*args, "--work", str(tmp_path / "w")])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "bad sample(s)" in errors[0] and "--skip-bad" in errors[0]
    assert not (tmp_path / "w" / "vae.safetensors").exists()
    r = CliRunner().invoke(main, [*args, "--work", str(tmp_path / "w"), "--skip-bad"])
    assert r.exit_code == 0, r.output
    skipped = {ln.split("'")[1] for ln in r.output.splitlines() if ln.startswith("skipped sample")}
    assert skipped == {"3", "ghost", "5", "7", "8"}, r.output
    vae = json.loads(_stage_meta(tmp_path / "w" / "vae.safetensors"))
    assert vae["data"]["count"] == 6 and vae["data"]["skipped"] == 5
    # the prepared set remembers what it skipped: without --skip-bad it is refused again
    r = CliRunner().invoke(main, [*args, "--work", str(tmp_path / "w")])
    assert r.exit_code == 2 and "bad sample(s)" in r.output


def _stage_meta(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["cdx_stage"]


def test_a_modality_without_files_is_not_trained(tmp_path):
    root = write_folder(tmp_path / "d", n=4, masks=False)
    src = open_source(root, 64)
    assert src.fields == ("caption",) and [m.name for m in trainable(preset("tiny"), src)] == ["text"]
    r = CliRunner().invoke(main, ["train", "collaborator", "--modality", "mask", "--data", str(root), "--preset",
                                  "tiny", "--steps", "1", "--batch", "2", "--work", str(tmp_path / "w")])
    assert r.exit_code == 2 and "the data has no mask files" in r.output, r.output


def test_each_stage_trains_on_a_folder_and_the_bundle_runs(tmp_path):
    root = write_folder(tmp_path / "d", n=8)
    work, bundle = tmp_path / "w", tmp_path / "b"
    common = ["--data", str(root), "--work", str(work), "--preset", "tiny", "--steps", "2", "--batch", "4",
              "--threads", "1"]
    for stage in (["vae"], ["collaborator", "--modality", "mask"], ["collaborator", "--modality", "text",
                                                                      "--cond-drop", "0.2"], ["diffusers"]):
        r = CliRunner().invoke(main, ["train", *stage, *common], catch_exceptions=False)
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["train", "assemble", "--work", str(work), "--out", str(bundle)])
    assert r.exit_code == 0, r.output
    from cdx.models.bundle import read_manifest

    extra = read_manifest(bundle)["extra"]
    assert extra["stages"]["diffusers"]["data"]["count"] == 8
    mask = tmp_path / "mask.png"
    save_label_map(mask, generate((1, 1), 64).label)
    out = tmp_path / "x.png"
    r = CliRunner().invoke(main, ["run", "--backend", "torch", "--checkpoint", str(bundle), "--text", CAPTION,
                                  "--mask", str(mask), "--steps", "2", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)
