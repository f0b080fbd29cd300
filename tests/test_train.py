"""Training from scratch (`cdx.train`, `cdx train`): data preprocessing equals inference's, every stage's
loss falls on a fixed mini-batch, checkpoints resume bit for bit, and the assembled bundle runs."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from cdx.cli import main
from cdx.errors import InputError, StaleArtifactError
from cdx.models.autoencoder import Autoencoder, AutoencoderConfig
from cdx.models.bundle import bundle_hash, load_bundle, read_manifest, save_bundle
from cdx.models.collab import encoder_for
from cdx.models.config import ModalityConfig, ModelConfig
from cdx.models.masks import save_label_map
from cdx.models.random_init import random_model, randomize
from cdx.models.text_encoder import TextEncoderConfig
from cdx.models.unet import UNet, UNetConfig
from cdx.train import checkpoint, loop
from cdx.train.assemble import assemble, resample
from cdx.train.autoencoder import VaeConfig, encode_means, load_latents, scale_factor_of, train_vae, vae_loss
from cdx.train.collaborator import CollabConfig, eps_loss, schedule, train_collaborator, zero_init
from cdx.train.data import ShardSet
from cdx.train.diffusers import collaborative_eps, diffusers_loss, train_diffusers
from cdx.train.loop import TrainConfig
from cdx.train.prepare import prepare
from cdx.train.sources import synthetic

CAPTION = "This man has beard of medium length. He is in his thirties."


def micro_config() -> ModelConfig:
    """A 32x32 model of the same family (latent 3x8x8), small enough to train a few steps in a second."""
    ctx = 32
    unet = UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(2,), num_heads=2, context_dim=ctx)
    diffuser = dataclasses.replace(unet, out_channels=1)
    text = TextEncoderConfig(n_embed=ctx, n_layer=1, vocab_size=30522, max_seq_len=77, heads=2, dim_head=16)
    return ModelConfig(
        preset="micro-test",
        modalities=(ModalityConfig("mask", "mask", unet, diffuser, context_dim=ctx),
                    ModalityConfig("text", "text", unet, diffuser, text=text, context_dim=ctx)),
        autoencoder=AutoencoderConfig(embed_dim=3, z_channels=3, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1,
                                      resolution=32),
        latent_channels=3, latent_size=(8, 8), scale_factor=1.0, shaping=False,
    )


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores shared with other work: one thread avoids OpenMP spin-waiting on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def prepared(folder, n: int = 8, seed: int = 3, size: int = 32, cfg=None, workers: int = 1) -> ShardSet:
    """`n` synthetic faces prepared (images, mask and text conditions) under `folder`."""
    cfg = cfg or micro_config()
    return prepare(synthetic(n, seed, size), cfg.modalities, size, folder, workers=workers)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> ShardSet:
    return prepared(tmp_path_factory.mktemp("faces"))


def quick(**kw) -> TrainConfig:
    base = dict(steps=3, batch=2, lr=1e-3, warmup=0, seed=0, device="cpu", log_every=0, ckpt_every=0)
    return TrainConfig(**{**base, **kw})


def fixed(fn, seed=0):
    """A loss function that ignores the loop's batch and draws: the same batch, t and noise at every step."""
    return lambda _batch, _draws: fn(torch.Generator().manual_seed(seed))


def cond(faces: ShardSet, name: str, idx) -> torch.Tensor:
    """The encoder input of modality `name` for the samples `idx`."""
    return faces.inputs(faces.batch(idx))[name]


def assert_learns(losses: list[float], factor: float = 0.7) -> None:
    assert all(math.isfinite(v) for v in losses), losses
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < factor * first, (first, last, losses)


# ---------------------------------------------------------------------------------------------- data


def test_train_data_uses_the_inference_preprocessing(tmp_path):
    from cdx.models.modalities import kind_of
    from cdx.synth import generate_batch

    cfg = micro_config()

    def inference(name, value):  # what a request makes of a user's value (cdx.sampling.request)
        m = cfg.modality(name)
        return kind_of(m.kind).batch([value], m, name)

    data = prepared(tmp_path, n=5, seed=11)
    again = prepared(tmp_path, n=5, seed=11)  # read back from the prepared folder
    assert len(list(tmp_path.iterdir())) == 1 and again.folder == data.folder
    images, labels, captions, _, _ = generate_batch(11, 5, size=32)
    for i in (0, 4):
        item = data.inputs(data.batch([i]))
        assert item["image"].shape == (1, 3, 32, 32) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        assert np.array_equal(((item["image"][0].permute(1, 2, 0) + 1) * 127.5).round().numpy().astype(np.uint8),
                              images[i])
        assert torch.equal(item["text"], inference("text", captions[i]))
        png = tmp_path / f"m{i}.png"
        save_label_map(png, labels[i])
        assert item["mask"].shape == (1, 19, 1024) and item["mask"].dtype == torch.int64
        assert torch.equal(item["mask"], inference("mask", str(png)))


