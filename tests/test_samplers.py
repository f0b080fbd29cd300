"""The sampler registry: DPM-Solver++(2M)/(3M) against diffusers' DPMSolverMultistepScheduler (an independent
implementation) on random inputs, order 1 against DDIM, the multistep history in the plain loop, the
CUDA-graph step (eager on a CPU) and every backend."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cdx.errors import InputError
from cdx.kernels.reference import collaborate_reference
from cdx.models.schedule import alphas_cumprod, ddim_table, linear_betas
from cdx.sampling.history import History
from cdx.sampling.samplers import get_sampler, sampler_names
from cdx.sampling.samplers.dpm_solver import multistep_table

ACP = alphas_cumprod(linear_betas())


def table_loop(table, model, x):
    """x after every step of `table`, through the fused kernel's reference and the history terms."""
    x = x.float()
    hist = History(x) if table.history is not None else None
    coeffs = torch.from_numpy(table.coeffs)
    for i, t in enumerate(table.timesteps):
        eps = model(x.double(), float(t)).float()
        _, x_next = collaborate_reference(eps[None], torch.zeros(1, *eps.shape[:1], 1, *eps.shape[2:]), x,
                                          torch.zeros_like(x), coeffs, i)
        if hist is not None:
            hist.apply(x_next, x, eps, coeffs[i], torch.from_numpy(table.history[i]))
        x = x_next
    return x


def toy_model(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 3, generator=g, dtype=torch.float64) * 0.3
    return lambda x, t: torch.tanh(torch.einsum("ij,bjhw->bihw", w, x) + t / 1000.0)


