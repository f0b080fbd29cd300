"""Hostile input against the real CLI: every case exits 2 with one `error:` line on stderr, no
traceback, no output or partial file, and leaves what existed before byte-identical. Folders cdx did not
write are never replaced; malformed artifacts are named with how to rebuild them; write errors are one line.
Cache poisoning and killed runs: test_hostile_cache.py."""
from __future__ import annotations

import errno
import math
import re

import pytest
import torch
from hostile import CAPTION, assert_refused, cli, copy_tree, edit_json, flip_byte, refused_and_unchanged
from PIL import Image
from safetensors.torch import load_file, save_file

from cdx.errors import InputError
from cdx.integrity import file_sha256


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CDX_TRACEBACK", raising=False)


@pytest.fixture(scope="module")
def face(tmp_path_factory):
    path = tmp_path_factory.mktemp("face") / "face.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(72, 72, 3, generator=g) * 255).byte().numpy()).save(path)
    return path


def run_args(ckpt, out, *extra):
    return ["run", "--backend", "torch", "--checkpoint", ckpt, "--text", CAPTION, "--steps", 2, "--out", out, *extra]


def user_folder(path):
    """A folder of the user's: their own files, one of them named manifest.json."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text('{"mine": true}')
    (path / "notes.txt").write_text("not cdx's")
    return path


# --- 1. never destroy what cdx did not write -----------------------------------------------------------------

@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_export_never_replaces_a_users_folder(tiny_bundle, tmp_path, overwrite):
    out = user_folder(tmp_path / "mine")
    refused_and_unchanged(tmp_path, ["export", "--checkpoint", tiny_bundle, "--out", out, *overwrite],
                          "not a cdx artifact")


def test_export_refuses_a_file_a_bundle_and_its_own_export_without_overwrite(tiny_bundle, tiny_export, tmp_path):
    f = tmp_path / "file"
    f.write_text("data")
    refused_and_unchanged(tmp_path, ["export", "--checkpoint", tiny_bundle, "--out", f], "not a folder")
    bundle = copy_tree(tiny_bundle, tmp_path / "bundle")
    refused_and_unchanged(tmp_path, ["export", "--checkpoint", tiny_bundle, "--out", bundle, "--overwrite"],
                          "a cdx bundle")
    export = copy_tree(tiny_export, tmp_path / "export")
    refused_and_unchanged(tmp_path, ["export", "--checkpoint", tiny_bundle, "--out", export], "--overwrite")


def test_edit_save_state_never_deletes_a_folder_or_file(tiny_bundle, face, tmp_path):
    folder = user_folder(tmp_path / "state")
    image = folder / "face.png"  # the input image inside the --save-state folder
    image.write_bytes(face.read_bytes())
    args = ["edit", "--image", image, "--checkpoint", tiny_bundle, "--text", CAPTION, "--out", tmp_path / "o.png",
            "--embed-steps", 1, "--finetune-steps", 1, "--steps", 1]
    refused_and_unchanged(tmp_path, [*args, "--save-state", folder], "not a cdx artifact")
    refused_and_unchanged(tmp_path, [*args, "--save-state", folder, "--overwrite"], "not a cdx artifact")
    refused_and_unchanged(tmp_path, [*args, "--save-state", image], "not a folder")


def test_convert_and_assemble_never_replace_a_users_folder(tiny_bundle, tmp_path):
    out = user_folder(tmp_path / "mine")
    official = tmp_path / "x.ckpt"
    official.write_bytes(b"not read: the target is refused first")
    refused_and_unchanged(tmp_path, ["convert", "--official", official, "--preset", "official-256", "--out", out],
                          "not a cdx artifact")
    refused_and_unchanged(tmp_path, ["train", "assemble", "--from-bundle", tiny_bundle, "--out", out],
                          "not a cdx artifact")
    export = copy_tree(tiny_bundle, tmp_path / "b")  # a bundle is replaced by a bundle only
    (export / "bundle.json").rename(export / "manifest.json")
    edit_json(export / "manifest.json", lambda m: {**m, "format": "cdx-onnx"})
    refused_and_unchanged(tmp_path, ["train", "assemble", "--from-bundle", tiny_bundle, "--out", export],
                          "not a cdx bundle")


def test_save_bundle_replaces_only_its_own_kind_when_told(tiny_bundle, tmp_path):
    from cdx.models.bundle import load_bundle, save_bundle

    model = load_bundle(tiny_bundle)
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(InputError, match="not a cdx artifact"):
        save_bundle(model, mine, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["manifest.json", "notes.txt"]
    out = tmp_path / "b"
    save_bundle(model, out)
    with pytest.raises(InputError, match="--overwrite"):
        save_bundle(model, out)
    save_bundle(model, out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


# --- 2. malformed artifacts: one line naming the file and the fix --------------------------------------------

BUNDLE_DAMAGE = {
    "a_list": lambda m: [m],
    "no_files": lambda m: {k: v for k, v in m.items() if k != "files"},
    "null_config": lambda m: {**m, "config": None},
    "config_missing_key": lambda m: {**m, "config": {k: v for k, v in m["config"].items() if k != "modalities"}},
    "nan_scale_factor": lambda m: {**m, "config": {**m["config"], "scale_factor": math.nan}},
    "negative_eta": lambda m: {**m, "config": {**m["config"], "eta": -1.0}},
    "negative_size": lambda m: _entry(m, bytes=-5),
    "float_size": lambda m: _entry(m, bytes=1.5),
    "string_size": lambda m: _entry(m, bytes="big"),
    "null_sha": lambda m: _entry(m, sha256=None),
    "escaping_file": lambda m: _entry(m, file="../../etc/passwd"),
    "null_entry": lambda m: {**m, "files": {**m["files"], "vae": None}},
}


def _entry(m, **change):
    m["files"]["text_unet"].update(change)
    return m


@pytest.mark.parametrize("damage", sorted(BUNDLE_DAMAGE))
def test_malformed_bundle_json(tiny_bundle, tmp_path, damage):
    ckpt = copy_tree(tiny_bundle, tmp_path / "b")
    edit_json(ckpt / "bundle.json", BUNDLE_DAMAGE[damage])
    line = refused_and_unchanged(tmp_path, run_args(ckpt, tmp_path / "o.png"), "bundle.json")
    assert "cdx convert" in line or "cdx train" in line


@pytest.mark.parametrize("damage", ["not_json", "binary", "empty"])
def test_unparsable_bundle_json(tiny_bundle, tmp_path, damage):
    ckpt = copy_tree(tiny_bundle, tmp_path / "b")
    (ckpt / "bundle.json").write_bytes({"not_json": b"{", "binary": b"\xff\x00\xfe", "empty": b""}[damage])
    refused_and_unchanged(tmp_path, run_args(ckpt, tmp_path / "o.png"), "bundle.json")


@pytest.mark.parametrize("damage", ["missing", "truncated", "same_size_same_mtime", "nan_weights_rehashed"])
def test_damaged_bundle_weights(tiny_bundle, tmp_path, damage):
    ckpt = copy_tree(tiny_bundle, tmp_path / "b")
    f = ckpt / "text_unet.safetensors"
    assert cli(*run_args(ckpt, tmp_path / "warm.png")).exit_code == 0  # hashes recorded as verified
    (tmp_path / "warm.png").unlink()
    if damage == "missing":
        f.unlink()
    elif damage == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "same_size_same_mtime":
        flip_byte(f)
    else:  # a consistent bundle whose weights hold NaN: its manifest updated to match
        state = load_file(str(f))
        k = next(iter(state))
        state[k] = torch.full_like(state[k], math.nan)
        save_file(state, str(f))
        edit_json(ckpt / "bundle.json", lambda m: _entry(m, sha256=file_sha256(f), bytes=f.stat().st_size))
    refused_and_unchanged(tmp_path, run_args(ckpt, tmp_path / "o.png"), "text_unet.safetensors")


def _redigest(manifest):
    from cdx.export.manifest import manifest_digest

    manifest["digest"] = manifest_digest(manifest)
    return manifest


EXPORT_DAMAGE = {
    "a_list": lambda m: [m],
    "no_networks": lambda m: _redigest({k: v for k, v in m.items() if k != "networks"}),
    "null_config": lambda m: _redigest({**m, "config": None}),
    "string_opset": lambda m: _redigest({**m, "opset": "17"}),
    "null_entry": lambda m: _redigest({**m, "networks": {**m["networks"], "vae_decoder": None}}),
    "escaping_file": lambda m: _redigest({**m, "networks": {**m["networks"], "vae_decoder": {
        **m["networks"]["vae_decoder"], "file": "../vae_decoder.onnx"}}}),
    "guidance_edited": lambda m: {**m, "config": {**m["config"], "modalities": [
        {**mod, "guidance": 4.0} for mod in m["config"]["modalities"]]}},
    "eta_edited": lambda m: {**m, "config": {**m["config"], "eta": 1.0}},
    "no_digest": lambda m: {k: v for k, v in m.items() if k != "digest"},
}


@pytest.mark.parametrize("damage", sorted(EXPORT_DAMAGE))
def test_malformed_export_manifest(tiny_export, tmp_path, damage):
    folder = copy_tree(tiny_export, tmp_path / "export")
    edit_json(folder / "manifest.json", EXPORT_DAMAGE[damage])
    args = ["run", "--backend", "onnxruntime", "--engine-dir", folder, "--text", CAPTION, "--steps", 1,
            "--out", tmp_path / "o.png"]
    line = refused_and_unchanged(tmp_path, args, "manifest.json" if damage != "escaping_file" else "export")
    assert "cdx export" in line


def test_swapped_onnx_with_its_hashes_updated(tiny_export, tmp_path):
    folder = copy_tree(tiny_export, tmp_path / "export")
    (folder / "text_unet.onnx").write_bytes((folder / "text_diffuser.onnx").read_bytes())

    def swap(m):
        m["networks"]["text_unet"]["sha256"] = file_sha256(folder / "text_unet.onnx")
        return _redigest(m)

    edit_json(folder / "manifest.json", swap)
    args = ["run", "--backend", "onnxruntime", "--engine-dir", folder, "--text", CAPTION, "--steps", 1,
            "--out", tmp_path / "o.png"]
    refused_and_unchanged(tmp_path, args, "text_unet.onnx", "not those of text_unet")


@pytest.fixture(scope="module")
def edit_state(tiny_bundle, face, tmp_path_factory):
    state = tmp_path_factory.mktemp("state") / "s"
    r = cli("edit", "--backend", "torch", "--image", face, "--checkpoint", tiny_bundle, "--text", CAPTION, "--out",
            state.parent / "o.png", "--embed-steps", 1, "--finetune-steps", 1, "--steps", 1, "--save-state", state)
    assert r.exit_code == 0, r.output
    return state


def _restate(folder, name, tensors):
    save_file(tensors, str(folder / name))
    edit_json(folder / "edit.json", lambda m: {**m, "files": {**m["files"], name: file_sha256(folder / name)}})


def _damage_state(folder, damage):
    emb = folder / "embeddings.safetensors"
    if damage == "truncated":
        emb.write_bytes(emb.read_bytes()[:-64])
    elif damage == "edit_json_list":
        edit_json(folder / "edit.json", lambda m: [m])
    elif damage == "no_edit_json":
        (folder / "edit.json").unlink()
    else:  # consistent files (hashes updated) holding wrong keys, wrong shapes or NaN
        t = load_file(str(emb))
        if damage == "wrong_key":
            t["target.nose"] = t.pop("target.text")
        elif damage == "wrong_shape":
            t = {k: v[:, :5] for k, v in t.items()}
        elif damage == "nan_embedding":
            t["optimised.text"] = torch.full_like(t["optimised.text"], math.nan)
        _restate(folder, emb.name, t)
    if damage == "unet_wrong_shape":
        u = load_file(str(folder / "text_unet.safetensors"))
        k = next(iter(u))
        u[k] = torch.zeros(3, 1)
        _restate(folder, "text_unet.safetensors", u)


@pytest.mark.parametrize("damage", ["truncated", "edit_json_list", "no_edit_json", "wrong_key", "wrong_shape",
                                    "nan_embedding", "unet_wrong_shape"])
def test_damaged_edit_state(tiny_bundle, face, edit_state, tmp_path, damage):
    folder = copy_tree(edit_state, tmp_path / "state")
    _damage_state(folder, damage)
    args = ["edit", "--backend", "torch", "--image", face, "--checkpoint", tiny_bundle, "--out", tmp_path / "o.png",
            "--steps", 1, "--load-state", folder]
    refused_and_unchanged(tmp_path, args, "--load-state", "cdx edit")


# --- 3. bounds and options -----------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--opset", 3], "--opset 3"), (["--opset", 99], "--opset 99"),
    (["--pad-heads", -8], "--pad-heads -8"), (["--pad-heads", 4096], "--pad-heads 4096"),
])
def test_export_bounds(tiny_bundle, tmp_path, args, needle):
    refused_and_unchanged(tmp_path, ["export", "--checkpoint", tiny_bundle, "--out", tmp_path / "e", *args], needle)


@pytest.mark.parametrize("args,needle", [
    (["--embed-lr", "nan"], "--embed-lr nan"), (["--embed-lr", "-1"], "--embed-lr"),
    (["--finetune-lr", "inf"], "--finetune-lr inf"), (["--seed", str(2**64)], "--seed"),
    (["--alpha", "nan"], "--alpha"), (["--save-state", "s", "--load-state", "s"], "--load-state"),
])
def test_edit_bounds(tiny_bundle, face, tmp_path, args, needle):
    args = [str(tmp_path / a) if a == "s" else a for a in args]
    refused_and_unchanged(tmp_path, ["edit", "--image", face, "--checkpoint", tiny_bundle, "--text", CAPTION,
                                     "--out", tmp_path / "o.png", *args], needle)


def test_edit_refuses_bombs_and_output_over_input(tiny_bundle, face, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(bomb)  # 144 megapixels in a few kilobytes
    base = ["edit", "--checkpoint", tiny_bundle, "--text", CAPTION, "--embed-steps", 1, "--finetune-steps", 1]
    refused_and_unchanged(tmp_path, [*base, "--image", bomb, "--out", tmp_path / "o.png"], "megapixels")
    mine = tmp_path / "face.png"
    mine.write_bytes(face.read_bytes())
    refused_and_unchanged(tmp_path, [*base, "--image", mine, "--out", mine], "same file")


def test_bench_refusals(tiny_bundle, tmp_path):
    base = ["bench", "--checkpoint", tiny_bundle, "--steps", 1, "--runs", 1]
    refused_and_unchanged(tmp_path, ["bench", "--preset", "nope"], "--preset nope")
    refused_and_unchanged(tmp_path, [*base, "--backends", "nope"], "--backends nope")
    refused_and_unchanged(tmp_path, [*base, "--backends", "torch", "--stages", "nope"], "--stages nope")
    refused_and_unchanged(tmp_path, [*base, "--backends", "torch", "--device", "bogus"], "--device bogus")
    refused_and_unchanged(tmp_path, [*base, "--backends", "torch", "--json", "/proc/cdx.json"], "--json")
    line = refused_and_unchanged(tmp_path, [*base, "--backends", "tensorrt"], "tensorrt")
    helptext = cli("bench", "--help").output
    assert all(opt in helptext for opt in re.findall(r"--[a-z][a-z-]*", line))  # it suggests only what bench has


@pytest.mark.parametrize("device", ["cuda", "bogus", "cuda:99"])
def test_run_device_refused(tiny_bundle, tmp_path, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    refused_and_unchanged(tmp_path, run_args(tiny_bundle, tmp_path / "o.png", "--device", device), "device")


# --- 3. write errors are one line ----------------------------------------------------------------------------

def test_outputs_under_proc_and_sys(tiny_bundle, face, tmp_path):
    for out in ("/proc/cdx.png", "/sys/cdx.png", "/proc/self/cdx.png"):
        refused_and_unchanged(tmp_path, run_args(tiny_bundle, out), out)
    refused_and_unchanged(tmp_path, ["export", "--checkpoint", tiny_bundle, "--out", "/proc/cdx-export"], "/proc")
    refused_and_unchanged(tmp_path, ["edit", "--image", face, "--checkpoint", tiny_bundle,
                                     "--text", CAPTION, "--out", tmp_path / "o.png", "--save-state", "/proc/st"],
                          "--save-state")


@pytest.mark.parametrize("where", ["a_file", "under_proc", "home_under_proc"])
def test_unusable_cache(tiny_bundle, tmp_path, monkeypatch, where):
    if where == "a_file":
        cache = tmp_path / "cachefile"
        cache.write_text("a file, not a folder")
        monkeypatch.setenv("CDX_CACHE", str(cache))
    elif where == "under_proc":
        monkeypatch.setenv("CDX_CACHE", "/proc/cdx-cache")
    else:
        monkeypatch.delenv("CDX_CACHE")
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setenv("HOME", "/proc/self/nohome")
    args = ["run", "--backend", "onnxruntime", "--checkpoint", tiny_bundle, "--text", CAPTION, "--steps", 1,
            "--out", tmp_path / "o.png"]
    refused_and_unchanged(tmp_path, args, "cache")


def test_full_disk_while_writing(tiny_bundle, tmp_path, monkeypatch):
    """A failure no check can foresee comes after the progress lines: then the error is the last line."""
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    for args in (run_args(tiny_bundle, tmp_path / "o.png"), ["export", "--checkpoint", tiny_bundle, "--out",
                                                              tmp_path / "e"]):
        r = cli(*args)
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "no space left" in r.stderr
        assert [p.name for p in tmp_path.iterdir() if p.name != "cache"] == []  # nothing partial
        monkeypatch.setattr("cdx.export.onnx_export.export_network", full)


def test_unexpected_failure_is_one_line_naming_a_bug(tiny_bundle, tmp_path, monkeypatch):
    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("cdx.models.bundle.verify_files", bug)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = assert_refused(cli(*run_args(tiny_bundle, tmp_path / "o.png")), "bug", "CDX_TRACEBACK=1", code=1)
    assert "ZeroDivisionError" in line and sorted(p.name for p in tmp_path.iterdir()) == before


# --- the generation request's own bounds ------------------------------------------------------------------

@pytest.mark.parametrize("extra,needle", [
    (["--seed", str(2**64)], "seed"), (["--seed", "-1"], "seed"), (["--batch", str(10**9)], "batch"),
    (["--guidance", "text=1e9"], "guidance"), (["--guidance", "text=nan"], "guidance"),
])
def test_request_bounds(tiny_bundle, tmp_path, extra, needle):
    refused_and_unchanged(tmp_path, run_args(tiny_bundle, tmp_path / "o.png", *extra), needle)


def test_output_equal_to_input(tiny_bundle, tmp_path, real_mask):
    mask = tmp_path / "mask.png"
    mask.write_bytes(real_mask.read_bytes())
    base = ["run", "--backend", "torch", "--checkpoint", tiny_bundle, "--steps", 1]
    refused_and_unchanged(tmp_path, [*base, "--mask", mask, "--out", mask], "--out")
    out = tmp_path / "o.png"
    refused_and_unchanged(tmp_path, [*base, "--text", CAPTION, "--out", out, "--save-influence", out],
                          "--save-influence")


@pytest.fixture(scope="module")
def known_words_bundle(tmp_path_factory):
    """The tiny model, recording that its text collaborator was trained on CAPTION's words only."""
    import dataclasses

    from cdx.models.bundle import save_bundle
    from cdx.models.config import preset
    from cdx.models.random_init import random_model
    from cdx.models.tokenizer import Tokenizer

    cfg = preset("tiny")
    words = tuple(sorted(set(Tokenizer().words(CAPTION))))
    mods = tuple(dataclasses.replace(m, vocabulary=words) if m.kind == "text" else m for m in cfg.modalities)
    path = tmp_path_factory.mktemp("known") / "tiny"
    save_bundle(random_model(dataclasses.replace(cfg, modalities=mods), seed=7), path)
    return path