def test_train_data_is_the_same_from_several_processes(tmp_path, monkeypatch):
    from cdx.train import prepare as prep

    monkeypatch.setattr(prep, "SHARD", 250)  # 4 shards
    one = prepared(tmp_path / "one", n=1000, seed=5)
    two = prepared(tmp_path / "two", n=1000, seed=5, workers=2)
    assert len(one.manifest["shards"]) == 4 and len(one) == len(two) == 1000
    idx = [0, 249, 250, 501, 999]
    a, b = one.batch(idx), two.batch(idx)
    for key in ("image", "mask", "text", "index"):
        assert torch.equal(a[key], b[key]), key
    images = one.batch(range(0, 1000, 7))["image"].reshape(-1, 32 * 32 * 3)[:, ::97]
    assert len(np.unique(images.numpy(), axis=0)) > 130  # not one face repeated


def test_train_stored_one_hot_expands_to_the_inference_one_hot():
    from cdx.models.masks import one_hot
    from cdx.models.modalities import kind_of
    from cdx.train.data import compact, expand

    m = micro_config().modality("mask")
    ins = kind_of(m.kind).encoder_input(m)
    ids = np.random.default_rng(3).integers(0, 19, size=(4, 1024)).astype(np.uint8)
    stored = torch.from_numpy(np.stack([compact(one_hot(row)[0], ins) for row in ids]))
    assert stored.dtype == torch.uint8 and stored.shape == (4, 1024)
    got = expand(stored, ins)
    assert got.dtype == torch.int64 and got.shape == (4, 19, 1024)
    assert np.array_equal(got.numpy(), one_hot(ids))
    with pytest.raises(ValueError, match="not a one-hot"):
        compact(np.zeros((19, 1024), np.int64), ins)


# ---------------------------------------------------------------------------------------------- stages learn


def test_train_vae_loss_falls_on_a_fixed_batch(faces):
    cfg = micro_config()
    torch.manual_seed(0)
    vae = Autoencoder(cfg.autoencoder)
    x = cond(faces, "image", range(4))

    def loss(g):
        return vae_loss(vae, x, torch.randn((4, 3, 8, 8), generator=g), 1e-6, 0.5)[0]

    _, res = loop.train("vae", vae, fixed(loss), quick(steps=30, lr=2e-3), faces)
    assert_learns(res.losses)


@pytest.mark.parametrize("name", ["text", "mask"])
def test_train_collaborator_loss_falls_on_a_fixed_batch(faces, name):
    cfg = micro_config()
    m = cfg.modality(name)
    torch.manual_seed(0)
    net = nn.ModuleDict({"unet": zero_init(UNet(m.unet)), "encoder": encoder_for(m)})
    acp = schedule(cfg)
    idx = torch.arange(4)
    z0 = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(1))
    c = cond(faces, name, idx)

    def loss(g):
        t = torch.randint(1000, (4,), generator=g)
        return eps_loss(net["unet"], net["encoder"], z0, c, t, torch.randn(z0.shape, generator=g), acp)

    _, res = loop.train(name, net, fixed(loss), quick(steps=25, lr=2e-3), faces)
    assert abs(res.losses[0] - 1.0) < 0.3  # zero-initialised output: the loss starts at E[eps^2]
    assert_learns(res.losses, 0.8)


def test_train_snr_weighting_is_off_by_default_and_weights_only_low_snr():
    cfg = micro_config()
    acp = schedule(cfg)
    g = torch.Generator().manual_seed(3)
    z0, noise = torch.randn((4, 3, 8, 8), generator=g), torch.randn((4, 3, 8, 8), generator=g)
    t = torch.tensor([0, 100, 600, 999])
    unet = lambda x, t, c: 0.9 * x  # noqa: E731  (a fixed "model": the weighting alone is under test)
    plain = eps_loss(unet, nn.Identity(), z0, None, t, noise, acp)
    assert plain == eps_loss(unet, nn.Identity(), z0, None, t, noise, acp, 0.0)
    per_item = (0.9 * (acp[t].sqrt().view(-1, 1, 1, 1) * z0 + (1 - acp[t]).sqrt().view(-1, 1, 1, 1) * noise)
                - noise).pow(2).mean(dim=(1, 2, 3))
    w = ((1 - acp[t]) / acp[t]).clamp(min=1.0)  # 1 where SNR >= 1, 1/SNR beyond
    assert w[0] == 1 and w[1] == 1 and w[3] > 1000
    torch.testing.assert_close(eps_loss(unet, nn.Identity(), z0, None, t, noise, acp, 1.0), (w * per_item).mean())