def test_registry_names_the_four_samplers_and_refuses_others():
    assert sampler_names()[:5] == ["ddim", "ddpm", "dpmpp-2m", "dpmpp-3m", "dpmpp-2m-sde"]
    with pytest.raises(InputError, match="choose one of ddim, ddpm, dpmpp-2m"):
        get_sampler("euler")


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps,spacing", [(4, "uniform"), (10, "uniform"), (25, "uniform"), (12, "quad")])
def test_dpm_solver_matches_diffusers(order, steps, spacing):
    """Our table-driven update against diffusers' scheduler: DPM-Solver++ (data prediction, midpoint), the same
    float32 alphas_cumprod, timesteps and final target (sigma_min: alphas_cumprod[0]), lower order final."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (the test extra has it)")
    table = get_sampler(f"dpmpp-{order}m").table(ACP, steps, 0.0, spacing)
    sch = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
        solver_order=order, algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="sigma_min")
    sch.alphas_cumprod = torch.tensor(np.float32(ACP))
    sch.set_timesteps(timesteps=[int(t) for t in table.timesteps])
    model = toy_model(steps + order)
    x = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
    ref = x.clone()
    for t in sch.timesteps:
        ref = sch.step(model(ref, float(t)), t, ref).prev_sample
    got = table_loop(table, model, x)
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_first_order_is_ddim_with_eta_0():
    model = toy_model(1)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for steps in (3, 7, 20):
        got = table_loop(multistep_table(ACP, steps, 1, "dpmpp-1"), model, x)
        ref = table_loop(ddim_table(ACP, steps, 0.0), model, x)
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_orders_warm_up_and_lower_at_the_end_below_15_steps():
    from cdx.sampling.samplers.dpm_solver import orders

    assert orders(6, 3) == [1, 2, 3, 3, 2, 1] and orders(16, 2)[-3:] == [2, 2, 2] and orders(1, 3) == [1]
    t = get_sampler("dpmpp-2m").table(ACP, 10, 1.0)
    assert t.history.shape == (10, 2) and t.history[0].tolist() == [0, 0] and (t.coeffs[:, 5] == 0).all()


def test_eta_is_refused_for_the_ode_solvers():
    from cdx.models.config import preset
    from cdx.sampling.settings import Sampling

    cfg = preset("tiny")
    with pytest.raises(InputError, match="dpmpp-2m sampler has no eta"):
        Sampling(sampler="dpmpp-2m", eta=0.5).checked(cfg)
    with pytest.raises(InputError, match="--eta 0.5: the dpmpp-3m"):
        Sampling(sampler="dpmpp-3m", eta=0.5).checked(cfg, flags=True)
    assert Sampling(sampler="dpmpp-2m").checked(cfg).table(cfg).kind == "dpmpp-2m"


@pytest.mark.parametrize("sampler", ["dpmpp-2m", "dpmpp-3m"])
def test_the_graph_step_equals_the_plain_loop(sampler):
    """The CUDA-graph step body (eager on a CPU, the same code a capture records) with the history as static
    buffers gives the plain loop's result."""
    from cdx.sampling.graph import capture as CG
    from cdx.sampling.graph import plan as GP
    from cdx.sampling.loop import draw_noise, sample
    from test_cuda_graph import ToyRunner

    table = get_sampler(sampler).table(ACP, 6, 0.0)
    runner = ToyRunner(["mask", "text"])
    g = torch.Generator().manual_seed(3)
    contexts = [torch.randn(2, 7 + j, 4, generator=g) for j in range(2)]
    x_T, noise = draw_noise(3, 2, (3, 6, 5), table.num_steps)
    ref = sample(runner, ["mask", "text"], contexts, x_T, noise, table, None, True, True)
    plan = GP.plan_loop(runner, ["mask", "text"], contexts, x_T, noise, table, None, True, True)
    loop = CG.GraphedLoop(runner, plan, mode="eager")
    for _ in range(2):  # twice: the history is reset between requests
        got = loop(x_T, noise, contexts, table)
        torch.testing.assert_close(got.z0, ref.z0, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(got.trace["x"], ref.trace["x"], rtol=1e-6, atol=1e-6)


def test_a_multistep_sampler_through_the_api_on_torch_and_onnxruntime(tiny_bundle):
    import cdx

    torch_out = cdx.Pipeline.load(tiny_bundle, backend="torch")(text="This person has brown hair.", seed=2,
                                                                 steps=5, sampler="dpmpp-2m", batch=2)
    ort = cdx.Pipeline.load(tiny_bundle, backend="onnxruntime")
    ort_out = ort(text="This person has brown hair.", seed=2, steps=5, sampler="dpmpp-2m", batch=2)
    assert len(torch_out.timesteps) == 5
    diff = np.abs(torch_out.arrays.astype(int) - ort_out.arrays.astype(int))
    assert diff.max() <= 2  # the same images to rounding
    ddim = ort(text="This person has brown hair.", seed=2, steps=5, sampler="ddim", eta=0.0, batch=2)
    assert not np.array_equal(ddim.arrays, ort_out.arrays)  # a different update


@pytest.mark.parametrize("steps", [6, 20])
def test_sde_dpm_solver_matches_diffusers_with_the_same_noise(steps):
    """SDE-DPM-Solver++(2M) against diffusers' sde-dpmsolver++ given our per-step noise (variance_noise)."""
    diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed (the test extra has it)")
    table = get_sampler("dpmpp-2m-sde").table(ACP, steps, 1.0)
    sch = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
        solver_order=2, algorithm_type="sde-dpmsolver++", solver_type="midpoint", lower_order_final=True,
        final_sigmas_type="sigma_min")
    sch.alphas_cumprod = torch.tensor(np.float32(ACP))
    sch.set_timesteps(timesteps=[int(t) for t in table.timesteps])
    model = toy_model(steps)
    g = torch.Generator().manual_seed(steps)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(len(table.timesteps), *x.shape, generator=g, dtype=torch.float64)
    ref = x.clone()
    for i, t in enumerate(sch.timesteps):
        ref = sch.step(model(ref, float(t)), t, ref, variance_noise=noise[i]).prev_sample
    got, hist, coeffs = x.float(), History(x.float()), torch.from_numpy(table.coeffs)
    for i, t in enumerate(table.timesteps):
        eps = model(got.double(), float(t)).float()
        _, nxt = collaborate_reference(eps[None], torch.zeros(1, 2, 1, 5, 4), got, noise[i].float(), coeffs, i)
        hist.apply(nxt, got, eps, coeffs[i], torch.from_numpy(table.history[i]))
        got = nxt
    assert torch.allclose(got.double(), ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