@pytest.mark.parametrize("caption, recorded, named", [
    ("", False, "the caption is empty"), ("   ", False, "the caption is empty"),
    ("zzqx blorf", True, "none of the caption's words mean anything to it: 'zzqx', 'blorf'"),
    (CAPTION.replace("beard", "moustache"), True, "'moustache': the model never saw it in training"),
    (CAPTION.replace("beard", "moustache and a cape"), True, "'cape': the model never saw them in"),
    ("This man has a beard \U0001F642", False, "'\U0001F642': the text encoder's vocabulary cannot spell it"),
])
def test_empty_or_unknown_caption_warns(tiny_bundle, known_words_bundle, tmp_path, caption, recorded,
                                                named):
    bundle = known_words_bundle if recorded else tiny_bundle
    r = cli("run", "--backend", "torch", "--checkpoint", bundle, "--text", caption, "--steps", 1,
            "--out", tmp_path / "o.png")
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    warned = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and named in warned[0], r.stderr


def test_known_caption_and_bundle_without_vocabulary_do_not_warn(tiny_bundle, known_words_bundle, tmp_path):
    for bundle, caption in ((known_words_bundle, CAPTION.upper()), (tiny_bundle, "zzqx blorf")):
        r = cli("run", "--backend", "torch", "--checkpoint", bundle, "--text", caption, "--steps", 1,
                "--out", tmp_path / "o.png")
        assert r.exit_code == 0 and "warning:" not in r.stderr, r.stderr


