"""Hostile training data and label maps: a damaged data-cache shard (or latents shard) is prepared again with a
one-line notice and trains on the right samples, never on zeros or ids out of range; cdx's own JSON records
that fail to parse are rebuilt or refused in one line; label maps are read as the ids they store at every bit
depth; images too large or too elongated to decode are named before they are decoded."""
from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from hostile import CAPTION, assert_refused, cli, refused_and_unchanged
from PIL import Image
from safetensors.numpy import load_file, save_file

from cdx.integrity import file_sha256
from cdx.models.config import preset
from cdx.train.prepare import prepare
from cdx.train.sources import synthetic


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CDX_TRACEBACK", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


CFG = preset("tiny")


def _prepare(cache):
    return prepare(synthetic(6, 3, 32), CFG.modalities, 32, cache)


def _items(data):
    return [{k: v.clone() for k, v in data[i].items()} for i in range(len(data))]


def _rewrite(data, change):
    """Rewrite shard 0 through change(arrays) and record its new hash: a damage the hash cannot see."""
    shard = data.folder / data.manifest["shards"][0]["file"]
    arrays = {k: v.copy() for k, v in load_file(str(shard)).items()}
    change(arrays)
    save_file(arrays, str(shard))
    man = json.loads((data.folder / "manifest.json").read_text())
    man["shards"][0]["sha256"] = file_sha256(shard)
    (data.folder / "manifest.json").write_text(json.dumps(man))


def _flip(data):
    shard = data.folder / data.manifest["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-3000:-1000] = bytes(2000)  # image bytes zeroed: the size is kept
    shard.write_bytes(bytes(raw))


def _set(name, index, value):
    def change(a):
        a[name][index] = value
    return change


SHARD_DAMAGE = {
    "images_zeroed": _flip,
    "truncated": lambda d: (d.folder / "shard-00000.safetensors").write_bytes(
        (d.folder / "shard-00000.safetensors").read_bytes()[:-500]),
    "missing": lambda d: (d.folder / "shard-00000.safetensors").unlink(),
    "mask_ids_out_of_range": lambda d: _rewrite(d, _set("mask", (0, 0), 40)),
    "token_ids_out_of_vocabulary": lambda d: _rewrite(d, _set("text", (0, 0), 10**6)),
    "offsets_damaged": lambda d: _rewrite(d, _set("text.offsets", 2, 100)),
    "offsets_not_increasing": lambda d: _rewrite(d, _set("mask.offsets", 3, 0)),
    "header_offsets_outside_the_file": lambda d: _rewrite_header(d),
    "manifest_nested_too_deeply": lambda d: (d.folder / "manifest.json").write_text("[" * 100_000),
    "manifest_not_json": lambda d: (d.folder / "manifest.json").write_bytes(b"\xff{"),
}


def _rewrite_header(data):
    shard = data.folder / "shard-00000.safetensors"
    raw = shard.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    header["image"]["data_offsets"] = [0, 10**12]
    body = json.dumps(header).encode()
    shard.write_bytes(len(body).to_bytes(8, "little") + body + raw[8 + n:])
    man = json.loads((data.folder / "manifest.json").read_text())
    man["shards"][0]["sha256"] = file_sha256(shard)
    (data.folder / "manifest.json").write_text(json.dumps(man))


@pytest.mark.parametrize("damage", sorted(SHARD_DAMAGE))
def test_a_damaged_data_cache_is_prepared_again(tmp_path, capsys, damage):
    data = _prepare(tmp_path / "dc")
    clean = _items(data)
    capsys.readouterr()
    SHARD_DAMAGE[damage](data)
    again = _prepare(tmp_path / "dc")
    notices = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("data cache:")]
    assert len(notices) == 1 and "preparing it again" in notices[0], notices
    got = _items(again)
    assert len(got) == len(clean) and all(torch.equal(a[k], b[k]) for a, b in zip(got, clean) for k in a)
    assert sorted(p.name for p in (tmp_path / "dc").iterdir()) == [data.folder.name]  # nothing left behind
    _prepare(tmp_path / "dc")
    assert "data cache:" not in capsys.readouterr().out  # intact now: used as it is


def test_damaged_latents_are_encoded_again(tmp_path, capsys):
    from cdx.models.autoencoder import Autoencoder
    from cdx.train.prepare import latents

    data = _prepare(tmp_path / "dc")
    vae = Autoencoder(CFG.autoencoder).eval()
    folder = latents(data, vae, "0" * 64, tmp_path / "work")
    shard = folder / "latents-00000.safetensors"
    clean = shard.read_bytes()
    raw = bytearray(clean)
    raw[-64:] = bytes(64)  # the last latent's values zeroed
    shard.write_bytes(bytes(raw))
    capsys.readouterr()
    assert latents(data, vae, "0" * 64, tmp_path / "work") == folder
    out = capsys.readouterr().out
    assert "latents cache:" in out and "encoding them again" in out
    assert shard.read_bytes() == clean


# --- cdx's own JSON records that fail to parse: refused in one line ---------------------------------------