def test_train_diffusers_loss_falls_and_collaborators_stay_frozen(faces):
    cfg = micro_config()
    collabs = []
    for i, m in enumerate(cfg.modalities):
        net = randomize(nn.ModuleDict({"unet": UNet(m.unet), "encoder": encoder_for(m)}), seed=i).eval()
        collabs.append(net.requires_grad_(False))
    before = [{k: v.clone() for k, v in c.state_dict().items()} for c in collabs]
    diffs = nn.ModuleDict({m.name: zero_init(UNet(m.diffuser)) for m in cfg.modalities})
    acp = schedule(cfg)
    idx = torch.arange(4)
    conds = [cond(faces, m.name, idx) for m in cfg.modalities]
    z0 = torch.randn((4, 3, 8, 8), generator=torch.Generator().manual_seed(2))

    # zero-initialised diffusers: equal weights, eps_hat is the mean of the collaborators' predictions
    t = torch.full((4,), 500)
    eps_hat, w = collaborative_eps(collabs, list(diffs.values()), z0, t, conds)
    assert w.shape == (2, 4, 1, 8, 8) and torch.allclose(w, torch.full_like(w, 0.5))
    with torch.no_grad():
        eps = [c["unet"](z0, t, c["encoder"](x)) for c, x in zip(collabs, conds)]
    torch.testing.assert_close(eps_hat, (eps[0] + eps[1]) / 2)

    def loss(g):
        t = torch.randint(1000, (4,), generator=g)
        return diffusers_loss(collabs, list(diffs.values()), z0, conds, t, torch.randn(z0.shape, generator=g), acp)

    _, res = loop.train("diffusers", diffs, fixed(loss), quick(steps=30, lr=3e-3), faces)
    assert all(math.isfinite(v) for v in res.losses)
    assert min(res.losses[-5:]) < res.losses[0]  # bounded below by the best per-pixel choice of collaborator
    for c, b in zip(collabs, before):
        assert all(p.grad is None for p in c.parameters())
        assert all(torch.equal(v, b[k]) for k, v in c.state_dict().items())


def test_train_diffusers_snr_weighting_weights_the_mixed_error_per_item(faces):
    """--snr-weight-power on the diffusers: each item's error of the mixed eps times max(1, 1/SNR)^p."""
    cfg = micro_config()
    collabs = [randomize(nn.ModuleDict({"unet": UNet(m.unet), "encoder": encoder_for(m)}), seed=i).eval()
               for i, m in enumerate(cfg.modalities)]
    diffs = [randomize(UNet(m.diffuser), seed=5 + i) for i, m in enumerate(cfg.modalities)]
    acp = schedule(cfg)
    idx = torch.arange(4)
    conds = [cond(faces, m.name, idx) for m in cfg.modalities]
    g = torch.Generator().manual_seed(4)
    z0, noise = torch.randn((4, 3, 8, 8), generator=g), torch.randn((4, 3, 8, 8), generator=g)
    t = torch.tensor([3, 250, 700, 990])
    with torch.no_grad():
        a = acp[t].view(-1, 1, 1, 1)
        eps_hat, _ = collaborative_eps(collabs, diffs, a.sqrt() * z0 + (1 - a).sqrt() * noise, t, conds)
        per_item = (eps_hat - noise).pow(2).mean(dim=(1, 2, 3))
        plain = diffusers_loss(collabs, diffs, z0, conds, t, noise, acp)
        weighted = diffusers_loss(collabs, diffs, z0, conds, t, noise, acp, 0.5)
    torch.testing.assert_close(plain, per_item.mean())
    w = ((1 - acp[t]) / acp[t]).clamp(min=1.0) ** 0.5
    assert w[0] == 1 and w[3] > 30
    torch.testing.assert_close(weighted, (w * per_item).mean())


def test_train_diffusers_cli_refuses_a_negative_snr_weight_power(tmp_path):
    r = CliRunner().invoke(main, ["train", "diffusers", "--work", str(tmp_path), "--snr-weight-power", "-1"])
    assert r.exit_code == 2 and "--snr-weight-power must be >= 0" in r.output


def test_assemble_dropout_record_is_inherited_by_zero_steps_only():
    from cdx.train.assemble import _trained_with_dropout

    dropped = {"steps": 900, "collab": {"cond_drop": 0.1}}
    assert _trained_with_dropout(dropped) and not _trained_with_dropout({"steps": 9, "collab": {"cond_drop": 0}})
    assert _trained_with_dropout({"steps": 0, "collab": {"cond_drop": 0}, "init_stage": dropped})
    assert not _trained_with_dropout({"steps": 5, "collab": {"cond_drop": 0}, "init_stage": dropped})  # trained on
    assert not _trained_with_dropout({"steps": 0, "init_stage": {"steps": 3}}) and not _trained_with_dropout(None)


def test_train_noise_schedule_is_the_samplers():
    """Training noises with the abar_t the DDIM table uses: sqrt(abar_t) is the table's B column."""
    from cdx.models.schedule import ddim_table

    cfg = micro_config()
    acp = schedule(cfg)
    assert acp.dtype == torch.float32 and acp.shape == (cfg.timesteps,)
    table = ddim_table(np.asarray(cfg.alphas_cumprod()), 50)
    np.testing.assert_array_equal(np.sqrt(acp.numpy()[table.timesteps]), table.coeffs[:, 1])


# ---------------------------------------------------------------------------------------------- the loop