def test_the_shipped_model_names_the_words_it_never_saw():
    from cdx.api import config_of
    from cdx.sampling.request import make_request

    cfg = config_of(None)
    assert {"grey", "blond", "lipstick"} <= set(cfg.modality("text").vocabulary)
    with pytest.warns(UserWarning, match="'gray': the model never saw it in training") as caught:
        make_request(cfg, text="This woman has gray hair.")
    assert caught[0].filename == __file__  # the caller's line, not cdx's


# --- every output path checked against every input; a batch written as one set -----------------------------

def test_bench_eval_and_assemble_outputs_never_replace_inputs(tiny_bundle, tiny_export, tmp_path, real_mask):
    mask = tmp_path / "mask.png"
    mask.write_bytes(real_mask.read_bytes())
    bench = ["bench", "--checkpoint", tiny_bundle, "--backends", "torch", "--steps", 1, "--runs", 1]
    for flag in ("--json", "--plot"):
        refused_and_unchanged(tmp_path, [*bench, "--mask", mask, flag, mask], flag, "--mask")
    export = copy_tree(tiny_export, tmp_path / "export")
    refused_and_unchanged(tmp_path, ["bench", "--engine-dir", export, "--backends", "onnxruntime", "--steps", 1,
                                     "--json", export / "manifest.json"], "--json", "--engine-dir")
    bundle = copy_tree(tiny_bundle, tmp_path / "bundle")
    refused_and_unchanged(tmp_path, ["eval", "--checkpoint", bundle, "--n", 50, "--json", bundle / "bundle.json"],
                          "--json", "--checkpoint")
    refused_and_unchanged(tmp_path, ["train", "assemble", "--from-bundle", bundle, "--out", tmp_path], "--out",
                          "holds")
    refused_and_unchanged(tmp_path, ["run", "--backend", "torch", "--checkpoint", bundle, "--text", CAPTION,
                                     "--out", mask, "--grid", mask], "--grid")


