"""The torch-compile backend's inductor cache: a folder of cdx's own, every file's sha256 recorded after a
compile and checked before the next one; a damaged file empties it (only inductor's part) and compiles again
with a one-line notice, a folder cdx did not write is left alone, and `cdx cache ls/clean` know the folders."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hostile import flip_byte, snapshot

from cdx.backends.pytorch.compile import LOCK, RECORD, TREE, InductorCache
from cdx.backends.registry import make_runner
from cdx.cli import main
from cdx.export.onnx_export import random_inputs

KEY = "5" * 32
LABEL = {"config": {"preset": "tiny", "modalities": [{"name": "text"}]}, "target": "cpu torch.float32 default"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CDX_CACHE", str(root))
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    return root


def _tree_hashes(tree):
    return {p.relative_to(tree).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in tree.rglob("*") if p.is_file() and not p.name.endswith(".lock")}


def _restored(cache):
    """Neither variable names cdx's folder after a call (torch itself writes its default folder into
    TORCHINDUCTOR_CACHE_DIR when it is imported)."""
    return all(str(cache) not in os.environ.get(v, "") for v in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"))


def _fresh(folder):
    """The record names exactly the files inductor keeps in the folder, with their bytes' hashes."""
    rec = json.loads((folder / RECORD).read_text())
    return rec["format"] == "cdx-inductor" and rec["files"] == _tree_hashes(folder / TREE)


def _filled(cache, notices):
    """A cdx folder as a compile leaves it: inductor's files in the tree, recorded."""
    ic = InductorCache(KEY, LABEL, notices.append)
    with ic.using(compiling=True):  # checked (nothing there yet), "compiled", recorded
        for rel, data in {"fxgraph/ab/entry": b"graph" * 100, "ab/cab.main.so": b"\x7fELF" * 400,
                          "ab/cab.py": b"print('kernel')\n", "locks/cab.lock": b""}.items():
            (ic.path / rel).parent.mkdir(parents=True, exist_ok=True)
            (ic.path / rel).write_bytes(data)
    assert ic.folder == cache / "inductor" / KEY and _fresh(ic.folder) and notices == []
    return ic


