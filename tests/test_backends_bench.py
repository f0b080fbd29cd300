"""`cdx bench --backends all`: every registered backend measured or listed with the reason it cannot run,
one JSON with the medians and where the time goes."""
from __future__ import annotations

import json

from click.testing import CliRunner

from cdx.api import config_of
from cdx.cli import main
from cdx.backends.registry import backend_names


def test_bench_all_covers_every_registered_backend(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path / "cache"))
    js = tmp_path / "bench.json"
    r = CliRunner().invoke(main, ["bench", "--checkpoint", str(tiny_bundle), "--backends", "all", "--in-process",
                                  "--steps", "1", "--runs", "1", "--warmup", "0", "--stages", "end_to_end,step",
                                  "--json", str(js)])
    assert r.exit_code == 0, r.output
    rep = json.loads(js.read_text())
    measured = {row["backend"] for row in rep["results"]}
    assert measured | set(rep["skipped"]) == set(backend_names())
    assert {"torch", "onnxruntime"} <= measured
    assert all(why for why in rep["skipped"].values())
    stages = {(row["backend"], row["stage"]) for row in rep["results"]}
    for b in measured:
        for stage in ("first_call", "end_to_end", "encode", "loop", "decode", "step"):
            assert (b, stage) in stages, (b, stage)
        assert rep["where_the_time_goes"][b]["loop_steps"] == config_of(tiny_bundle).step_table(1).num_steps
    assert all(row["median_ms"] > 0 for row in rep["results"])
    for b in measured - {"torch"}:  # the same request and seed: the same image as torch's (fp32)
        db = rep["where_the_time_goes"][b]["psnr_vs_torch_db"]
        assert db == "identical" or db >= 40, (b, db)
    assert "image vs torch" in r.output
    assert "speed-up of onnxruntime over torch" in r.output
    assert rep["machine"]["cpu_count"] >= 1 and "onnxruntime" in rep["machine"]
