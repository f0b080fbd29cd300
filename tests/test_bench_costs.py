"""`cdx bench` measures each backend in a process of its own and reports what an image costs: network
evaluations, GFLOP and the GFLOP/s achieved against this machine's matmul peak."""
from __future__ import annotations

import json

from click.testing import CliRunner

from cdx.bench.flops import evaluations, image_cost, network_gflop
from cdx.models.config import preset
from cdx.models.random_init import random_model
from cdx.sampling.settings import Sampling


def test_evaluations_count_what_the_loop_runs():
    cfg = preset("tiny")
    names = [m.name for m in cfg.modalities]
    plain = Sampling(steps=10).checked(cfg)
    n = plain.table(cfg).num_steps
    calls = evaluations(cfg, plain, names)
    assert calls["mask_unet"] == calls["text_unet"] == n and calls["text_diffuser"] == n and calls["vae_decoder"] == 1
    cached = evaluations(cfg, Sampling(steps=10, cache_interval=3).checked(cfg), names)
    assert cached["text_unet_full"] == -(-n // 3) and cached["text_unet_full"] + cached["text_unet_shallow"] == n
    reused = evaluations(cfg, Sampling(steps=10, influence_interval=2).checked(cfg), names)
    assert reused["mask_diffuser"] == -(-n // 2) and reused["mask_unet"] == n


def test_gflop_per_network_and_image():
    model = random_model(preset("tiny").with_feature_cache(1), seed=0)
    g = network_gflop(model)
    assert g["text_unet_shallow"] < 0.5 * g["text_unet_full"] and abs(g["text_unet_full"] - g["text_unet"]) < 1e-6
    cfg = model.cfg
    cost = image_cost(g, evaluations(cfg, Sampling(steps=4).checked(cfg), ["mask", "text"]))
    n = Sampling(steps=4).checked(cfg).table(cfg).num_steps
    assert cost["evaluations"] == 4 * n and cost["gflop"] > n * (g["text_unet"] + g["mask_unet"])


def test_bench_isolates_backends_and_reports_costs(tiny_bundle, tmp_path):
    from cdx.cli import main

    out = tmp_path / "b.json"
    r = CliRunner().invoke(main, ["bench", "--checkpoint", str(tiny_bundle), "--backends", "torch,onnxruntime",
                                  "--stages", "end_to_end", "--steps", "1", "--runs", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["isolated"] and rep["peak_gflops"]["fp32"] > 0 and rep["sampling"]["steps"] == 1
    for b in ("torch", "onnxruntime"):
        d = rep["where_the_time_goes"][b]
        assert d["evaluations_per_image"] == 4 and d["gflop_per_image"] > 0 and d["gflops_achieved"] > 0
    assert "psnr_vs_torch_db" in rep["where_the_time_goes"]["onnxruntime"]