def _data_folder(root, n=2, captions=None):
    (root / "images").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (40, 40), (i * 40, 90, 30)).save(root / "images" / f"{i}.png")
    doc = captions if captions is not None else json.dumps({str(i): CAPTION for i in range(n)})
    (root / "captions.json").write_text(doc)
    return root


@pytest.mark.parametrize("doc", ["[" * 100_000, "{" * 50_000, '{"0": "a"'])
def test_unparsable_captions_json_is_one_line(tmp_path, doc):
    root = _data_folder(tmp_path / "d", captions=doc)
    refused_and_unchanged(tmp_path, ["data", "check", root, "--preset", "tiny"], "captions.json", "JSON")


def test_a_caption_that_is_not_text_is_a_named_bad_sample(tmp_path):
    root = _data_folder(tmp_path / "d", captions=json.dumps({"0": CAPTION, "1": "a man \udcff"}))
    r = cli("data", "check", root, "--preset", "tiny")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    bad = [ln for ln in r.stdout.splitlines() if ln.startswith("  bad ")]
    assert len(bad) == 1 and bad[0].startswith("  bad 1:") and "not valid text" in bad[0], r.output


def test_an_unparsable_work_json_is_refused_in_one_line(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "work.json").write_text("[" * 100_000)
    args = ["train", "vae", "--preset", "tiny", "--steps", 1, "--batch", 2, "--data-size", 4, "--work", work]
    refused_and_unchanged(tmp_path, args, "--work", "work.json")


# --- label maps read as the ids they store, at every bit depth -------------------------------------------

def grey_png(path, ids: np.ndarray, depth: int) -> None:
    """A greyscale PNG of `ids` stored at `depth` bits a pixel (1, 2, 4, 8 or 16), written by hand: PIL
    writes no 2- or 4-bit greyscale."""
    h, w = ids.shape
    rows = []
    for row in ids:
        if depth >= 8:
            data = row.astype(">u2" if depth == 16 else np.uint8).tobytes()
        else:
            bits = "".join(format(int(v), f"0{depth}b") for v in row)
            bits += "0" * (-len(bits) % 8)
            data = int(bits, 2).to_bytes(len(bits) // 8, "big")
        rows.append(b"\0" + data)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16])
def test_greyscale_label_maps_are_read_raw_at_every_bit_depth(tmp_path, depth):
    from cdx.models.masks import load_label_map

    rng = np.random.default_rng(depth)
    ids = rng.integers(0, min(2**depth, 19), (37, 29))
    grey_png(tmp_path / "m.png", ids, depth)
    assert np.array_equal(load_label_map(tmp_path / "m.png"), ids)


def test_a_4_bit_label_map_gives_the_image_of_its_ids(tiny_bundle, tmp_path, mask_png):
    from cdx.models.masks import load_label_map, save_label_map

    ids = load_label_map(mask_png)
    ids = np.where(ids < 16, ids, 1).astype(np.uint8)  # classes 0..15: representable in 4 bits
    grey_png(tmp_path / "four.png", ids, 4)
    save_label_map(tmp_path / "palette.png", ids)
    images = []
    for m in ("four.png", "palette.png"):
        r = cli("run", "--backend", "torch", "--checkpoint", tiny_bundle, "--mask", tmp_path / m, "--steps", 1,
                "--out", tmp_path / f"out-{m}")
        assert r.exit_code == 0, r.output
        images.append((tmp_path / f"out-{m}").read_bytes())
    assert images[0] == images[1]


# --- images bounded before they are decoded ----------------------------------------------------------------

@pytest.mark.parametrize("size,needle", [((2_000_000, 1), "too elongated"), ((9000, 9000), "too many pixels")])
def test_data_check_names_images_too_large_to_decode_before_decoding(tmp_path, size, needle):
    import resource

    root = _data_folder(tmp_path / "d")
    Image.new("1", size).save(root / "images" / "1.png")  # a few kilobytes on disk
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = cli("data", "check", root, "--preset", "tiny")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    bad = [ln for ln in r.stdout.splitlines() if ln.startswith("  bad ")]
    assert len(bad) == 1 and bad[0].startswith("  bad 1: image 1.png") and needle in bad[0], r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert grown_mb < 500, grown_mb  # decided from the header: nothing of that size was allocated


def test_a_mask_whose_header_is_too_large_is_refused_before_decoding(tiny_bundle, tmp_path):
    mask = tmp_path / "bomb.png"
    grey_png(tmp_path / "small.png", np.zeros((2, 2), np.uint8), 8)
    raw = bytearray((tmp_path / "small.png").read_bytes())
    raw[16:24] = struct.pack(">II", 100_000, 100_000)  # the header claims 10 gigapixels
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    mask.write_bytes(bytes(raw))
    refused_and_unchanged(tmp_path, ["run", "--backend", "torch", "--checkpoint", tiny_bundle, "--mask", mask,
                                     "--steps", 1, "--out", tmp_path / "o.png"], "bomb.png", "megapixels")
    assert_refused(cli("bench", "--checkpoint", tiny_bundle, "--backends", "torch", "--mask", mask, "--steps", 1),
                   "megapixels")