def test_a_batch_is_written_as_one_set(tiny_bundle, tmp_path, monkeypatch):
    """--batch 3 --out face.png writes face-0..2.png (and the grid) all or nothing: a full disk on the third
    leaves the user's earlier face-0.png as it was, and no partial or temporary file."""
    mine = tmp_path / "face-0.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(mine)
    before = mine.read_bytes()
    real_save, calls = Image.Image.save, []

    def full_on_third(self, fp, *a, **k):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", full_on_third)
    r = cli(*run_args(tiny_bundle, tmp_path / "face.png", "--batch", 3, "--grid", tmp_path / "grid.png"))
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "no space left" in r.stderr
    assert mine.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["face-0.png"]
    monkeypatch.setattr(Image.Image, "save", real_save)
    r = cli(*run_args(tiny_bundle, tmp_path / "face.png", "--batch", 3, "--grid", tmp_path / "grid.png"))
    assert r.exit_code == 0, r.output
    assert mine.read_bytes() != before and sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == [
        "face-0.png", "face-1.png", "face-2.png", "grid.png"]


# --- values bounded: FreeU factors, captions that are not text, memory before a bench allocates ------------

@pytest.mark.parametrize("factors", ["1e30,1,1,1", "1.1,1.2,1,-0.5", "nan,1,1,1", "1.1,1.2,1,inf", "2.5,1,1,1"])
def test_freeu_factors_bounded(tiny_bundle, tmp_path, factors):
    refused_and_unchanged(tmp_path, run_args(tiny_bundle, tmp_path / "o.png", "--freeu", factors), "--freeu",
                          "[0, 2]")


