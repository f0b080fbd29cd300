"""`cdx train` under torchrun on this CPU (gloo): 2 processes train what 1 process trains (the same global batch
and seed give the same losses), a run resumes with another number of processes, and the bundle runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from test_train_data import CAPTION, write_folder

TORCHRUN = Path(sys.executable).with_name("torchrun")
pytestmark = pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed beside this Python")


def cdx(args, procs: int = 1, timeout: int = 600) -> str:
    """Run `cdx ARGS` in a fresh process (procs > 1: under torchrun); returns its output, failing on an error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, "-m", "cdx", *args]
    else:
        cmd = [str(TORCHRUN), "--standalone", f"--nproc_per_node={procs}", "-m", "cdx", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
    return r.stdout + r.stderr


def meta(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["cdx_stage"])


STAGES = ("vae", "collab_mask", "collab_text", "diffusers")


def test_two_processes_train_what_one_trains_and_the_bundle_runs(tmp_path):
    data = write_folder(tmp_path / "d", n=16)
    common = ["--data", str(data), "--preset", "tiny", "--steps", "3", "--batch", "4", "--threads", "1"]
    cdx(["train", "all", "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "b1"), *common])
    out = cdx(["train", "all", "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "b2"), *common], procs=2)
    assert "2 process(es)" in out
    assert out.count("wrote ") == 1  # rank 0 alone logs and writes the bundle
    for stage in STAGES:
        one, two = meta(tmp_path / "w1" / f"{stage}.safetensors"), meta(tmp_path / "w2" / f"{stage}.safetensors")
        assert len(one["first_losses"]) == 3 and len(set(one["first_losses"])) > 1, stage
        np.testing.assert_allclose(two["first_losses"], one["first_losses"], rtol=1e-5, err_msg=stage)
        assert two["train"]["batch"] == 4
    mask = tmp_path / "mask.png"
    from cdx.models.masks import save_label_map
    from cdx.synth import generate

    save_label_map(mask, generate((1, 1), 64).label)
    cdx(["run", "--backend", "torch", "--checkpoint", str(tmp_path / "b2"), "--text", CAPTION, "--mask", str(mask),
         "--steps", "2", "--out", str(tmp_path / "x.png")])
    assert (tmp_path / "x.png").is_file()


def test_a_run_resumes_with_another_number_of_processes(tmp_path):
    data = write_folder(tmp_path / "d", n=16)
    work = ["--data", str(data), "--preset", "tiny", "--batch", "4", "--threads", "1", "--work"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    cdx(["train", "vae", *work, straight, "--steps", "5"])
    cdx(["train", "vae", *work, split, "--steps", "2"], procs=2)  # steps 1-2 on 2 processes
    out = cdx(["train", "vae", *work, split, "--steps", "5", "--resume"])  # steps 3-5 on 1
    assert "resumed from" in out and "at step 2" in out
    a, b = meta(Path(straight) / "vae.safetensors"), meta(Path(split) / "vae.safetensors")
    assert a["steps"] == b["steps"] == 5
    np.testing.assert_allclose(b["first_losses"], a["first_losses"][2:], rtol=1e-5)
