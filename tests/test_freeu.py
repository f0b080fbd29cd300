"""FreeU: the DFT-matrix filter against torch.fft, the hooks against a hand-written official decoder loop,
and ONNX Runtime against torch on a tiny random UNet and on a whole tiny model's image."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cdx.errors import InputError
from cdx.models.freeu import (FreeU, apply_freeu, fourier_filter, fourier_filter_fft, freeu_stages, parse_freeu,
                              remove_freeu)
from cdx.models.random_init import randomize
from cdx.models.unet import UNet, UNetConfig

SHAPES = [(2, 3, 16, 16), (1, 5, 7, 9), (3, 2, 1, 6), (1, 1, 2, 3), (2, 4, 33, 17)]


def psnr(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR over the reference's value range."""
    ours, ref = ours.double(), ref.double()
    mse = float(((ours - ref) ** 2).mean())
    span = float(ref.max() - ref.min())
    return math.inf if mse == 0 else 10 * math.log10(span ** 2 / mse)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_freeu_filter_matches_torch_fft(shape, threshold):
    g = torch.Generator().manual_seed(hash((shape, threshold)) % 2**31)
    x = torch.randn(shape, generator=g) * 3 + 0.5
    for scale in (0.0, 0.2, 0.9, 1.7):
        ref = fourier_filter_fft(x, threshold, scale)
        got = fourier_filter(x, threshold, scale)
        tol = 1e-5 * float(x.abs().max())  # fp32 matrix products against an fp64 FFT
        assert got.dtype == x.dtype and got.shape == x.shape
        assert float((got - ref).abs().max()) <= tol, (shape, threshold, scale)
    # the filter does something: the scaled low frequencies differ from the input
    assert float((fourier_filter(x, threshold, 0.2) - x).abs().max()) > 1e-3


def _tiny_unet(seed: int = 0, mult=(1, 2, 3), res_blocks: int = 2) -> UNet:
    cfg = UNetConfig(in_channels=3, out_channels=3, model_channels=32, channel_mult=mult,
                     num_res_blocks=res_blocks, attention_resolutions=(2,), num_heads=4, context_dim=16)
    return randomize(UNet(cfg), seed).eval()