def test_freeu_factors_in_a_bundle_config_bounded(tiny_bundle, tmp_path):
    ckpt = copy_tree(tiny_bundle, tmp_path / "b")
    edit_json(ckpt / "bundle.json", lambda m: {**m, "config": {**m["config"], "freeu": [1e30, 1, 1, 1]}})
    refused_and_unchanged(tmp_path, run_args(ckpt, tmp_path / "o.png"), "bundle.json", "freeu")


@pytest.mark.parametrize("caption", ["a man \udcff", "\udcc3\udca9t\udce9"])
def test_caption_that_is_not_text(tiny_bundle, tmp_path, caption):
    args = ["run", "--backend", "torch", "--checkpoint", tiny_bundle, "--text", caption, "--steps", 1,
            "--out", tmp_path / "o.png"]
    refused_and_unchanged(tmp_path, args, "not valid text")


@pytest.mark.parametrize("extra", [["--batch", 100_000], ["--batch", "1,4,200000"],
                                   ["--variants", "default", "--device", "cpu", "--batch", 100_000]])
def test_bench_memory_checked_before_allocating(tiny_bundle, tmp_path, extra):
    import resource

    args = ["bench", "--backends", "torch", "--steps", 1, "--runs", 1, "--warmup", 0, *extra]
    if "--variants" not in extra:
        args += ["--checkpoint", tiny_bundle]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused_and_unchanged(tmp_path, args, "--batch", "GiB", "smaller --batch")
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 500  # MB: nothing allocated