def _mask_collaborator_run(faces, tc: TrainConfig, ckpt, resume=False, meta=None, resume_same=None,
                           checkpointed=False):
    from cdx.train.collaborator import checkpoint_blocks

    cfg = micro_config()
    m = cfg.modality("mask")
    loop.seed_everything(tc.seed)
    net = nn.ModuleDict({"unet": UNet(m.unet), "encoder": encoder_for(m)})
    if checkpointed:
        checkpoint_blocks(net["unet"])
    acp = schedule(cfg)
    z_all = torch.randn((len(faces), 3, 8, 8), generator=torch.Generator().manual_seed(5))

    def loss(batch, draws):
        t = draws.randint(1000)
        return eps_loss(net["unet"], net["encoder"], z_all[batch["index"]], faces.inputs(batch)["mask"], t,
                        draws.randn(3, 8, 8), acp)

    ema, res = loop.train("resume-test", net, loss, tc, faces, ckpt, resume, meta or {"stage": "test"},
                          resume_same=resume_same)
    return net, ema, res


def _state(path):
    tensors, doc = checkpoint.read_checkpoint(path)
    return tensors, doc


def test_train_checkpoint_resume_continues_with_identical_state(faces, tmp_path):
    straight, split = tmp_path / "straight.safetensors", tmp_path / "split.safetensors"
    net_a, ema_a, res_a = _mask_collaborator_run(faces, quick(steps=6, batch=3), straight)
    _, _, res_b1 = _mask_collaborator_run(faces, quick(steps=3, batch=3), split)
    assert res_b1.step == 3 and checkpoint.read_checkpoint(split)[1]["step"] == 3
    net_b, ema_b, res_b = _mask_collaborator_run(faces, quick(steps=6, batch=3), split, resume=True)
    assert res_b.start_step == 3 and res_b.step == 6
    assert res_a.losses[3:] == res_b.losses  # the same batches, timesteps and noise after the resume
    for a, b in ((net_a, net_b), (ema_a, ema_b)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ta, da = _state(straight)
    tb, db = _state(split)
    assert da["step"] == db["step"] == 6 and set(ta) == set(tb)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)  # model, EMA, AdamW moments
    # the EMA (what a stage saves) is not the raw weights
    assert any(not torch.equal(v, ema_a.state_dict()[k]) for k, v in net_a.state_dict().items())


def test_train_accumulation_and_checkpointing_give_the_same_steps(faces, tmp_path):
    """A global batch of 4 as one micro-batch or as 2 x 2 accumulated: the same samples and noise, gradients
    summed in another order, so the same losses within float rounding; with the UNet's activations recomputed
    (gradient checkpointing), the same arithmetic: identical weights."""
    base = quick(steps=4, batch=4, grad_clip=0.0)
    net_a, _, res_a = _mask_collaborator_run(faces, base, None)
    _, _, res_b = _mask_collaborator_run(faces, dataclasses.replace(base, accum=2), None)
    net_c, _, res_c = _mask_collaborator_run(faces, base, None, checkpointed=True)
    assert len(res_a.losses) == 4 and len(set(res_a.losses)) == 4
    np.testing.assert_allclose(res_b.losses, res_a.losses, rtol=1e-5)
    assert res_c.losses == res_a.losses
    assert all(torch.equal(net_c.state_dict()[k], v) for k, v in net_a.state_dict().items())
    with pytest.raises(InputError, match="must be a multiple of processes x --accum"):
        _mask_collaborator_run(faces, dataclasses.replace(base, accum=3), None)
    with pytest.raises(InputError, match="larger than the data set"):
        _mask_collaborator_run(faces, dataclasses.replace(base, batch=16), None)


def test_train_checkpoint_of_another_stage_is_refused(faces, tmp_path):
    ckpt = tmp_path / "c.safetensors"
    _mask_collaborator_run(faces, quick(steps=2, batch=2), ckpt)
    with pytest.raises(StaleArtifactError, match="different stage"):
        _mask_collaborator_run(faces, quick(steps=4, batch=2), ckpt, resume=True, meta={"stage": "other"})
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(StaleArtifactError, match="unreadable checkpoint"):
        _mask_collaborator_run(faces, quick(steps=4, batch=2), ckpt, resume=True)


