"""`cdx cache ls` and `cdx cache clean`: sizes per kind and model, and removing only what cdx wrote."""
from __future__ import annotations

import json
import os
import re
import time

import pytest
from click.testing import CliRunner

from cdx.cli import main
from cdx.cli.cache import _shipped_hash, human_size

DIGEST = "ab" * 32
DAY = 86400


def _write(path, data: bytes | str = b"x" * 1000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def _age(path, days: float):
    """Make `path` (and everything in it) last written `days` ago."""
    t = time.time() - days * DAY
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (t, t), follow_symlinks=False)
    os.utime(path, (t, t), follow_symlinks=False)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder holding one entry of every kind cdx writes, and things cdx did not write."""
    root = tmp_path / "cache"
    shipped = _shipped_hash()
    config = {"preset": "small", "modalities": [{"name": "mask"}, {"name": "text"}]}
    _write(root / "onnx" / "e1" / "manifest.json", json.dumps(
        {"format": "cdx-onnx", "bundle_hash": shipped, "config": config, "digest": DIGEST}))
    _write(root / "onnx" / "e1" / "text_unet.onnx", b"x" * 5000)
    _write(root / "onnx" / "foreign" / "manifest.json", json.dumps({"format": "something-else"}))
    _write(root / "openvino" / DIGEST[:24] / "123456.blob")
    _write(root / "openvino" / DIGEST[:24] / f"cdx-{'c' * 32}.blob")
    _write(root / "openvino" / DIGEST[:24] / f"cdx-{'c' * 32}.json", "{}")
    _write(root / "openvino" / ("d" * 24) / "notes.txt")  # a file OpenVINO never writes: not cdx's
    _write(root / "openvino-int8" / "q1" / "int8.json", json.dumps(
        {"format": "cdx-openvino-int8", "export_digest": DIGEST}))
    _write(root / "random" / "tiny-seed0" / "bundle.json", json.dumps(
        {"format": "cdx-bundle", "config": {"preset": "tiny", "modalities": [{"name": "text"}]}}))
    _write(root / "tmp" / "edit-abc123" / "bundle" / "x.onnx")
    _write(root / "verified" / f"{'e' * 32}.json", "{}")
    _write(root / "inductor" / "fxgraph" / "ab" / "entry")
    _write(root / ".onnx.cdx-tmp-0123456789ab" / "half.onnx")  # a killed writer's temporary (no lock)
    _write(root / "notes.txt")
    _write(root / "mystuff" / "keep.bin")
    target = tmp_path / "elsewhere"
    _write(target / "precious")
    (root / "onnx" / "link").symlink_to(target, target_is_directory=True)
    monkeypatch.setenv("CDX_CACHE", str(root))
    return root


def cli(*args):
    return CliRunner().invoke(main, ["cache", *args])


def foreign(root):
    return [root / "onnx" / "foreign" / "manifest.json", root / "openvino" / ("d" * 24) / "notes.txt",
            root / "notes.txt", root / "mystuff" / "keep.bin", root.parent / "elsewhere" / "precious",
            root / "onnx" / "link"]


def test_ls_sizes_per_kind_and_model(cache):
    r = cli("ls")
    assert r.exit_code == 0, r.output
    out = r.output
    for kind in ("onnx", "openvino", "openvino-int8", "inductor", "random", "tmp", "verified", "unfinished",
                 "not cdx's"):
        assert f"  {kind} " in out, (kind, out)
    assert "onnx/e1" in out and "preset small (mask, text), the shipped model" in out
    assert f"openvino/{DIGEST[:24]}" in out and "from export onnx/e1" in out
    assert "openvino-int8/q1" in out and "random/tiny-seed0" in out and "with random weights" in out
    e1 = sum(f.stat().st_size for f in (cache / "onnx" / "e1").iterdir())  # its manifest and a 5 kB graph
    assert re.search(rf"onnx/e1 +{re.escape(human_size(e1))} ", out), out
    assert "never removed by cdx cache clean" in out and "notes.txt" in out


def test_clean_older_than_removes_only_old_entries_cdx_wrote(cache):
    for p in [cache / "onnx" / "e1", cache / "tmp" / "edit-abc123", cache / "notes.txt", cache / "mystuff",
              cache / "openvino" / ("d" * 24)]:
        _age(p, 40)
    r = cli("clean", "--older-than", "30", "--dry-run")
    assert r.exit_code == 0, r.output
    assert "would remove onnx/e1" in r.output and "would remove tmp/edit-abc123" in r.output
    assert (cache / "onnx" / "e1").is_dir()
    r = cli("clean", "--older-than", "30")
    assert r.exit_code == 0, r.output
    assert not (cache / "onnx" / "e1").exists() and not (cache / "tmp" / "edit-abc123").exists()
    assert (cache / "openvino-int8" / "q1").is_dir() and (cache / "verified").iterdir()  # newer: kept
    assert "kept" in r.output and "cdx did not write" in r.output
    assert all(os.path.lexists(p) for p in foreign(cache))


def test_clean_all_leaves_foreign_files(cache):
    r = cli("clean", "--all")
    assert r.exit_code == 0, r.output
    for kind in ("onnx", "openvino", "openvino-int8", "random", "tmp", "verified", "inductor"):
        left = {p.name for p in (cache / kind).iterdir()}
        assert left <= {"foreign", "link", "d" * 24}, (kind, left)
    assert not (cache / ".onnx.cdx-tmp-0123456789ab").exists()
    assert all(os.path.lexists(p) for p in foreign(cache))
    assert (cache.parent / "elsewhere" / "precious").read_bytes() == b"x" * 1000  # the link was not followed


@pytest.mark.parametrize("args, words", [((), "--older-than DAYS or --all"),
                                         (("--all", "--older-than", "3"), "one of them"),
                                         (("--older-than", "-1"), ">= 0")])
def test_clean_needs_one_bound(cache, args, words):
    r = cli("clean", *args)
    assert r.exit_code == 2 and words in r.output, r.output
    assert (cache / "onnx" / "e1").is_dir()


def test_ls_without_a_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "none"))
    r = cli("ls")
    assert r.exit_code == 0 and "does not exist yet" in r.output
    assert not (tmp_path / "none").exists()


def test_shipped_hash_is_the_bundle_hash():
    from cdx.defaults import DEFAULT_MODEL
    from cdx.models.bundle import bundle_hash

    assert _shipped_hash() == bundle_hash(DEFAULT_MODEL)
    assert human_size(999) == "999 B" and human_size(1500) == "1.5 kB" and human_size(2.5e9) == "2.5 GB"