def _official_decoder(unet: UNet, x, t, context, f: FreeU) -> torch.Tensor:
    """The official FreeU forward written out (channel-count tests on h, half of h scaled, torch.fft filter)."""
    from cdx.models.unet import timestep_embedding

    mc, mult = unet.cfg.model_channels, unet.cfg.channel_mult
    c1, c2 = mc * mult[-2], mc * mult[-3]
    emb = unet.time_embed(timestep_embedding(t, mc).to(x.dtype))
    hs, h = [], x
    for block in unet.input_blocks:
        h = block(h, emb, context)
        hs.append(h)
    h = unet.middle_block(h, emb, context)
    for block in unet.output_blocks:
        skip = hs.pop()
        if h.shape[1] == c1:
            h = torch.cat([h[:, : c1 // 2] * f.b1, h[:, c1 // 2:]], dim=1)
            skip = fourier_filter_fft(skip, f.threshold, f.s1)
        elif h.shape[1] == c2:
            h = torch.cat([h[:, : c2 // 2] * f.b2, h[:, c2 // 2:]], dim=1)
            skip = fourier_filter_fft(skip, f.threshold, f.s2)
        h = block(torch.cat([h, skip], dim=1), emb, context)
    return unet.out(h)


def _inputs(seed: int, batch: int = 2, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, size, size, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, 5, 16, generator=g))


@pytest.mark.parametrize("mult,res_blocks", [((1, 2, 3), 2), ((1, 2, 2, 3), 1)])
def test_freeu_hooks_match_the_official_decoder_loop(mult, res_blocks):
    unet = _tiny_unet(1, mult, res_blocks)
    x, t, ctx = _inputs(2)
    f = FreeU(1.3, 1.4, 0.6, 0.3)
    with torch.no_grad():
        plain = unet(x, t, ctx)
        apply_freeu(unet, f.b1, f.b2, f.s1, f.s2)
        on = unet(x, t, ctx)
        remove_freeu(unet)
        off = unet(x, t, ctx)
        ref = _official_decoder(unet, x, t, ctx, f)  # on the unhooked UNet
    assert float((on - ref).abs().max()) <= 1e-4 * float(ref.abs().max())
    assert psnr(on, plain) < 40  # FreeU changes the output
    assert torch.equal(off, plain)  # and comes off again completely


def test_freeu_stages_follow_the_official_channel_counts():
    with torch.device("meta"):  # the structure only: no weights allocated
        official = UNet(UNetConfig(model_channels=192, channel_mult=(1, 2, 3, 5), num_res_blocks=2, num_heads=8))
    assert freeu_stages(official) == {576: ("b1", "s1"), 384: ("b2", "s2")}
    apply_freeu(official, 1.1, 1.2, 0.9, 0.8)
    hooked = [i for i, b in enumerate(official.output_blocks) if b._forward_pre_hooks]
    remove_freeu(official)
    assert hooked == [4, 5, 6, 7, 8, 9]  # h has 576 channels at blocks 4-6 and 384 at 7-9
    assert not any(b._forward_pre_hooks for b in official.output_blocks)


def test_freeu_reapply_replaces_and_factors_of_one_add_nothing():
    unet = _tiny_unet(3)
    apply_freeu(unet, 1.2, 1.3, 0.5, 0.5)
    apply_freeu(unet, 1.2, 1.3, 0.5, 0.5)
    hooks = [len(b._forward_pre_hooks) for b in unet.output_blocks]
    assert hooks == [0, 0, 0, 0, 1, 1, 1, 1, 1]  # h of 64 channels at blocks 4-6, 32 at 7-8; once each
    apply_freeu(unet, 1.0, 1.0, 1.0, 1.0)
    assert not any(b._forward_pre_hooks for b in unet.output_blocks)


def test_freeu_on_a_collaborative_model_hooks_the_collaborators_only():
    from cdx.models.config import preset
    from cdx.models.random_init import random_model

    model = random_model(preset("tiny"), seed=4)
    apply_freeu(model, 1.2, 1.3, 0.8, 0.7)
    try:
        assert all(any(b._forward_pre_hooks for b in u.output_blocks) for u in model.unets.values())
        assert not any(b._forward_pre_hooks for d in model.diffusers.values() for b in d.output_blocks)
    finally:
        remove_freeu(model)


@pytest.mark.parametrize("text", ["1.1,1.2,1", "a,b,c,d", "1.1,1.2,1,-1", "1,1,nan,1", ""])
def test_freeu_bad_settings_are_one_line_input_errors(text):
    with pytest.raises(InputError) as e:
        parse_freeu(text)
    assert "\n" not in str(e.value)


def test_freeu_parse():
    assert parse_freeu("1.1, 1.2, 1, 0.9") == FreeU(1.1, 1.2, 1.0, 0.9)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the DFT matrices become constants, as meant
def test_freeu_onnx_runtime_matches_torch_on_a_tiny_unet(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    unet = _tiny_unet(5)
    apply_freeu(unet, 1.3, 1.4, 0.6, 0.3)
    x, t, ctx = _inputs(6, batch=2, size=12)
    path = tmp_path / "unet.onnx"
    with torch.no_grad():
        torch.onnx.export(unet, (x, t, ctx), str(path), input_names=["x", "t", "context"], output_names=["eps"],
                          dynamic_axes={"x": {0: "b"}, "t": {0: "b"}, "context": {0: "b"}, "eps": {0: "b"}},
                          opset_version=17, dynamo=False)
        x3, t3, ctx3 = _inputs(7, batch=3, size=12)  # fresh inputs, another batch size
        ref = unet(x3, t3, ctx3)
        plain = (remove_freeu(unet), unet(x3, t3, ctx3))[1]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"x": x3.numpy(), "t": t3.numpy(), "context": ctx3.numpy()})[0])
    assert psnr(got, ref) >= 40
    assert psnr(plain, ref) < 40  # the export holds FreeU: it is not the plain UNet


def test_freeu_image_through_onnx_runtime_matches_torch(tiny_bundle, tmp_path):
    """The whole tiny model with FreeU on its collaborators: export, sample through ONNX Runtime and torch."""
    from cdx.backends.ort import OrtRunner
    from cdx.backends.pytorch.eager import TorchRunner
    from cdx.sampling.loop import draw_noise, make_shaping, sample
    from cdx.models.schedule import alphas_cumprod, ddim_table, linear_betas
    from cdx.export.onnx_export import export_bundle, random_inputs
    from cdx.export.spec import network_specs
    from cdx.models.bundle import load_bundle

    model = load_bundle(tiny_bundle)
    cfg = model.cfg
    table = ddim_table(alphas_cumprod(linear_betas(cfg.timesteps, cfg.linear_start, cfg.linear_end)), 4, 1.0)
    g = torch.Generator().manual_seed(8)
    names = [m.name for m in cfg.modalities]
    specs = network_specs(cfg)
    with torch.no_grad():
        ctx = [TorchRunner(model).run(f"{n}_encoder", random_inputs(specs[f"{n}_encoder"], 2, g))["context"]
               for n in names]
    x_T, noise = draw_noise(9, 2, (cfg.latent_channels, *cfg.latent_size), table.num_steps)
    shaping = make_shaping(cfg, names, table)

    def image(runner):
        with torch.no_grad():
            z = sample(runner, names, ctx, x_T, noise, table, shaping).z0
            return runner.run("vae_decoder", {"latent": z})["image"]

    plain = image(TorchRunner(model))
    apply_freeu(model, 1.3, 1.4, 0.6, 0.3)
    try:
        ref = image(TorchRunner(model))
        export_bundle(tiny_bundle, tmp_path / "onnx", model=model)
    finally:
        remove_freeu(model)
    got = image(OrtRunner(tmp_path / "onnx"))
    to01 = lambda im: ((im.clamp(-1, 1) + 1) / 2).double()  # noqa: E731
    mse = float(((to01(got) - to01(ref)) ** 2).mean())
    assert mse == 0 or 10 * np.log10(1 / mse) >= 40
    assert float((to01(plain) - to01(ref)).abs().max()) > 1 / 255  # FreeU changes the image