def test_train_resume_refuses_a_checkpoint_made_with_another_loss(faces, tmp_path):
    """A resumed run continues the same loss: e.g. the diffusers' --snr-weight-power (absent in older
    checkpoints: they were made with 0)."""
    same = {"snr_weight_power": 0.0}
    old, ckpt = tmp_path / "old.safetensors", tmp_path / "c.safetensors"
    _mask_collaborator_run(faces, quick(steps=2, batch=2), old)  # meta without the key
    _mask_collaborator_run(faces, quick(steps=2, batch=2), ckpt, meta={"stage": "test", "snr_weight_power": 1.0})
    with pytest.raises(StaleArtifactError, match=r"different snr_weight_power \(1\.0, now 0\.5\)"):
        _mask_collaborator_run(faces, quick(steps=4, batch=2), ckpt, resume=True,
                               meta={"stage": "test", "snr_weight_power": 0.5}, resume_same=same)
    with pytest.raises(StaleArtifactError, match=r"different snr_weight_power \(0\.0, now 1\.0\)"):
        _mask_collaborator_run(faces, quick(steps=4, batch=2), old, resume=True,
                               meta={"stage": "test", "snr_weight_power": 1.0}, resume_same=same)
    for path, p in ((ckpt, 1.0), (old, 0.0)):
        _, _, res = _mask_collaborator_run(faces, quick(steps=4, batch=2), path, resume=True,
                                           meta={"stage": "test", "snr_weight_power": p}, resume_same=same)
        assert res.start_step == 2 and res.step == 4


def test_train_time_budget_stops_the_loop(faces, tmp_path):
    _, _, res = _mask_collaborator_run(faces, quick(steps=1000, batch=2, max_minutes=1e-6), tmp_path / "c.st")
    assert res.stopped_by == "time" and res.step < 1000


