"""The CUDA-graph loop (cdx/sampling/graph/capture.py) and the fast torch CUDA path (cdx/backends/pytorch/cuda.py).

On CPU the graph body (`GraphedLoop.step`: gathers by the device step index, the fused op, the step
increment) runs eagerly, the same code a capture records, and is compared with `sampler.sample`.
A toy runner (a few elementwise ops behind `run` and `enqueue`) keeps most tests fast; a micro model
of the real family checks the real networks. GPU tests skip with "no CUDA device" where there is none.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cdx.sampling.graph import capture as CG
from cdx.sampling.graph import plan as GP
from cdx.backends.pytorch.eager import TorchRunner
from cdx.sampling.loop import Shaping, draw_noise, make_shaping, sample
from cdx.models.schedule import alphas_cumprod, linear_betas, make_table
from cdx.backends.pytorch.cuda import (CudaTorchRunner, SdpaAttnBlock, SdpaCrossAttention, cuda_runner,
                                       keep_norms_fp32, use_sdpa)
from cdx.export.head_pad import padded_dim
from cdx.models.autoencoder import AttnBlock
from cdx.models.config import preset
from cdx.models.random_init import random_model
from cdx.models.unet import CrossAttention, GroupNorm32

REPO = Path(__file__).resolve().parents[1]
from conftest import HAS_CUDA  # noqa: E402
needs_cuda = pytest.mark.gpu
ACP = alphas_cumprod(linear_betas())


@pytest.fixture(autouse=True)
def _no_forced_kernel(monkeypatch):
    monkeypatch.delenv("CDX_KERNEL", raising=False)


# ----------------------------------------------------------------------------- helpers

class ToyRunner:
    """Networks as a few elementwise ops, behind `run` (fp32 copies) and `enqueue` (no copies)."""

    backend = "toy"

    def __init__(self, names, device="cpu", dtype=torch.float32, sync_inside=False, seen=None):
        self.names, self.device, self.dtype = list(names), torch.device(device), dtype
        self.sync_inside, self.seen = sync_inside, seen

    def net_dtype(self, network):
        return self.dtype

    def enqueue(self, network, inputs):
        x, t, c = inputs["x"], inputs["t"], inputs["context"]
        mod, _, part = network.rpartition("_")
        k = 1.0 + self.names.index(mod)
        if self.seen is not None:
            self.seen.append((network, t.tolist()))
        h = torch.tanh(0.3 * k * x + t.float().view(-1, 1, 1, 1) / 700 + c.float().mean(dim=(1, 2)).view(-1, 1, 1, 1))
        if self.sync_inside:
            float(h.sum())  # a host read: not allowed inside a CUDA graph capture
        out = h if part == "unet" else k * h.mean(dim=1, keepdim=True)
        return {"eps" if part == "unet" else "logits": out.to(self.dtype)}

    def run(self, network, inputs):
        out = self.enqueue(network, {k: v.to(self.device) for k, v in inputs.items()})
        return {k: v.float().clone() for k, v in out.items()}


class RunOnlyRunner(ToyRunner):
    """A runner that can only `run` (host copies), like ONNX Runtime."""

    enqueue = None

    def run(self, network, inputs):
        return {k: v.float().clone() for k, v in ToyRunner.enqueue(self, network, inputs).items()}


@dataclasses.dataclass
class Req:
    names: list
    contexts: list
    x_T: torch.Tensor
    noise: torch.Tensor
    table: object
    shaping: object

    def args(self):
        return self.names, self.contexts, self.x_T, self.noise, self.table, self.shaping

    def load_args(self):
        return self.x_T, self.noise, self.contexts, self.table, self.shaping


def toy_request(m=2, batch=2, steps=5, shaped=True, sampler="ddim", eta=0.0, seed=0, latent=(3, 6, 5),
                device="cpu") -> Req:
    names = ["mask", "text", "sketch"][:m]
    table = make_table(ACP, steps, sampler, eta)
    g = torch.Generator().manual_seed(seed + 100)
    shaping = None
    if shaped and m > 1:
        decay = (0.2 + 0.8 * torch.rand(table.num_steps, m, generator=g)).numpy()
        shaping = Shaping(decay=decay, scale=(0.5 + torch.rand(m, generator=g)).numpy(), receiver=m - 1)
    x_T, noise = draw_noise(seed, batch, latent, table.num_steps)
    contexts = [torch.randn(batch, 7 + j, 4, generator=g).to(device) for j in range(m)]
    return Req(names, contexts, x_T, noise, table, shaping)


def assert_same_result(got, ref, exact=True, tol=1e-6):
    check = (lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=0)) if exact else \
        (lambda a, b: torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol))
    check(got.z0, ref.z0)
    if ref.influence is not None:
        check(got.influence, ref.influence)
    if ref.trace is not None:
        check(got.trace["x"], ref.trace["x"])
        check(got.trace["eps"].float(), ref.trace["eps"].float())


def micro_config(shaping=True):
    """The tiny preset shrunk further (latent 3x8x8, one text layer), with the official shaping."""
    base = preset("tiny")
    mask, text = base.modalities
    unet = dataclasses.replace(mask.unet, model_channels=32, channel_mult=(1, 2), attention_resolutions=(2,))
    diffuser = dataclasses.replace(mask.diffuser, model_channels=32, channel_mult=(1,), attention_resolutions=(1,))
    mods = (dataclasses.replace(mask, unet=unet, diffuser=diffuser, decay="cosine", influence_scale=2.0),
            dataclasses.replace(text, unet=unet, diffuser=diffuser, text=dataclasses.replace(text.text, n_layer=1)))
    return dataclasses.replace(base, modalities=mods, latent_size=(8, 8), shaping=shaping)


@pytest.fixture(scope="module")
def micro_model():
    return random_model(micro_config(), seed=5)


def micro_request(cfg, batch=2, steps=3, seed=0, device="cpu") -> Req:
    names = [m.name for m in cfg.modalities]
    table = make_table(ACP, steps, "ddim", 0.5)
    g = torch.Generator().manual_seed(seed)
    contexts = [torch.randn(batch, 19 if n == "mask" else 77, 64, generator=g).to(device) for n in names]
    x_T, noise = draw_noise(seed, batch, (cfg.latent_channels, *cfg.latent_size), table.num_steps)
    return Req(names, contexts, x_T, noise, table, make_shaping(cfg, names, table))


def eager_loop(runner, req, **kw):
    plan = GP.plan_loop(runner, *req.args(), return_influence=True, trace=True)
    return CG.GraphedLoop(runner, plan, mode="eager", **kw)


def fallback_notices(caught):
    return [str(w.message) for w in caught if issubclass(w.category, CG.GraphFallbackWarning)]


# ----------------------------------------------------------------------------- tables and buffers

@pytest.mark.parametrize("shaped", [False, True])
def test_pack_tables_layout_round_trips(shaped):
    req = toy_request(m=3, steps=7, shaped=shaped)
    n = req.table.num_steps  # 8: the official discretisation's quirk
    packed, layout = GP.pack_tables(req.table, req.shaping, 3)
    assert packed.dtype == np.float32 and packed.shape == (layout.size,)
    offsets = [o for o in (layout.coeffs, layout.decay, layout.scale) if o is not None]
    assert all(o % GP.ALIGN == 0 for o in offsets) and layout.size % GP.ALIGN == 0
    assert (layout.decay is not None) == shaped and (layout.scale is not None) == shaped
    coeffs, decay, scale = GP.table_views(torch.from_numpy(packed), layout)
    assert coeffs.is_contiguous() and np.array_equal(coeffs.numpy(), req.table.coeffs)
    if shaped:
        assert np.array_equal(decay.numpy(), req.shaping.decay) and np.array_equal(scale.numpy(), req.shaping.scale)
        assert layout.size >= layout.scale + 3 > layout.decay + n * 3 - 1
    else:
        assert decay is None and scale is None and layout.size == GP._aligned(n * 6)


def test_pack_tables_refuses_shaping_of_another_size():
    req = toy_request(m=2, steps=4)
    with pytest.raises(ValueError, match="do not fit"):
        GP.pack_tables(req.table, req.shaping, 3)


@pytest.mark.parametrize("influence,trace", [(False, False), (True, True)])
def test_plan_buffers_shapes_and_dtypes(influence, trace):
    req = toy_request(m=2, batch=3, steps=4, latent=(3, 6, 5))
    plan = GP.plan_loop(ToyRunner(req.names, dtype=torch.float16), *req.args(), influence, trace)
    bufs = plan.buffers()
    n = req.table.num_steps
    assert bufs["x"] == ((3, 3, 6, 5), torch.float32)
    assert bufs["eps"] == ((2, 3, 3, 6, 5), torch.float16) and bufs["logits"] == ((2, 3, 1, 6, 5), torch.float16)
    assert bufs["noise"] == ((n, 3, 3, 6, 5), torch.float32) and bufs["noise_i"] == ((1, 3, 3, 6, 5), torch.float32)
    assert bufs["step"] == ((1,), torch.int64) and bufs["timesteps"] == ((n,), torch.int64)
    assert bufs["tables"] == ((plan.layout.size,), torch.float32)
    assert bufs["context0"] == ((3, 7, 4), torch.float32) and bufs["context1"] == ((3, 8, 4), torch.float32)
    assert ("influence" in bufs) == influence and ("trace_x" in bufs) == trace
    if influence:
        assert bufs["influence"] == ((n, 2, 3, 1, 6, 5), torch.float32)
    want = sum(math.prod(s) * torch.empty((), dtype=d).element_size() for s, d in bufs.values())
    assert plan.nbytes() == want
    assert plan.receiver == 1 and plan.steps == n and plan.m == 2


def test_plan_dtype_defaults_to_fp32_for_runners_without_net_dtype():
    req = toy_request(m=2)
    plan = GP.plan_loop(RunOnlyRunner(req.names), *req.args())
    assert plan.eps_dtype == torch.float32 == plan.logits_dtype


def test_plan_refuses_inputs_that_disagree():
    req = toy_request(m=2, batch=2, steps=4)
    runner = ToyRunner(req.names)
    with pytest.raises(ValueError, match="noise"):
        GP.plan_loop(runner, req.names, req.contexts, req.x_T, req.noise[:-1], req.table, req.shaping)
    with pytest.raises(ValueError, match="one context per modality"):
        GP.plan_loop(runner, req.names, req.contexts[:1], req.x_T, req.noise, req.table, req.shaping)
    with pytest.raises(ValueError, match="context of 'text'"):
        GP.plan_loop(runner, req.names, [req.contexts[0], req.contexts[1][:1]], req.x_T, req.noise, req.table)


def test_load_refuses_a_request_of_another_plan():
    req = toy_request(m=2, batch=2)
    loop = eager_loop(ToyRunner(req.names), req)
    other = toy_request(m=2, batch=3)
    with pytest.raises(ValueError, match="buffer plan"):
        loop.load(*other.load_args())


def test_loop_argument_checks():
    req = toy_request()
    runner = ToyRunner(req.names)
    plan = GP.plan_loop(runner, *req.args())
    with pytest.raises(ValueError, match="mode must be"):
        CG.GraphedLoop(runner, plan, mode="fast")
    with pytest.raises(ValueError, match="streams"):
        CG.GraphedLoop(runner, plan, mode="eager", streams=0)
    with pytest.raises(ValueError, match="eager"):
        CG.GraphedLoop(runner, plan, mode="step")  # a CPU runner cannot be captured
    CG.GraphedLoop(RunOnlyRunner(req.names), plan, mode="eager")  # eager replays may use `run`


def test_launcher_choice(micro_model):
    toy = ToyRunner(["mask"])
    assert CG.launcher(toy) == toy.enqueue
    runner = TorchRunner(micro_model)
    assert CG.launcher(runner) == runner.enqueue  # the torch runner enqueues like every other
    run_only = RunOnlyRunner(["mask"])
    assert CG.launcher(run_only) is None
    assert CG.launcher(run_only, capturable=False) == run_only.run


def test_unavailable_reason_names_the_cause():
    why = CG.unavailable_reason(ToyRunner(["mask"]))
    assert why == ("the toy runner runs on cpu, not on a CUDA device" if HAS_CUDA else "no CUDA device")


# ----------------------------------------------------------------------------- the step body, eager on CPU

@pytest.mark.parametrize("m,shaped,sampler,eta", [(2, True, "ddim", 0.0), (2, False, "ddpm", 1.0),
                                                   (1, False, "ddim", 0.5), (3, True, "ddim", 1.0)])
def test_eager_step_equals_sample(m, shaped, sampler, eta):
    req = toy_request(m=m, shaped=shaped, sampler=sampler, eta=eta, steps=6)
    runner = ToyRunner(req.names)
    ref = sample(runner, *req.args(), return_influence=True, trace=True)
    loop = eager_loop(runner, req)
    assert not loop.step_on_device  # the CPU kernel takes coeffs[i] gathered into one-row tables
    assert_same_result(loop(*req.load_args()), ref)
    assert int(loop.buf.step) == req.table.num_steps  # incremented by the step itself


def test_eager_step_with_the_step_read_on_the_device_equals_sample():
    req = toy_request(m=2, eta=1.0, steps=5)
    runner = ToyRunner(req.names)
    ref = sample(runner, *req.args(), return_influence=True, trace=True)
    loop = eager_loop(runner, req, step_on_device=True)  # the kernel is given the 0-d step tensor
    assert_same_result(loop(*req.load_args()), ref)


def test_device_step_index_gathers_t_and_noise_in_order():
    req = toy_request(m=2, steps=6, sampler="ddpm")
    seen = []
    runner = ToyRunner(req.names, seen=seen)
    loop = eager_loop(runner, req)
    loop(*req.load_args())
    ts = [int(t) for t in req.table.timesteps]
    assert [t[0] for _, t in seen[::4]] == ts  # 4 networks per step, each at t_i
    assert all(len(set(t)) == 1 for _, t in seen)  # t expanded over the batch
    assert [n for n, _ in seen[:4]] == ["mask_unet", "text_unet", "mask_diffuser", "text_diffuser"]
    assert torch.equal(loop.buf.noise_i[0], req.noise[-1])  # the last step gathered noise[N-1]


def test_loop_is_reloaded_between_requests():
    first, second = toy_request(seed=1, eta=1.0), toy_request(seed=2, eta=1.0)
    runner = ToyRunner(first.names)
    loop = eager_loop(runner, first)
    loop(*first.load_args())
    got = loop(*second.load_args())
    assert_same_result(got, sample(runner, *second.args(), return_influence=True, trace=True))


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_triton_interpreter_reads_the_device_step(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("CDX_KERNEL", "triton")
    req = toy_request(m=2, steps=3, eta=1.0, batch=1, latent=(3, 4, 4))
    runner = ToyRunner(req.names)
    loop = eager_loop(runner, req)
    assert loop.step_on_device  # the triton kernel reads coeffs[i] through the step pointer
    got = loop(*req.load_args())
    ref = sample(runner, *req.args(), return_influence=True, trace=True)  # triton with a host step
    assert_same_result(got, ref, exact=False, tol=1e-6)


def test_real_networks_eager_step_equals_sample(micro_model):
    cfg = micro_model.cfg
    req = micro_request(cfg, batch=1, steps=2)
    assert req.shaping is not None  # the official decay and scale are in play
    runner = TorchRunner(micro_model)
    ref = sample(runner, *req.args(), return_influence=True, trace=True)
    assert_same_result(eager_loop(runner, req)(*req.load_args()), ref)


def test_fp16_networks_eager_step_equals_their_plain_loop():
    req = toy_request(m=2, eta=1.0)
    runner = ToyRunner(req.names, dtype=torch.float16)  # `run` hands fp32 copies to `sample`
    ref = sample(runner, *req.args(), return_influence=True)
    plan = GP.plan_loop(runner, *req.args(), return_influence=True)
    assert plan.eps_dtype == torch.float16  # the stacks keep the networks' dtype, x stays fp32
    got = CG.GraphedLoop(runner, plan, mode="eager")(*req.load_args())
    assert_same_result(got, ref)


# ----------------------------------------------------------------------------- the entry point and its fallback

def test_sample_graphed_without_a_gpu_notices_once_and_runs_the_plain_loop():
    req = toy_request(eta=1.0)
    runner = ToyRunner(req.names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = CG.sample_graphed(runner, *req.args(), return_influence=True)
    notes = fallback_notices(caught)
    assert len(notes) == 1 and "\n" not in notes[0]
    assert notes[0].startswith("cuda graph: ") and notes[0].endswith("running the plain loop")
    assert ("no CUDA device" if not HAS_CUDA else "runs on cpu") in notes[0]
    assert_same_result(got, sample(runner, *req.args(), return_influence=True))


def test_sample_graphed_falls_back_when_capture_fails(monkeypatch):
    req = toy_request(eta=1.0)
    runner = ToyRunner(req.names)
    monkeypatch.setattr(CG, "unavailable_reason", lambda r: None)

    def refuse(self):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(CG.GraphedLoop, "prepare", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = CG.sample_graphed(runner, *req.args(), trace=True, mode="eager")
    notes = fallback_notices(caught)
    assert notes == ["cuda graph: capture failed (RuntimeError: CUDA error: operation not permitted when stream "
                     "is capturing); running the plain loop"]
    assert runner not in CG._LOOPS  # the failed loop is not kept
    assert_same_result(got, sample(runner, *req.args(), trace=True))


def test_sample_graphed_uses_the_loop_when_possible(monkeypatch):
    req = toy_request(eta=1.0)
    runner = ToyRunner(req.names)
    monkeypatch.setattr(CG, "unavailable_reason", lambda r: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CG.GraphFallbackWarning)
        got = CG.sample_graphed(runner, *req.args(), return_influence=True, mode="eager")
        again = CG.sample_graphed(runner, *req.args(), return_influence=True, mode="eager")
    ref = sample(runner, *req.args(), return_influence=True)
    assert_same_result(got, ref)
    assert_same_result(again, ref)
    assert len(CG._LOOPS[runner]) == 1  # the second call reused the first call's loop


def test_sample_graphed_refuses_inconsistent_inputs():
    req = toy_request()
    with pytest.raises(ValueError, match="noise"):
        CG.sample_graphed(ToyRunner(req.names), req.names, req.contexts, req.x_T, req.noise[:1], req.table)


def test_graphed_loop_cache_is_bounded_and_forgettable():
    req = toy_request()
    runner = ToyRunner(req.names)
    plan = GP.plan_loop(runner, *req.args())
    a = CG.graphed_loop(runner, plan, "eager")
    assert CG.graphed_loop(runner, plan, "eager") is a
    b = CG.graphed_loop(runner, plan, "eager", streams=2)
    c = CG.graphed_loop(runner, plan, "eager", streams=3)
    assert len({id(a), id(b), id(c)}) == 3 and len(CG._LOOPS[runner]) == CG.CACHE_PER_RUNNER
    assert CG.graphed_loop(runner, plan, "eager") is not a  # evicted, least recently used first
    CG.forget(runner)
    assert runner not in CG._LOOPS


def test_pipeline_cuda_graph_option_falls_back_on_cpu_with_the_same_image(micro_model):
    from cdx.sampling.pipeline import generate
    from cdx.sampling.request import make_request

    runner = TorchRunner(micro_model)
    cfg = micro_model.cfg

    def request(cuda_graph):
        return make_request(cfg, text="This person has brown hair.", steps=1, seed=3, cuda_graph=cuda_graph)

    plain = generate(runner, request(False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphed = generate(runner, request(True))
    assert len(fallback_notices(caught)) == 1
    assert np.array_equal(plain.images, graphed.images)
    assert make_request(cfg, text="x").cuda_graph is None  # default: on where the runner is on CUDA


def test_run_command_has_the_cuda_graph_switch():
    from click.testing import CliRunner

    from cdx.cli import main

    out = CliRunner().invoke(main, ["run", "--help"])
    assert out.exit_code == 0 and "--cuda-graph / --no-cuda-graph" in out.output


# ----------------------------------------------------------------------------- the fast torch path on CPU

@pytest.mark.parametrize("dim_head", [2, 3, 5, 12, 18, 30])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
def test_sdpa_attention_equals_bmm_attention(dim_head, cross):
    torch.manual_seed(dim_head)
    ref = CrossAttention(32 * dim_head, 40 if cross else None, heads=32, dim_head=dim_head)
    fast = copy.deepcopy(ref)
    assert use_sdpa(fast) == 1 and type(fast) is SdpaCrossAttention
    x = 2 * torch.randn(2, 37, 32 * dim_head)  # spread inputs: a softmax far from uniform
    context = 2 * torch.randn(2, 19, 40) if cross else None
    with torch.no_grad():
        want, got = ref(x, context), fast(x, context)
    assert want.abs().max() > 0.05
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_sdpa_vae_attention_equals_bmm_attention():
    torch.manual_seed(0)
    ref = AttnBlock(64)
    fast = copy.deepcopy(ref)
    assert use_sdpa(fast) == 1 and type(fast) is SdpaAttnBlock
    x = torch.randn(2, 64, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), ref(x), rtol=0, atol=1e-5)


def test_cuda_torch_runner_on_cpu_matches_the_reference_runner(micro_model):
    ref = TorchRunner(micro_model)
    fast = cuda_runner(copy.deepcopy(micro_model), "fp32", "cpu")
    unet = fast.model.unets["text"]
    assert any(type(m) is SdpaCrossAttention for m in unet.modules())
    assert not any(type(m) is SdpaCrossAttention for m in micro_model.modules())  # the reference is untouched
    g = torch.Generator().manual_seed(1)
    inputs = {"x": torch.randn(1, 3, 8, 8, generator=g), "t": torch.tensor([900]),
              "context": torch.randn(1, 77, 64, generator=g)}
    for net in ("text_unet", "mask_diffuser"):
        want, got = ref.run(net, inputs), fast.run(net, inputs)
        for k in want:
            assert got[k].is_contiguous() and got[k].dtype == torch.float32
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)
    latent = torch.randn(1, 3, 8, 8, generator=g)
    torch.testing.assert_close(fast.run("vae_decoder", {"latent": latent})["image"],
                               ref.run("vae_decoder", {"latent": latent})["image"], rtol=1e-5, atol=1e-5)


def test_cuda_torch_runner_low_precision_layout(micro_model):
    fast = CudaTorchRunner(copy.deepcopy(micro_model), "cpu", torch.float16, channels_last=True)
    unet = fast.model.unets["mask"]
    norms = [m for m in unet.modules() if isinstance(m, GroupNorm32)]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert unet.input_blocks[0][0].weight.dtype == torch.float16
    assert unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.net_dtype("vae_decoder") == torch.float16 and fast.net_dtype("text_encoder") == torch.float32
    out = fast.enqueue("mask_unet", {"x": torch.randn(1, 3, 8, 8), "t": torch.tensor([5]),
                                     "context": torch.randn(1, 19, 64)})["eps"]
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    keep_norms_fp32(unet)  # idempotent


def test_cuda_torch_runner_padded_heads_are_exact(micro_model):
    heads = {(m.to_q.out_features // m.heads) for m in micro_model.modules() if isinstance(m, CrossAttention)}
    assert any(padded_dim(d, 8) != d for d in heads), heads  # some heads get padded, so the check can fail
    ref = TorchRunner(micro_model)
    fast = cuda_runner(copy.deepcopy(micro_model), "fp32", "cpu", pad_heads=8)
    padded = [m for m in fast.model.modules() if isinstance(m, CrossAttention)]
    assert padded and all(padded_dim(m.to_q.out_features // m.heads, 8) == m.to_q.out_features // m.heads
                          for m in padded)
    assert all(type(m) is SdpaCrossAttention for m in padded)
    g = torch.Generator().manual_seed(3)
    for net in ("text_unet", "mask_unet", "text_diffuser", "mask_diffuser"):
        spec = ref.specs[net]
        inputs = {"x": torch.randn(2, 3, 8, 8, generator=g), "t": torch.randint(0, 1000, (2,), generator=g),
                  "context": torch.randn(spec.inputs[2].concrete(2), generator=g)}
        want, got = ref.run(net, inputs), fast.run(net, inputs)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5)



def test_cuda_torch_runner_paired_networks_give_the_plain_loop(micro_model):
    cfg = micro_model.cfg
    req = micro_request(cfg, batch=2, steps=3)
    ref = sample(TorchRunner(micro_model), *req.args(), return_influence=True, trace=True)
    fast = cuda_runner(copy.deepcopy(micro_model), "fp32", "cpu", pair_unets=True)
    assert set(fast.pairs) == {"unet", "diffuser"}
    calls = []
    launch = fast.enqueue
    fast.enqueue = lambda net, inputs, stream=None: calls.append(net) or launch(net, inputs, stream)
    got = eager_loop(fast, req)(*req.load_args())
    assert calls == []  # every network of the loop ran through the two paired calls
    assert_same_result(got, ref, exact=False, tol=1e-4)
    assert fast.pair_calls(["text", "mask"]) == {}  # another modality order: the networks one by one

# ----------------------------------------------------------------------------- the benchmark driver and script

def bench_variants(tmp_path, monkeypatch, *args):
    """`cdx bench --variants` on the micro model (registered as a preset for the call)."""
    from click.testing import CliRunner

    from cdx.cli import main
    from cdx.models import config as C

    monkeypatch.setitem(C.PRESETS, "micro", micro_config)
    return CliRunner().invoke(main, ["bench", "--preset", "micro", "--steps", "1", "--runs", "1", "--json",
                                     str(tmp_path / "bench_gpu.json"), "--markdown", str(tmp_path / "bench_gpu.md"),
                                     *args])


def test_bench_variants_dry_run_exercises_every_stage(tmp_path, monkeypatch):
    names = ["eager-fp32", "torch-fp16-graph", "torch-fp16-graph-streams-pad8", "torch-fp16-graph-streams-paired",
             "tensorrt-fp16"]
    plot = importlib.util.find_spec("matplotlib") is not None  # the plot extra
    r = bench_variants(tmp_path, monkeypatch, "--device", "cpu", "--variants", ",".join(names),
                       *(["--plot", str(tmp_path / "bench_gpu.png")] if plot else []))
    assert r.exit_code == 0, r.output
    assert not plot or (tmp_path / "bench_gpu.png").stat().st_size > 0
    rep = json.loads((tmp_path / "bench_gpu.json").read_text())
    assert rep["dry_run"] is True and "note" in rep["goal"]
    assert {"machine", "results"} <= set(rep) and rep["results"]
    stages = {(r["backend"], r["stage"]) for r in rep["results"]}
    for stage in ("end_to_end", "step", "host_per_step", "networks_per_step", "outside_networks_per_step"):
        assert ("torch-fp16-graph", stage) in stages and ("eager-fp32", stage) in stages
    assert rep["variants"]["tensorrt-fp16"]["1"].startswith("skipped")
    for v in names[1:4]:
        assert rep["variants"][v]["1"] == "ok", rep["variants"][v]
        db = rep["checks"][v]["1"]["psnr_db_vs_strict_fp32"]
        assert db == "identical" or db >= 30, (v, db)
    assert rep["checks"]["eager-fp32"]["1"]["max_abs_vs_strict_fp32"] == 0  # on a CPU TF32 plays no part
    assert "DRY RUN" in (tmp_path / "bench_gpu.md").read_text()


def test_bench_variants_refuse_unknown_names_and_a_missing_gpu(tmp_path, monkeypatch):
    r = bench_variants(tmp_path, monkeypatch, "--device", "cpu", "--variants", "eager-fp32,warp-drive")
    assert r.exit_code != 0 and "warp-drive" in r.output and "Traceback" not in r.output
    r = bench_variants(tmp_path, monkeypatch, "--device", "cpu", "--variants", "default", "--mask", "m.png")
    assert r.exit_code != 0 and "drop --mask" in r.output
    if not HAS_CUDA:
        r = bench_variants(tmp_path, monkeypatch, "--variants", "default")
        assert r.exit_code != 0 and "no CUDA device" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "bench_gpu.json").exists()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_random_model_draws_every_parameter(device):
    model = random_model(micro_config(), seed=0, device=device)  # on a GPU: the meta-device build, drawn there
    for name, p in model.named_parameters():
        assert p.device.type == device and torch.isfinite(p).all(), name
        assert p.numel() == 1 or p.std() > 0, name


@pytest.mark.skipif(HAS_CUDA, reason="checks the behaviour without a CUDA device")
def test_device_check_without_a_gpu_exits_cleanly_and_says_so(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DEVICE_CHECK_DRY_RUN", "OUT")}
    env.update(OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "no CUDA device" and summary["stages"] == []
    assert "no CUDA device" in (tmp_path / "summary.md").read_text()
    assert not (tmp_path / "bench_gpu.json").exists()  # no numbers without a GPU
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_check.log", "summary.json", "summary.md"]


# ----------------------------------------------------------------------------- on a GPU

def psnr(ref, img):
    mse = ((img.float().clamp(-1, 1) - ref.float().clamp(-1, 1)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


@needs_cuda
@pytest.mark.parametrize("mode,streams", [("step", 1), ("loop", 1), ("step", 3)])
def test_gpu_graph_equals_plain_loop(mode, streams):
    req = toy_request(m=2, batch=2, steps=6, eta=1.0, device="cuda")
    runner = ToyRunner(req.names, device="cuda")
    ref = sample(runner, *req.args(), return_influence=True, trace=True)
    plan = GP.plan_loop(runner, *req.args(), return_influence=True, trace=True)
    loop = CG.GraphedLoop(runner, plan, mode=mode, streams=streams)
    got = loop(*req.load_args())
    assert loop.graph is not None
    assert_same_result(got, ref, exact=False, tol=1e-6)
    other = toy_request(m=2, batch=2, steps=6, eta=1.0, seed=9, device="cuda")
    again = loop(*other.load_args())  # a second request replays the same graph on new inputs
    assert not torch.equal(again.z0, got.z0)
    assert_same_result(again, sample(runner, *other.args(), return_influence=True, trace=True), exact=False)


@needs_cuda
def test_gpu_runner_without_enqueue_cannot_be_captured():
    req = toy_request(device="cuda")
    runner = RunOnlyRunner(req.names, device="cuda")
    assert CG.unavailable_reason(runner) == "the toy runner cannot enqueue its networks on a stream"
    with pytest.raises(ValueError, match="cannot enqueue"):
        CG.GraphedLoop(runner, GP.plan_loop(runner, *req.args()), mode="step")


@needs_cuda
def test_gpu_replay_never_synchronises_with_the_host():
    req = toy_request(m=2, batch=2, steps=5, eta=1.0, device="cuda")
    runner = ToyRunner(req.names, device="cuda")
    loop = CG.GraphedLoop(runner, GP.plan_loop(runner, *req.args()), mode="step")
    loop.load(*req.load_args())
    loop.prepare()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loop.replay()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert int(loop.buf.step) == req.table.num_steps


@needs_cuda
def test_gpu_capture_failure_falls_back_to_the_plain_loop():
    req = toy_request(m=2, batch=2, steps=4, eta=1.0, device="cuda")
    runner = ToyRunner(req.names, device="cuda", sync_inside=True)  # a host read inside a network
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = CG.sample_graphed(runner, *req.args())
    notes = fallback_notices(caught)
    assert len(notes) == 1 and "capture failed" in notes[0]
    assert_same_result(got, sample(runner, *req.args()), exact=False)


@needs_cuda
def test_gpu_fused_kernel_reads_the_device_step_in_the_graph():
    from cdx.kernels import select_kernel

    req = toy_request(m=2, device="cuda")
    runner = ToyRunner(req.names, device="cuda")
    loop = CG.GraphedLoop(runner, GP.plan_loop(runner, *req.args()), mode="step")
    assert loop.step_on_device == (select_kernel(torch.device("cuda")) != "torch")


@needs_cuda
def test_gpu_reference_torch_runner_graph_equals_plain(micro_model):
    runner = TorchRunner(copy.deepcopy(micro_model), "cuda")
    req = micro_request(micro_model.cfg, batch=2, steps=4, device="cuda")
    ref = sample(runner, *req.args(), return_influence=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CG.GraphFallbackWarning)
        got = CG.sample_graphed(runner, *req.args(), return_influence=True)
    assert_same_result(got, ref, exact=False, tol=1e-4)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_gpu_fast_runner_graph_equals_its_plain_loop(micro_model, dtype):
    runner = CudaTorchRunner(copy.deepcopy(micro_model), "cuda", dtype)
    req = micro_request(micro_model.cfg, batch=2, steps=6, device="cuda")
    ref = sample(runner, *req.args())
    for mode in ("step", "loop"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", CG.GraphFallbackWarning)
            got = CG.sample_graphed(runner, *req.args(), mode=mode)
        assert torch.isfinite(got.z0).all()
        assert_same_result(got, ref, exact=False, tol=2e-3 if dtype == torch.float16 else 2e-2)


@needs_cuda
def test_gpu_fp16_image_psnr_against_fp32_is_at_least_30_db():
    from cdx.sampling.pipeline import generate
    from cdx.sampling.request import Request

    model = random_model(preset("tiny"), seed=11)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        ref_runner = TorchRunner(copy.deepcopy(model), "cuda")
        req = Request(text="This woman has long blond hair.", steps=20, seed=4, batch=2, cuda_graph=False)
        ref = generate(ref_runner, ref_runner.cfg, req).image_tensor
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    fast = cuda_runner(copy.deepcopy(model), "fp16", "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CG.GraphFallbackWarning)
        img = generate(fast, fast.cfg, dataclasses.replace(req, cuda_graph=True)).image_tensor
    assert torch.isfinite(img).all()
    assert psnr(ref, img) >= 30.0


@needs_cuda
@pytest.mark.parametrize("dim_head", [2, 3, 5, 12, 18, 30])
def test_gpu_sdpa_fp16_matches_fp32_bmm_attention(dim_head):
    torch.manual_seed(dim_head)
    ref = CrossAttention(32 * dim_head, 64, heads=32, dim_head=dim_head).cuda().half()
    fast = copy.deepcopy(ref)
    use_sdpa(fast)
    x = torch.randn(2, 256, 32 * dim_head, device="cuda").half()
    context = torch.randn(2, 77, 64, device="cuda").half()
    with torch.no_grad():
        want = copy.deepcopy(ref).float()(x.float(), context.float())  # fp32 maths on the same fp16 values
        got = fast(x, context).float()
    err = (got - want).norm() / want.norm()
    assert err < 5e-3, f"relative error {err:.2e}"


@pytest.mark.parametrize("k", [2, 3])
def test_eager_step_with_influence_reuse_equals_sample(k):
    """Influence reuse in the graph loop (the diffusers at steps 0, K, 2K, ...; a second graph without them
    in between) gives the plain loop's result, and the diffusers run only at those steps."""
    req = toy_request(m=2, eta=1.0, steps=7)
    seen = []
    runner = ToyRunner(req.names, seen=seen)
    ref = sample(runner, *req.args(), return_influence=True, trace=True, influence_interval=k)
    plan = GP.plan_loop(runner, *req.args(), return_influence=True, trace=True, influence_interval=k)
    loop = CG.GraphedLoop(runner, plan, mode="eager")
    seen.clear()
    assert_same_result(loop(*req.load_args()), ref)
    diffuser_ts = [t[0] for name, t in seen if name.endswith("_diffuser")]
    assert diffuser_ts == [int(req.table.timesteps[i]) for i in range(0, 7, k) for _ in range(2)]
    assert loop._step.influence_refresh  # left as it was
    every = sample(runner, *req.args(), return_influence=True, trace=True)
    assert not torch.equal(every.z0, ref.z0)  # reuse changes the result: the comparison above can fail
    with pytest.raises(ValueError, match="influence_interval"):
        GP.plan_loop(runner, *req.args(), influence_interval=0)
