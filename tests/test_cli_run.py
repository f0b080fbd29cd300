"""`cdx run` and `cdx convert` end to end on a tiny random bundle, and their refusals of bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cdx.cli import main

CAPTION = "This man has beard of medium length. He is in his thirties."


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def base(bundle, out, *extra):
    return ["run", "--backend", "torch", "--checkpoint", bundle, "--steps", "3", "--out", out, *extra]


def test_run_text_and_mask_torch(tiny_bundle, real_mask, tmp_path):
    out, infl = tmp_path / "face.png", tmp_path / "influence.png"
    r = run_cli(*base(tiny_bundle, out, "--text", CAPTION, "--mask", real_mask, "--save-influence", infl))
    assert r.exit_code == 0, r.output
    assert "backend: torch" in r.output
    im = np.asarray(Image.open(out))
    assert im.shape == (64, 64, 3) and im.std() > 0
    grid = np.asarray(Image.open(infl))
    assert grid.ndim == 2 and grid.shape[0] > 64  # two modality rows


@pytest.mark.parametrize("which", ["text", "mask"])
def test_run_unimodal(tiny_bundle, real_mask, tmp_path, which):
    out = tmp_path / "uni.png"
    cond = ["--text", CAPTION] if which == "text" else ["--mask", real_mask]
    r = run_cli(*base(tiny_bundle, out, *cond))
    assert r.exit_code == 0, r.output
    assert out.is_file()


def test_run_seed_determinism_and_batch(tiny_bundle, real_mask, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        assert run_cli(*base(tiny_bundle, out, "--text", CAPTION, "--seed", seed)).exit_code == 0
    ia, ib, ic = (np.asarray(Image.open(p)) for p in (a, b, c))
    assert np.array_equal(ia, ib) and not np.array_equal(ia, ic)
    out, grid = tmp_path / "batch.png", tmp_path / "grid.png"
    assert run_cli(*base(tiny_bundle, out, "--text", CAPTION, "--batch", 3, "--seed", 1, "--grid", grid)).exit_code == 0
    items = [np.asarray(Image.open(tmp_path / f"batch-{i}.png")) for i in range(3)]
    def psnr(x, y):
        return 10 * np.log10(255.0 ** 2 / max(np.mean((x.astype(float) - y.astype(float)) ** 2), 1e-10))

    # seeds 1, 2, 3: item i is the image of its seed alone (batched arithmetic: PSNR >= 40 dB, not bit-equal)
    assert not out.exists() and psnr(items[0], ia) >= 40 and psnr(items[1], ic) >= 40 and psnr(items[0], ic) < 30
    assert np.asarray(Image.open(grid)).shape[1] == 3 * 64 + 2 * 2


def test_run_long_caption_warns(tiny_bundle, tmp_path):
    r = CliRunner().invoke(main, [str(a) for a in base(tiny_bundle, tmp_path / "x.png", "--text", "face " * 100)])
    assert r.exit_code == 0
    assert "truncated" in r.output


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def bad_masks(tmp_path: Path, real_mask: Path) -> dict[str, Path]:
    raw = real_mask.read_bytes()
    ids = np.full((32, 32), 25, np.uint8)
    Image.fromarray(ids, mode="L").save(tmp_path / "ids25.png")
    return {
        "missing": tmp_path / "nope.png",
        "truncated": _write(tmp_path / "trunc.png", raw[: len(raw) // 2]),
        "not_png": _write(tmp_path / "text.png", b"hello, not an image\n"),
        "bad_ids": tmp_path / "ids25.png",
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "not_png", "bad_ids"])
def test_run_bad_mask_one_line_error(tiny_bundle, real_mask, tmp_path, case):
    out = tmp_path / "out.png"
    r = run_cli(*base(tiny_bundle, out, "--mask", bad_masks(tmp_path, real_mask)[case]))
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    assert not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--steps", "0"], "--steps 0"),
    (["--batch", "-1"], "--batch -1"),
    (["--eta", "-0.5"], "--eta -0.5"),
    (["--eta", "1.2"], "--eta 1.2: out of range (0 <= eta <= 1)"),
    (["--steps", "5000"], "--steps 5000: out of range (1..1000)"),
])
def test_run_bad_values(tiny_bundle, tmp_path, args, needle):
    out = tmp_path / "out.png"
    r = run_cli(*base(tiny_bundle, out, "--text", CAPTION, *args))
    assert r.exit_code == 2 and needle in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_run_unwritable_output(tiny_bundle, tmp_path):
    for out in (tmp_path / "no_such_dir" / "x.png", tmp_path / "x.txt"):
        r = run_cli(*base(tiny_bundle, out, "--text", CAPTION))
        assert r.exit_code == 2 and r.output.startswith("error:"), r.output
        assert not out.exists()


def test_run_missing_or_wrong_checkpoint(tiny_bundle, tmp_path):
    out = tmp_path / "x.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_bundle.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    unet = broken / "text_unet.safetensors"
    unet.write_bytes(unet.read_bytes()[:1000])
    for ckpt in (tmp_path / "missing", empty, broken):
        r = run_cli("run", "--backend", "torch", "--checkpoint", ckpt, "--text", CAPTION, "--out", out)
        assert r.exit_code == 2 and r.output.startswith("error:"), r.output
        assert len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_run_no_traceback_in_subprocess(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cdx", "run", "--backend", "torch", "--checkpoint",
                           str(tmp_path / "missing"), "--text", "a face", "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_convert_refuses_mismatched_checkpoint(tmp_path):
    from golden import find_golden

    ckpt = find_golden("*.ckpt")[0]
    out = tmp_path / "bundle"
    r = run_cli("convert", "--official", ckpt, "--preset", "official-256", "--out", out)
    assert r.exit_code == 2
    assert "missing" in r.output or "shape mismatch" in r.output
    assert not out.exists()


def test_convert_refuses_non_checkpoint(tmp_path):
    bad = _write(tmp_path / "x.ckpt", b"definitely not a checkpoint")
    r = run_cli("convert", "--official", bad, "--preset", "official-256", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "not a loadable" in r.output


def test_bench_plot_without_matplotlib_is_one_line_before_any_work(tiny_bundle, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    plot, js = tmp_path / "r.png", tmp_path / "r.json"
    r = run_cli("bench", "--checkpoint", str(tiny_bundle), "--backends", "torch", "--steps", "1", "--runs", "1",
                "--json", str(js), "--plot", str(plot))
    assert r.exit_code == 2 and "matplotlib" in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not plot.exists() and not js.exists()