@pytest.mark.parametrize("native", [True, False])
def test_train_bf16_on_a_cpu_without_native_bf16_warns(faces, tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    _, _, res = _mask_collaborator_run(faces, quick(steps=1, batch=2, amp="bf16"), tmp_path / "c.st")
    assert res.step == 1
    assert ("no native bf16" in capsys.readouterr().out) is (not native)


# ---------------------------------------------------------------------------------------------- end to end


def test_train_stages_assemble_and_run(faces, tmp_path):
    cfg, work = micro_config(), tmp_path / "work"
    tc = quick(steps=3, batch=4)
    vmeta = train_vae(cfg, faces, tc, VaeConfig(scale_images=8), work)
    assert vmeta["scale_factor"] > 0 and math.isfinite(vmeta["scale_factor"])
    folder, scale, _ = load_latents(cfg, faces, work)
    view = ShardSet(faces.folder, latents=folder, images=False)
    assert scale == vmeta["scale_factor"] and len(view) == 8 and view[7]["latent"].shape == (3, 8, 8)
    assert vmeta["data"]["count"] == 8 and len(vmeta["first_losses"]) == 3
    for name in ("mask", "text"):
        train_collaborator(cfg, name, faces, tc, CollabConfig(cond_drop=0.5), work)
    train_diffusers(cfg, faces, tc, work)
    bundle = tmp_path / "bundle"
    assemble(cfg, work, bundle)
    model = load_bundle(bundle, verify_hashes=True)
    assert model.cfg.scale_factor == pytest.approx(vmeta["scale_factor"]) and model.cfg.shaping is False
    extra = read_manifest(bundle)["extra"]
    assert set(extra["stages"]) == {"vae", "collaborator:mask", "collaborator:text", "diffusers"}
    # the text collaborator's vocabulary: exactly the words of the 8 training captions
    from cdx.models.tokenizer import Tokenizer
    from cdx.synth import caption_of

    words = {w for i in range(8) for w in Tokenizer().words(caption_of((3, i)))}
    assert model.cfg.modality("text").vocabulary == tuple(sorted(words))
    assert model.cfg.modality("mask").vocabulary is None
    assert all(v["dtype"] == "F16" for v in _dtypes(bundle / "text_unet.safetensors"))

    mask = tmp_path / "mask.png"
    label = np.zeros((64, 64), np.uint8)
    label[8:56, 12:52] = 1
    label[20:26, 18:26] = 4
    save_label_map(mask, label)
    out = tmp_path / "face.png"
    r = CliRunner().invoke(main, ["run", "--backend", "torch", "--checkpoint", str(bundle), "--text", CAPTION,
                                  "--mask", str(mask), "--steps", "2", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)

    # sampling defaults in the bundle: the official shaping on the mask, guidance of a cond-drop collaborator
    assemble(cfg, work, tmp_path / "guided", shaping=True, guidance={"text": 2.0})
    g = load_bundle(tmp_path / "guided").cfg
    assert g.shaping and (g.modality("mask").decay, g.modality("mask").influence_scale) == ("cosine", 2.0)
    assert g.modality("text").guidance == 2.0 and g.modality("text").decay == "none"
    assemble(cfg, work, tmp_path / "boosted", shaping=True, shaping_scale=8.0)
    assert load_bundle(tmp_path / "boosted").cfg.modality("mask").influence_scale == 8.0
    r = CliRunner().invoke(main, ["run", "--backend", "torch", "--checkpoint", str(tmp_path / "guided"), "--text",
                                  CAPTION, "--mask", str(mask), "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    # a collaborator trained without condition dropout has no unconditional prediction to guide with
    train_collaborator(cfg, "mask", faces, quick(steps=1), CollabConfig(), work)
    with pytest.raises(InputError, match="trained without condition dropout"):
        assemble(cfg, work, tmp_path / "bad", guidance={"mask": 2.0})
    assert not (tmp_path / "bad").exists()

    # new sampling defaults for a trained bundle, without its training folder: the same files, a new config
    again = tmp_path / "again"
    r = CliRunner().invoke(main, ["train", "assemble", "--from-bundle", str(tmp_path / "guided"), "--out", str(again),
                                  "--eta", "1", "--shaping", "--shaping-scale", "4", "--guidance", "mask=3"])
    assert r.exit_code == 0, r.output
    a, g = load_bundle(again, verify_hashes=True).cfg, read_manifest(tmp_path / "guided")
    assert (a.eta, a.modality("mask").influence_scale, a.modality("mask").guidance) == (1.0, 4.0, 3.0)
    assert a.modality("text").guidance == 1.0  # not given: set anew, not carried over
    got = read_manifest(again)
    assert {k: v["sha256"] for k, v in got["files"].items()} == {k: v["sha256"] for k, v in g["files"].items()}
    assert got["extra"]["stages"] == g["extra"]["stages"] and got["extra"]["sampling_from"] == bundle_hash(
        tmp_path / "guided")
    assert all(v["dtype"] == "F16" for v in _dtypes(again / "text_unet.safetensors"))
    # the mask's influence scaled at every step, without the cosine decay
    r = CliRunner().invoke(main, ["train", "assemble", "--from-bundle", str(again), "--out", str(again), "--shaping",
                                  "--shaping-scale", "0.5", "--shaping-decay", "none"])
    assert r.exit_code == 0, r.output
    b = load_bundle(again).cfg
    assert b.shaping and (b.modality("mask").decay, b.modality("mask").influence_scale) == ("none", 0.5)
    assert (b.modality("text").decay, b.modality("text").influence_scale, b.eta) == ("none", 1.0, 0.0)

    # a retrained autoencoder makes the collaborators stale: assembling refuses, naming the fix
    train_vae(cfg, faces, dataclasses.replace(tc, seed=1), VaeConfig(scale_images=8), work)
    with pytest.raises(StaleArtifactError, match="cdx train collaborator --modality mask"):
        assemble(cfg, work, tmp_path / "bundle2")


def test_training_vocabulary_joins_the_starting_bundles_unless_no_step_ran(faces, tmp_path):
    from cdx.train.collaborator import training_vocabulary

    cfg = micro_config()
    text = dataclasses.replace(cfg.modality("text"), vocabulary=("zebra",))
    src = tmp_path / "src"
    save_bundle(random_model(dataclasses.replace(cfg, modalities=(cfg.modality("mask"), text)), seed=0), src)
    view = ShardSet(faces.folder, [cfg.modality("text")], images=False)
    mine = training_vocabulary(cfg.modality("text"), view)
    assert "zebra" not in mine and {"this", "."} <= set(mine)
    assert training_vocabulary(cfg.modality("text"), view, src, steps=0) == ("zebra",)
    assert training_vocabulary(cfg.modality("text"), view, src, steps=5) == tuple(sorted({*mine, "zebra"}))
    assert training_vocabulary(cfg.modality("mask"), ShardSet(faces.folder, [cfg.modality("mask")]), src) is None


def test_train_init_from_a_bundle_starts_every_stage_from_its_weights(faces, tmp_path):
    from cdx.errors import InputError
    from cdx.models.bundle import bundle_hash

    cfg, tc = micro_config(), quick(steps=2, batch=4)
    work, src = tmp_path / "work", tmp_path / "src"
    train_vae(cfg, faces, tc, VaeConfig(scale_images=8), work)
    for name in ("mask", "text"):
        train_collaborator(cfg, name, faces, tc, CollabConfig(), work)
    train_diffusers(cfg, faces, tc, work)
    assemble(cfg, work, src, eta=1.0)
    assert load_bundle(src).cfg.eta == 1.0  # the bundle's default sampler noise travels in its config
    with pytest.raises(InputError, match="does not record condition dropout for its mask"):
        resample(src, tmp_path / "bad", guidance={"mask": 2.0})  # trained without --cond-drop
    assert not (tmp_path / "bad").exists()
    images = {}
    for eta in (None, "1", "0"):
        out = tmp_path / f"eta-{eta}.png"
        argv = ["run", "--backend", "torch", "--checkpoint", str(src), "--text", CAPTION, "--steps", "3",
                "--out", str(out)] + ([] if eta is None else ["--eta", eta])
        r = CliRunner().invoke(main, argv, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        images[eta] = np.asarray(Image.open(out))
    assert np.array_equal(images[None], images["1"]) and not np.array_equal(images["1"], images["0"])

    # zero steps from the bundle: every stage saves exactly the bundle's weights again
    work2, again = tmp_path / "work2", tmp_path / "again"
    tc0 = dataclasses.replace(tc, steps=0, init_from=str(src))
    train_vae(cfg, faces, tc0, VaeConfig(scale_images=4), work2)  # another measurement of the scale...
    measured = scale_factor_of(encode_means(load_bundle(src).vae, faces)[:4])
    assert measured != load_bundle(src).cfg.scale_factor
    for name in ("mask", "text"):
        train_collaborator(cfg, name, faces, tc0, CollabConfig(), work2)
    train_diffusers(cfg, faces, tc0, work2)
    assemble(cfg, work2, again)
    a, b = load_bundle(src).networks(), load_bundle(again).networks()
    assert set(a) == set(b)
    for key in a:
        sa, sb = a[key].state_dict(), b[key].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), key
    assert load_bundle(again).cfg.scale_factor == load_bundle(src).cfg.scale_factor  # ...which is not used
    stages = read_manifest(again)["extra"]["stages"]
    assert {v.get("init_from") for v in stages.values()} == {bundle_hash(src)}
    assert load_bundle(again).cfg.modality("text").vocabulary == load_bundle(src).cfg.modality("text").vocabulary
    src_stages = read_manifest(src)["extra"]["stages"]  # each leg keeps the record of the one it started from
    assert set(stages) == set(src_stages) and all(stages[k]["init_stage"] == src_stages[k] for k in stages)
    assert stages["vae"]["scale_factor_from"] == "init_from" and "scale_factor_from" not in src_stages["vae"]
    assert {v["loss"] for v in stages.values()} == {None}  # no step ran: null, not NaN
    json.loads((again / "bundle.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in bundle.json"))

    # Algorithm 1 over a bundle's collaborators: an empty work folder gets the bundle's autoencoder and
    # collaborators (frozen, zero steps) and new diffusers; the assembled bundle has the bundle's collaborators
    work3, over = tmp_path / "work3", tmp_path / "over"
    train_diffusers(cfg, faces, dataclasses.replace(tc, init_from=str(src)), work3, init_diffusers=False)
    assert sorted(p.name for p in work3.glob("*.safetensors") if "ckpt" not in p.name) == [
        "collab_mask.safetensors", "collab_text.safetensors", "diffusers.safetensors", "vae.safetensors"]
    dmeta = json.loads(_stage_doc(work3 / "diffusers.safetensors"))
    assert dmeta["steps"] == 2 and "init_from" not in dmeta  # new diffusers, not the bundle's
    assemble(cfg, work3, over)
    a, b = load_bundle(src).networks(), load_bundle(over).networks()
    for key in a:
        same = all(torch.equal(a[key].state_dict()[k], v) for k, v in b[key].state_dict().items())
        assert same == ("diffuser" not in key), key
    assert load_bundle(over).cfg.scale_factor == load_bundle(src).cfg.scale_factor

    # a few steps from the bundle move the weights, starting from them
    tc2 = dataclasses.replace(tc, steps=2, init_from=str(src))
    train_collaborator(cfg, "text", faces, tc2, CollabConfig(), work2)

    # a bundle of another architecture is refused in one line
    other = dataclasses.replace(cfg, modalities=tuple(
        dataclasses.replace(m, unet=dataclasses.replace(m.unet, model_channels=64)) for m in cfg.modalities))
    with pytest.raises(InputError, match="does not match this preset"):
        train_collaborator(other, "mask", faces, tc0, CollabConfig(), work2)


def _stage_doc(path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()["cdx_stage"]


def _dtypes(path):
    import json
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    return [v for k, v in header.items() if k != "__metadata__"]


def test_train_cli_all_then_run(tmp_path):
    work, bundle = tmp_path / "work", tmp_path / "bundle"
    args = ["--work", work, "--preset", "tiny", "--steps", "2", "--batch", "2", "--data-size", "4", "--threads", "1"]
    r = CliRunner().invoke(main, ["train", "all", "--out", bundle, *map(str, args)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert f"wrote {bundle}" in r.output and (work / "data").is_dir()
    # a single stage resumes from its checkpoint (here: already at --steps, so nothing more to do)
    r = CliRunner().invoke(main, ["train", "diffusers", "--resume", *map(str, args)], catch_exceptions=False)
    assert r.exit_code == 0 and "resumed from" in r.output, r.output
    mask = tmp_path / "mask.png"
    save_label_map(mask, np.full((32, 32), 1, np.uint8))
    out = tmp_path / "x.png"
    r = CliRunner().invoke(main, ["run", "--backend", "torch", "--checkpoint", str(bundle), "--text", CAPTION,
                                  "--mask", str(mask), "--steps", "2", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert np.asarray(Image.open(out)).shape == (64, 64, 3)


@pytest.mark.parametrize("argv, message", [
    (["train", "collaborator", "--modality", "sketch", "--data-size", "2"], "--modality 'sketch'"),
    (["train", "diffusers", "--data-size", "2"], "missing; run `cdx train vae` first"),
    (["train", "vae", "--preset", "huge"], "unknown preset"),
    (["train", "vae", "--steps", "0"], "--steps must be >= 1"),
    (["train", "collaborator", "--modality", "text", "--cond-drop", "1.5"], "--cond-drop must be in [0, 1)"),
    (["train", "assemble", "--out", "b", "--shaping-scale", "4"], "--shaping-scale needs --shaping"),
    (["train", "assemble", "--out", "b", "--shaping", "--shaping-decay", "none"], "--shaping-decay none needs"),
    (["train", "assemble", "--out", "b", "--from-bundle", "nowhere"], "not a cdx bundle"),
    (["train", "assemble", "--out", "b", "--guidance", "text"], "expected MODALITY=SCALE"),
])
def test_train_cli_errors_are_one_line(tmp_path, argv, message):
    r = CliRunner().invoke(main, [*argv, "--work", str(tmp_path / "w")])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.startswith("error:")]) == 1


def test_train_collaborator_manifest_ignores_sampling_settings(faces, tmp_path):
    """Shaping and guidance are how a model is sampled: changing them (or reading a manifest written before
    `guidance` existed) must not make a trained collaborator stale; its architecture still must match."""
    from cdx.train.collaborator import load_collaborator
    from cdx.train.checkpoint import load_stage, save_stage

    cfg, work = micro_config(), tmp_path / "work"
    tc = quick(steps=1)
    train_vae(cfg, faces, tc, VaeConfig(scale_images=8), work)
    train_collaborator(cfg, "text", faces, tc, CollabConfig(cond_drop=0.5), work)
    path = work / "collab_text.safetensors"
    state, meta = load_stage(path, "collaborator", "x")
    assert not {"decay", "influence_scale", "guidance"} & set(meta["modality"])
    older = {**meta, "modality": {**meta["modality"], "decay": "none", "influence_scale": 1.0}}
    save_stage(path, state, older)
    sampled = cfg.with_guidance({"text": 3.0})
    net, _ = load_collaborator(sampled, "text", work)
    assert torch.equal(net["unet"].out[-1].weight, state["unet.out.2.weight"])
    wider = dataclasses.replace(cfg, modalities=(cfg.modalities[0], dataclasses.replace(
        cfg.modalities[1], context_dim=48)))
    with pytest.raises(StaleArtifactError, match="different modality config"):
        load_collaborator(wider, "text", work)


def test_train_cli_refuses_hostile_options_before_any_work(tmp_path):
    """A budget that would write an untrained network, unbounded or non-finite rates, a --work that is
    a file or somebody else's folder: one line, exit 2, nothing written and nothing the user had changed."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "photo.png").write_bytes(b"not ours")
    work = tmp_path / "w"
    base = ["train", "vae", "--preset", "tiny", "--data-size", "2", "--batch", "2"]
    for extra, message in [
        (["--max-minutes", "-1"], "--max-minutes must be > 0"),
        (["--max-minutes", "nan"], "--max-minutes must be > 0"),
        (["--lr", "nan"], "--lr must be in (0, 1]"),
        (["--lr", "5"], "--lr must be in (0, 1]"),
        (["--lr", "-1e-4"], "--lr must be in (0, 1]"),
        (["--ema-decay", "inf"], "--ema-decay must be in [0, 1)"),
        (["--seed", "-1"], "--seed must be in [0, 2**63)"),
        (["--kl-weight", "nan"], "--kl-weight must be in [0, 1]"),
        (["--accum", "0"], "--accum must be >= 1"),
    ]:
        r = CliRunner().invoke(main, [*base, "--work", str(work), *extra])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, (extra, r.output)
        assert not work.exists(), extra
    for target, message in ((afile, "exists and is not a folder"), (theirs, "is not a cdx training work folder")):
        r = CliRunner().invoke(main, [*base, "--work", str(target)])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert afile.read_text() == "mine" and sorted(p.name for p in theirs.iterdir()) == ["photo.png"]
    r = CliRunner().invoke(main, ["train", "collaborator", "--modality", "text", "--work", str(work),
                                  "--snr-weight-power", "inf"])
    assert r.exit_code == 2 and "--snr-weight-power must be >= 0 and <= 4" in r.output


def test_train_prepared_folders_made_twice_at_once_keep_one_copy(faces, tmp_path):
    """Two runs preparing the same data side by side (two collaborators at once) write into temporary folders of
    their own; the second to finish keeps the first's folder; a killed run's leftover is removed by the next."""
    from cdx.io import _claim
    from cdx.train import prepare as prep

    target = tmp_path / "set"
    with _claim(tmp_path, target.name) as a, _claim(tmp_path, target.name) as b:
        assert a != b and a.parent == b.parent == tmp_path
        for tmp in (a, b):
            (tmp / "manifest.json").write_text((faces.folder / "manifest.json").read_text())
        prep._install(a, target, "cdx-train-data")
        prep._install(b, target, "cdx-train-data")  # already there: kept
        assert (target / "manifest.json").is_file() and not a.exists() and b.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # nothing left behind
    prepared(tmp_path / "cache")
    leftover = tmp_path / "cache" / f".x{prep.TMP_TAG}0123456789ab"  # a killed run's, no lock held
    leftover.mkdir()
    prepared(tmp_path / "cache", seed=4)
    assert not leftover.exists()
