"""`cdx eval`: the metrics on known inputs, the shipped eval nets on clean faces, the methods' weights, the command."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cdx.cli import main
from cdx.backends.pytorch.eager import TorchRunner
from cdx.sampling.loop import draw_noise, sample
from cdx.evaluation.methods import METHODS, Method, run_method
from cdx.sampling.settings import Sampling
from cdx.evaluation.metrics import attribute_accuracy, fd, frechet_distance, paired_ci, pixel_accuracy
from cdx.evaluation.nets import CLASSIFIER_ATTRS, load_eval_nets, parse_target
from cdx.evaluation.run_eval import _contexts, evaluate, markdown_table, synthetic_faces
from cdx.models.config import preset
from cdx.models.random_init import random_model
from cdx.models.tokenizer import Tokenizer


# ---------------------------------------------------------------------------------------------------- metrics

def test_eval_fd_zero_on_itself_and_grows_with_shift():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 8)) @ rng.standard_normal((8, 8))
    assert fd(a, a) == pytest.approx(0.0, abs=1e-8)
    shifts = [0.1, 0.5, 1.0, 2.0]
    values = [fd(a, a + s) for s in shifts]
    assert values == sorted(values) and values[0] > 0
    # equal covariances: FD is exactly the squared mean difference, 8 * s^2
    assert values == pytest.approx([8 * s * s for s in shifts], rel=1e-6)


def test_eval_frechet_distance_matches_the_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    v1, v2 = rng.uniform(0.2, 3, 5), rng.uniform(0.2, 3, 5)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-9)
    # a rotated pair: the symmetric-root form still equals tr(S1 + S2 - 2 (S1 S2)^(1/2))
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    s1, s2 = q @ np.diag(v1) @ q.T, q @ np.diag(v2) @ q.T
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-7)


def test_eval_accuracies_on_known_inputs():
    target = np.array([[0, 1], [2, 3]])
    assert pixel_accuracy(target, target) == 1.0
    assert pixel_accuracy(np.array([[0, 1], [0, 0]]), target) == 0.5
    pred = np.array([[1, 2], [1, 0], [3, 3]])
    true = np.array([[1, 0], [1, 1], [0, 3]])
    stated = np.array([[True, True], [True, False], [False, True]])
    overall, per = attribute_accuracy(pred, true, stated, ("a", "b"))
    assert overall == pytest.approx(3 / 4)  # stated pairs: (0,a) ok, (0,b) wrong, (1,a) ok, (2,b) ok
    assert per == {"a": 1.0, "b": 0.5}
    _, per = attribute_accuracy(pred, true, np.zeros_like(stated), ("a", "b"))
    assert per == {"a": None, "b": None}


def test_eval_paired_fd_interval_separates_a_shifted_set_from_another_draw():
    from cdx.evaluation.metrics import feature_stats, paired_fd_cis

    rng = np.random.default_rng(4)
    ref = rng.normal(size=(400, 6))
    mu, sigma = feature_stats(ref)
    a = rng.normal(size=(200, 6))
    shifted = a + 0.5  # the same conditions, every image moved away from the reference
    d, lo, hi = paired_fd_cis(a, {"b": shifted}, mu, sigma, reps=200)["b"]
    assert d == pytest.approx(fd(a, ref) - fd(shifted, ref)) and hi < 0 and lo <= d <= hi
    other = rng.normal(size=(200, 6))  # another draw: no difference
    d, lo, hi = paired_fd_cis(a, {"b": other}, mu, sigma, reps=200)["b"]
    assert lo < 0 < hi
    with pytest.raises(ValueError, match="feature arrays"):
        paired_fd_cis(a, {"b": a[:-1]}, mu, sigma)


def test_eval_paired_interval_covers_the_difference_and_zero_only_when_there_is_none():
    rng = np.random.default_rng(3)
    den = rng.integers(1, 6, size=300)  # stated attributes per image
    a = rng.binomial(den, 0.85)
    better = np.minimum(den, a + rng.binomial(1, 0.3, size=300))  # +1 correct on about 30 % of the images
    diff, lo, hi = paired_ci(better, a, den)
    assert diff == pytest.approx((better.sum() - a.sum()) / den.sum()) and lo <= diff <= hi and lo > 0
    noise = rng.binomial(den, 0.85)  # another draw of the same method: no real difference
    diff, lo, hi = paired_ci(noise, a, den)
    assert lo < 0 < hi and hi - lo < 0.1
    assert paired_ci(a, a, den) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="arrays"):
        paired_ci(a, a[:-1], den)
    with pytest.raises(ValueError, match="nothing was counted"):
        paired_ci(a * 0, a * 0, den * 0)


# ------------------------------------------------------------------------------------------ shipped eval nets

def test_eval_shipped_nets_score_clean_faces_high():
    nets = load_eval_nets()
    faces = synthetic_faces((424242,), 64)  # a seed stream neither the nets nor the diffusion model trained on
    parse = nets.parse(faces["images"])
    assert parse.shape == (64, 32, 32)
    assert pixel_accuracy(parse, parse_target(faces["labels"])) > 0.9
    pred = nets.attributes(faces["images"])
    assert pred.shape == (64, len(CLASSIFIER_ATTRS))
    acc = dict(zip(CLASSIFIER_ATTRS, (pred == faces["attrs"]).mean(0)))
    assert (pred == faces["attrs"]).mean() > 0.85
    assert all(acc[a] > 0.9 for a in CLASSIFIER_ATTRS if a != "age"), acc
    assert acc["age"] > 0.45, acc  # chance is 0.25; twenties vs thirties is the known weak spot (nets.py)
    feats = nets.features(faces["images"])
    assert feats.shape == (64, nets.classifier.feature_dim + nets.parser.ch[-1]) and np.isfinite(feats).all()
    assert fd(feats[:32], feats[32:]) < fd(feats[:32], nets.features(np.full_like(faces["images"][32:], 128)))


# ------------------------------------------------------------------------------------------------ the methods

@pytest.fixture(scope="module")
def tiny_setup():
    torch.manual_seed(0)
    runner = TorchRunner(random_model(preset("tiny"), seed=11))
    cfg = runner.cfg
    faces = synthetic_faces((5,), 1)  # batch 1 keeps the 2-step runs of every method within a few seconds
    faces["parse"] = parse_target(faces["labels"])
    modalities = _contexts(runner, cfg, Tokenizer(), faces, 0, 1)
    table = cfg.step_table(2)
    x_T, noise = draw_noise(3, 1, (cfg.latent_channels, *cfg.latent_size), table.num_steps)
    runs = {m: run_method(m, runner, modalities, x_T, noise, table, return_influence=True) for m in METHODS}
    return runner, modalities, table, x_T, noise, runs


def test_eval_every_method_runs(tiny_setup):
    _, _, table, x_T, _, runs = tiny_setup
    assert table.num_steps == 2
    for name, (loop, names) in runs.items():
        assert loop.z0.shape == x_T.shape and torch.isfinite(loop.z0).all(), name
        w = loop.influence  # (N, M, B, 1, h, w)
        assert w.shape == (2, len(names), 1, 1, *x_T.shape[-2:]), name
        torch.testing.assert_close(w.sum(1), torch.ones_like(w[:, 0]), rtol=0, atol=1e-6)
    assert runs["text_only"][1] == ["text"] and runs["mask_only"][1] == ["mask"]
    assert runs["collaborative"][1] == ["mask", "text"]
    outs = [runs[m][0].z0 for m in METHODS]
    assert all(not torch.equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])  # the methods differ


def test_eval_collaborative_is_the_engine_sampler(tiny_setup):
    runner, modalities, table, x_T, noise, runs = tiny_setup
    names, contexts = zip(*modalities.values())
    ref = sample(runner, names, contexts, x_T, noise, table, None, return_influence=True)
    loop = runs["collaborative"][0]
    torch.testing.assert_close(loop.influence, ref.influence, rtol=0, atol=1e-6)
    torch.testing.assert_close(loop.z0, ref.z0, rtol=1e-5, atol=1e-5)
    assert loop.influence.std(dim=(-2, -1)).min() > 1e-4  # the diffusers' weights really vary over space


def test_eval_ablation_weights(tiny_setup):
    runs = tiny_setup[-1]
    w = runs["composable"][0].influence
    assert torch.equal(w, torch.full_like(w, 0.5))  # the paper's baseline: equal weights
    w = runs["no_spatial"][0].influence
    torch.testing.assert_close(w, w.mean((-2, -1), keepdim=True).expand_as(w), rtol=0, atol=1e-6)
    assert (w - 0.5).abs().max() > 1e-3  # the mean of the diffusers' weights, not 0.5
    w = runs["no_temporal"][0].influence
    torch.testing.assert_close(w[1], w[0], rtol=0, atol=1e-6)
    collab = runs["collaborative"][0].influence
    torch.testing.assert_close(w[0], collab[0], rtol=0, atol=1e-6)  # both start from the step-0 influence
    assert (collab[1] - collab[0]).abs().max() > 1e-4  # whereas the real influence changes with t
    for m in ("text_only", "mask_only"):
        assert torch.equal(runs[m][0].influence, torch.ones_like(runs[m][0].influence))


# ------------------------------------------------------------------------------------------------ the command

def test_eval_command_writes_json_and_markdown(tiny_bundle, tmp_path):
    out, md = tmp_path / "eval.json", tmp_path / "eval.md"
    methods = ["collaborative", "composable", "text_only"]  # a subset keeps the tiny model's CPU time down
    r = CliRunner().invoke(main, ["eval", "--backend", "torch", "--checkpoint", str(tiny_bundle), "--n", "2",
                                  "--steps", "1", "--batch", "2", "--n-ref", "16", "--methods", ",".join(methods),
                                  "--json", str(out), "--markdown", str(md)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert result["n"] == 2 and list(result["methods"]) == methods
    for row in list(result["methods"].values()) + [result["real"]]:
        assert {"fd", "text_acc", "mask_acc"} <= set(row)
        assert row["fd"] >= 0 and 0 <= row["mask_acc"] <= 1
    table = md.read_text()
    assert "| collaborative |" in table and "FD" in table and table in r.output


def test_eval_no_temporal_keeps_each_steps_shaping_and_the_frozen_variant_does_not(tiny_setup):
    from cdx.sampling.loop import make_shaping
    from cdx.kernels import combine_weights
    from cdx.train.assemble import sampling_config

    runner, modalities, table, x_T, noise, _ = tiny_setup
    cfg = sampling_config(runner.cfg, shaping=True, shaping_scale=4.0)
    shaping_for = lambda names: make_shaping(cfg, names, table, cfg.timesteps)  # noqa: E731
    shaping = shaping_for(["mask", "text"])
    assert shaping is not None and shaping.decay[1, 0] < shaping.decay[0, 0]  # the mask's weight decays over t
    runs = {m: run_method(m, runner, modalities, x_T, noise, table, cfg, return_influence=True)[0].influence
            for m in ("collaborative", "no_temporal", "no_temporal_frozen")}
    collab, nt, frozen = runs["collaborative"], runs["no_temporal"], runs["no_temporal_frozen"]
    torch.testing.assert_close(nt[0], collab[0], rtol=0, atol=1e-5)  # step 0 is the same for all three
    torch.testing.assert_close(frozen[1], frozen[0], rtol=0, atol=1e-6)  # frozen: shaping of step 0 kept
    # no_temporal: the step-0 diffusers' weights under step 1's shaping
    names, contexts = zip(*modalities.values())
    t0 = torch.from_numpy(table.timesteps[:1]).expand(x_T.shape[0])
    logits = torch.stack([runner.run(f"{n}_diffuser", {"x": x_T, "t": t0, "context": c})["logits"]
                          for n, c in zip(names, contexts)])
    want = combine_weights(logits, torch.from_numpy(shaping.decay[1]), torch.from_numpy(shaping.scale),
                           shaping.receiver)
    torch.testing.assert_close(nt[1], want, rtol=0, atol=1e-5)
    assert (nt[1] - frozen[1]).abs().max() > 1e-3  # the frozen variant keeps the mask where no_temporal lets go


def test_eval_takes_a_benchmarks_own_method_and_pairs_it_with_collaborative(tiny_setup):
    runner = tiny_setup[0]
    mask_heavy = Method("mask_heavy", ("mask", "text"), lambda: lambda i, eps, influence: torch.stack(
        [torch.full_like(eps[0, :, :1], 0.9, dtype=torch.float32), torch.full_like(eps[0, :, :1], 0.1,
                                                                                    dtype=torch.float32)]))
    res = evaluate(runner, runner.cfg, n=4, sampling=Sampling(steps=1), methods=["collaborative", mask_heavy, "text_only"], batch=4,
                   n_ref=8)
    assert list(res["methods"]) == ["collaborative", "mask_heavy", "text_only"]
    assert set(res["paired"]) == {"mask_heavy", "text_only"}
    for name, pair in res["paired"].items():
        for key in ("text_acc", "mask_acc"):
            if pair[key] is None:  # the tiny faces stated no attribute
                continue
            d, lo, hi = pair[key]
            assert d == pytest.approx(res["methods"]["collaborative"][key] - res["methods"][name][key], abs=1e-4)
            assert lo <= d + 1e-9 and d <= hi + 1e-9
    table = markdown_table(res)
    assert "collaborative - row: FD | text | mask |" in table and "| mask_heavy |" in table
    for name, pair in res["paired"].items():
        d, lo, hi = pair["fd"]
        assert d == pytest.approx(res["methods"]["collaborative"]["fd"] - res["methods"][name]["fd"], abs=1e-2)
        assert lo <= hi
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(runner, runner.cfg, n=2, methods=["collaborative", "magic"])


def test_eval_command_methods_all_plus_an_extra(tiny_bundle, tmp_path):
    out = tmp_path / "eval.json"
    r = CliRunner().invoke(main, ["eval", "--backend", "torch", "--checkpoint", str(tiny_bundle), "--n", "2",
                                  "--steps", "1", "--batch", "2", "--n-ref", "4", "--methods",
                                  "no_temporal_frozen,collaborative", "--json", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    result = json.loads(out.read_text())
    assert list(result["methods"]) == ["no_temporal_frozen", "collaborative"]
    assert set(result["paired"]) == {"no_temporal_frozen"}


def test_eval_command_refuses_unknown_method(tiny_bundle):
    r = CliRunner().invoke(main, ["eval", "--backend", "torch", "--checkpoint", str(tiny_bundle),
                                  "--methods", "collaborative,magic"])
    assert r.exit_code == 2 and "magic" in r.output


def test_config_with_shaping_switches_the_flag_alone():
    """`--shaping/--no-shaping` of run and eval: the model's own setting when not given."""
    import dataclasses

    cfg = preset("tiny")
    assert cfg.with_shaping(None) is cfg
    for on in (True, False):
        got = cfg.with_shaping(on)
        assert got.shaping is on and dataclasses.replace(got, shaping=cfg.shaping) == cfg
