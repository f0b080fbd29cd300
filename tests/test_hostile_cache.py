"""Cache poisoning and killed runs: the shipped model renders the same image after every attempt
to poison the export cache; a tampered cache entry is exported again, a foreign one is left alone; the
temporary folders of killed writers are removed by the next writer in that folder."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from hostile import CAPTION, assert_refused, cli, copy_tree, edit_json, flip_byte, snapshot

from cdx.defaults import DEFAULT_MODEL

WRITER = """
import sys, time
from cdx.io import atomic_folder, atomic_path
if sys.argv[2] == "folder":
    with atomic_folder(sys.argv[1], "cdx-onnx") as tmp:
        (tmp / "part.onnx").write_bytes(b"x" * 1000)
        print("writing", flush=True)
        time.sleep(600)
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half an image")
    print("writing", flush=True)
    time.sleep(600)
"""


def render(out, cache, ckpt=None):
    args = ["run", "--backend", "onnxruntime", "--text", CAPTION, "--steps", 2, "--seed", 3, "--out", out]
    r = cli(*args, *(["--checkpoint", ckpt] if ckpt else []), env={"CDX_CACHE": str(cache)})
    assert r.exit_code == 0, r.output
    return out.read_bytes()


def entries(cache):
    return sorted(p.name for p in (cache / "onnx").iterdir() if not p.name.startswith("."))


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if ".cdx-tmp-" in n)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def shipped(cache, tmp_path_factory):
    """The shipped model's image, rendered from the cache's first-use export."""
    return render(tmp_path_factory.mktemp("base") / "shipped.png", cache)


def test_poisoned_copies_of_the_shipped_model_never_reach_its_cache_entry(shipped, cache, tmp_path):
    assert len(entries(cache)) == 1
    copy = copy_tree(DEFAULT_MODEL, tmp_path / "copy")
    assert render(tmp_path / "copy.png", cache, copy) == shipped  # an intact copy is the same model: warm cache
    damages = {
        "corrupted, size and mtime kept": lambda d: flip_byte(d / "text_unet.safetensors"),
        "truncated": lambda d: (d / "vae.safetensors").write_bytes((d / "vae.safetensors").read_bytes()[:-9]),
        "missing file": lambda d: (d / "mask_diffuser.safetensors").unlink(),
    }
    for i, (what, damage) in enumerate(damages.items()):
        bad = copy if i == 0 else copy_tree(DEFAULT_MODEL, tmp_path / f"copy{i}")
        damage(bad)
        before = snapshot(tmp_path)
        args = ["run", "--backend", "onnxruntime", "--checkpoint", bad, "--text", CAPTION, "--steps", 2,
                "--out", tmp_path / "bad.png"]
        assert_refused(cli(*args, env={"CDX_CACHE": str(cache)}), "safetensors")
        assert snapshot(tmp_path) == before, what
        assert render(tmp_path / "again.png", cache) == shipped, what
    assert len(entries(cache)) == 1  # nothing was exported from a damaged copy


def test_a_tampered_cache_entry_is_exported_again(shipped, cache, tmp_path):
    from cdx.export.manifest import manifest_digest

    (entry,) = entries(cache)
    manifest = cache / "onnx" / entry / "manifest.json"
    original = json.loads(manifest.read_text())["config"]

    def unguided(m):  # the guidance the graphs were built with, edited away, digest and all
        m["config"]["modalities"] = [{**mod, "guidance": 1.0} for mod in m["config"]["modalities"]]
        m["digest"] = manifest_digest(m)
        return m

    edit_json(manifest, unguided)
    assert render(tmp_path / "again.png", cache) == shipped
    assert json.loads(manifest.read_text())["config"] == original and entries(cache) == [entry]


def _start_writer(target, kind="folder"):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(target), kind], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    return p


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_stale_temporaries_are_removed_live_ones_kept(tmp_path, kind):
    from cdx.io import atomic_write_text, remove_stale

    dead, live = _start_writer(tmp_path / "a", kind), _start_writer(tmp_path / "b", kind)
    try:
        dead.kill()
        dead.wait()
        assert len(leftovers(tmp_path)) == 4  # two temporaries, two lock files
        removed = remove_stale(tmp_path)
        assert len(removed) == 1 and removed[0].startswith(".a.")
        assert len(leftovers(tmp_path)) == 2 and all(n.startswith(".b.") for n in leftovers(tmp_path))
        dead = _start_writer(tmp_path / "c", kind)
        dead.kill()
        dead.wait()
        atomic_write_text(tmp_path / "d.json", "{}")  # the next write in the folder clears the dead one's
        assert all(n.startswith(".b.") for n in leftovers(tmp_path)) and (tmp_path / "d.json").read_text() == "{}"
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["d.json"]
    finally:
        live.kill()
        live.wait()


def test_first_use_export_survives_a_killed_run_and_a_foreign_slot(tiny_bundle, tmp_path):
    """A killed first-use export's leftovers go with the next export; a slot holding something cdx did not
    write is left as it is and the next slot is used."""
    from cdx.export.cache import cache_key
    from cdx.export.onnx_export import DEFAULT_OPSET
    from cdx.models.bundle import load_bundle, verified_bundle_hash

    cache = tmp_path / "cache"
    key = cache_key(verified_bundle_hash(tiny_bundle), load_bundle(tiny_bundle).cfg, DEFAULT_OPSET)
    foreign = cache / "onnx" / key
    foreign.mkdir(parents=True)
    (foreign / "manifest.json").write_text('{"format": "not cdx"}')
    killed = _start_writer(cache / "onnx" / f"{key}-1")
    killed.kill()
    killed.wait()
    assert leftovers(cache / "onnx")
    before = snapshot(foreign)
    render(tmp_path / "o.png", cache, tiny_bundle)
    assert snapshot(foreign) == before and (foreign / "manifest.json").read_text() == '{"format": "not cdx"}'
    assert entries(cache) == [key, f"{key}-1"] and leftovers(cache / "onnx") == []


def _export_until_writing(tiny_bundle, out):
    env = {**os.environ, "CDX_CACHE": str(out.parent / "cache")}
    p = subprocess.Popen([sys.executable, "-m", "cdx", "export", "--checkpoint", str(tiny_bundle), "--out", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not any(n.endswith(tuple("0123456789abcdef")) and any((out.parent / n).iterdir())
                  for n in leftovers(out.parent)):
        assert p.poll() is None and time.monotonic() < deadline, "the export ended before it was interrupted"
        time.sleep(0.05)
    return p


def test_killed_and_terminated_exports_leave_nothing_behind(tiny_bundle, tmp_path):
    p = _export_until_writing(tiny_bundle, tmp_path / "e")
    p.send_signal(signal.SIGTERM)  # the run removes its own temporary folder and exits 130
    assert p.wait(timeout=300) == 130 and "Traceback" not in p.stderr.read()
    assert leftovers(tmp_path) == [] and not (tmp_path / "e").exists()
    p = _export_until_writing(tiny_bundle, tmp_path / "e")
    p.kill()  # SIGKILL: nothing can run; the next writer in the folder removes what is left
    p.wait()
    assert leftovers(tmp_path) and not (tmp_path / "e").exists()
    r = cli("train", "assemble", "--from-bundle", tiny_bundle, "--out", tmp_path / "b")
    assert r.exit_code == 0, r.output
    assert leftovers(tmp_path) == [] and (tmp_path / "b" / "bundle.json").is_file()


def test_released_claims_restore_a_target_caught_between_its_renames(tmp_path):
    """What a SIGTERM handler does mid-install: the new content goes, the old content is back in place."""
    from cdx import io

    target = tmp_path / "bundle"
    target.mkdir()
    (target / "bundle.json").write_text("old")
    with io._claim(tmp_path, "bundle") as tmp:
        (tmp / "bundle.json").write_text("new")
        os.rename(target, tmp.with_name(tmp.name + ".old"))  # the first of _install's two renames
        io.release_all_claims()
        assert (target / "bundle.json").read_text() == "old" and not tmp.exists() and not io._CLAIMED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# --- the OpenVINO backend's compiled blobs: checked on use, a damaged one compiled again -------------------

def _ov_render(out, cache, ckpt):
    args = ["run", "--backend", "openvino", "--checkpoint", ckpt, "--text", CAPTION, "--steps", 2, "--seed", 3,
            "--out", out]
    r = cli(*args, env={"CDX_CACHE": str(cache)})
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    return r, out.read_bytes()


def _blobs(cache):
    (folder,) = (cache / "openvino").iterdir()
    return sorted(folder.glob("cdx-*.blob"))


def _zero_block(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 4096] = bytes(b ^ 0x5A for b in data[len(data) // 3: len(data) // 3 + 4096])
    path.write_bytes(bytes(data))


BLOB_DAMAGE = {
    "block_changed": _zero_block,
    "byte_flipped_mtime_kept": flip_byte,
    "truncated": lambda p: p.write_bytes(p.read_bytes()[:-1000]),
    "empty": lambda p: p.write_bytes(b""),
    "record_nested_too_deeply": lambda p: p.with_suffix(".json").write_text("[" * 100_000),
    "record_not_json": lambda p: p.with_suffix(".json").write_bytes(b"\xff\xfe{"),
}


@pytest.mark.parametrize("damage", sorted(BLOB_DAMAGE))
def test_a_damaged_openvino_blob_is_compiled_again_and_the_image_is_right(tiny_bundle, tmp_path, damage):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'cdx[openvino]')")
    cache = tmp_path / "cache"
    _, clean = _ov_render(tmp_path / "clean.png", cache, tiny_bundle)
    blobs = _blobs(cache)
    assert blobs and all(b.with_suffix(".json").is_file() for b in blobs)
    for b in blobs:
        BLOB_DAMAGE[damage](b)
    r, again = _ov_render(tmp_path / "again.png", cache, tiny_bundle)
    assert again == clean  # the right image, not what the damaged blobs would give
    notices = [ln for ln in r.stderr.replace("\r", "\n").splitlines() if "openvino cache:" in ln]
    assert len(notices) == len(blobs) and all("compiling it again" in ln or "writing it again" in ln
                                              for ln in notices), r.stderr
    for b in _blobs(cache):  # rebuilt: each blob is again the bytes its record names
        rec = json.loads(b.with_suffix(".json").read_text())
        assert rec["sha256"] == hashlib.sha256(b.read_bytes()).hexdigest()
    r, third = _ov_render(tmp_path / "third.png", cache, tiny_bundle)
    assert third == clean and "openvino cache:" not in r.stderr  # nothing to rebuild any more


def test_an_openvino_blob_cdx_did_not_record_is_left_alone(tiny_bundle, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'cdx[openvino]')")
    cache = tmp_path / "cache"
    _, clean = _ov_render(tmp_path / "clean.png", cache, tiny_bundle)
    blob = _blobs(cache)[0]
    blob.with_suffix(".json").unlink()  # a blob without cdx's record is not cdx's: never replaced
    blob.write_bytes(b"someone else's file")
    folder = snapshot(blob.parent)
    r, again = _ov_render(tmp_path / "again.png", cache, tiny_bundle)
    assert again == clean and snapshot(blob.parent) == folder
    assert "was not written by cdx; left alone" in r.stderr


def test_unreadable_hash_records_are_written_again(tiny_bundle, shipped, cache, tmp_path):
    """The verified-hash records (cache/verified/*.json) are cdx's own: malformed or nested too deeply to parse,
    they are rebuilt, and every run still gives the right image."""
    records = sorted((cache / "verified").glob("*.json"))
    key = hashlib.sha256(str(DEFAULT_MODEL.resolve()).encode()).hexdigest()[:32]  # cdx.integrity's record name
    shipped_record = cache / "verified" / f"{key}.json"
    assert shipped_record in records
    for doc in ("[" * 100_000, "{not json"):
        for rec in records:
            rec.write_text(doc)
        assert render(tmp_path / "again.png", cache) == shipped
        assert isinstance(json.loads(shipped_record.read_text()), dict)  # the shipped model's record: rebuilt