DAMAGE = {
    "byte_flipped_mtime_kept": lambda t: flip_byte(t / "ab" / "cab.main.so"),
    "truncated": lambda t: (t / "fxgraph" / "ab" / "entry").write_bytes(b"graph"),
    "removed": lambda t: (t / "ab" / "cab.py").unlink(),
    "planted": lambda t: (t / "fxgraph" / "ab" / "other").write_bytes(b"not compiled by cdx"),
    "linked": lambda t: (t / "ab" / "cab2.so").symlink_to(t.parents[3] / "outside"),
    "record_nested_too_deeply": lambda t: (t.parent / RECORD).write_text("[" * 100_000),
    "record_not_json": lambda t: (t.parent / RECORD).write_bytes(b"\xff\xfe{"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damage_empties_only_inductors_tree_with_one_notice(cache, tmp_path, damage):
    (cache.parent / "outside").write_bytes(b"precious")
    notices = []
    ic = _filled(cache, notices)
    DAMAGE[damage](ic.path)
    with ic.using(compiling=False):  # a call that compiles nothing: nothing checked, nothing written
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(ic.path)
    assert notices == []
    with ic.using(compiling=True):
        assert os.environ["TRITON_CACHE_DIR"] == str(ic.path / "triton") and not ic.path.exists()
        (ic.path / "ab").mkdir(parents=True)
        (ic.path / "ab" / "cab.py").write_bytes(b"print('compiled again')\n")
    assert len(notices) == 1 and notices[0].startswith(f"inductor cache: {KEY}: ") and notices[0].endswith(
        "; compiling again") and "\n" not in notices[0], notices
    assert _fresh(ic.folder) and set(_tree_hashes(ic.path)) == {"ab/cab.py"}
    assert (cache.parent / "outside").read_bytes() == b"precious"  # a link is removed, never followed
    assert _restored(cache)
    with ic.using(compiling=True):
        pass
    assert len(notices) == 1  # nothing to rebuild any more


def test_lock_files_are_not_damage(cache):
    notices = []
    ic = _filled(cache, notices)
    (ic.path / "locks" / "new.lock").write_bytes(b"")
    with ic.using(compiling=True):
        pass
    assert notices == [] and (ic.path / "ab" / "cab.main.so").is_file()


@pytest.mark.parametrize("plant", ["files", "record_is_a_folder", "link"])
def test_a_folder_cdx_did_not_write_is_left_alone(cache, tmp_path, plant):
    folder = cache / "inductor" / KEY
    if plant == "link":
        (tmp_path / "theirs").mkdir()
        (tmp_path / "theirs" / "x.so").write_bytes(b"theirs")
        folder.parent.mkdir(parents=True)
        folder.symlink_to(tmp_path / "theirs", target_is_directory=True)
    else:
        (folder / (RECORD if plant == "record_is_a_folder" else TREE)).mkdir(parents=True)
        (folder / "notes.txt").write_bytes(b"theirs")
    before = snapshot(tmp_path, skip=())
    notices = []
    ic = InductorCache(KEY, LABEL, notices.append)
    assert ic.folder is None and folder not in ic.path.parents and ic.path != folder
    assert len(notices) == 1 and "left alone; compiling into a temporary folder" in notices[0]
    with ic.using(compiling=True):
        (ic.path / "ab").mkdir(parents=True)
        (ic.path / "ab" / "cab.py").write_bytes(b"print('kernel')\n")
    assert snapshot(tmp_path, skip=()) == before
    r = CliRunner().invoke(main, ["cache", "clean", "--all"])
    assert r.exit_code == 0 and snapshot(tmp_path, skip=()) == before, r.output


def test_a_users_own_inductor_folder_is_used_as_set(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    ic = InductorCache(KEY, LABEL, print)
    assert ic.path == tmp_path / "mine" and ic.folder is None and ic.env is None
    with ic.using(compiling=True):
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")
    assert not (cache / "inductor").exists()


def test_cache_ls_and_clean_know_the_folders(cache):
    _filled(cache, [])
    legacy = cache / "inductor" / "fxgraph" / "cd" / "entry"  # torch's layout, from cdx before per-key folders
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"x")
    theirs = cache / "inductor" / ("6" * 32)
    (theirs / TREE).mkdir(parents=True)
    (theirs / "notes.txt").write_bytes(b"theirs")
    r = CliRunner().invoke(main, ["cache", "ls"])
    assert r.exit_code == 0 and f"inductor/{KEY}" in r.output and "preset tiny (text), cpu torch.float32" in r.output
    assert f"inductor/{'6' * 32}" in r.output.split("not cdx's")[1], r.output
    r = CliRunner().invoke(main, ["cache", "clean", "--all"])
    assert r.exit_code == 0 and f"removed inductor/{KEY}" in r.output, r.output
    assert {p.name for p in (cache / "inductor").iterdir()} == {"6" * 32} and (theirs / "notes.txt").is_file()


# One compiled call in a fresh interpreter, as a new process makes it: inductor keeps what it loaded in memory,
# so only a new process reads its disk cache again (the case the record guards).
CHILD = r"""
import json, os, sys, torch
from cdx.backends.registry import make_runner
bundle, inputs, out = sys.argv[1:4]
runner, _ = make_runner("torch-compile", bundle, device="cpu")
notices = []
runner.notice = notices.append
torch.save(runner.run("text_unet", torch.load(inputs, weights_only=True)), out)
cache = os.environ["CDX_CACHE"]
restored = all(cache not in os.environ.get(v, "") for v in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"))
print(json.dumps({"folder": str(runner.inductor.folder), "restored": restored,
                  "notices": [n for n in notices if n.startswith("inductor cache:")]}))
"""


@pytest.mark.slow
def test_a_damaged_compiled_file_is_compiled_again_and_the_output_is_right(tiny_bundle, cache, tmp_path):
    """One real compile (text_unet on the CPU); a damaged kernel library is found before torch loads it."""
    inputs = random_inputs(make_runner("torch", tiny_bundle, device="cpu")[0].specs["text_unet"], 1,
                           torch.Generator().manual_seed(5))
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}

    def run(n):
        out = tmp_path / f"out{n}.pt"
        r = subprocess.run([sys.executable, "-c", CHILD, str(tiny_bundle), str(tmp_path / "inputs.pt"), str(out)],
                           env=env, capture_output=True, text=True, timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        info = json.loads(r.stdout.strip().splitlines()[-1])
        assert info["restored"]
        return Path(info["folder"]), torch.load(out, weights_only=True), info["notices"]

    folder, clean, notices = run(1)
    assert folder.parent == cache / "inductor" and _fresh(folder) and notices == []
    libs = sorted(p for p in (folder / TREE).rglob("*.so"))
    assert libs and (folder / LOCK).is_file()
    flip_byte(libs[0])
    folder2, again, notices = run(2)
    assert folder2 == folder and len(notices) == 1 and "is damaged (not the bytes cdx recorded)" in notices[0]
    assert libs[0].relative_to(folder).as_posix() in notices[0], notices
    assert all(torch.equal(clean[k], again[k]) for k in clean) and _fresh(folder)
    _, third, notices = run(3)
    assert notices == [] and all(torch.equal(clean[k], third[k]) for k in clean)
