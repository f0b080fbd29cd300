"""Schedule tables: the official DDIM discretisation and its quirks, DDPM against the official buffers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cdx.models.schedule import alphas_cumprod, ddim_table, ddim_timesteps, ddpm_table, linear_betas


def test_golden_schedule_ddim_quirks():
    assert list(ddim_timesteps(10)) == [1, 101, 201, 301, 401, 501, 601, 701, 801, 901]
    assert len(ddim_timesteps(7)) == 8  # 1000 // 7 = 142 does not divide 1000
    assert list(ddim_timesteps(3)) == [1, 334, 667]  # the official t = 1000 would be out of range
    assert ddim_timesteps(50)[-1] == 981
    with pytest.raises(ValueError):
        ddim_timesteps(0)
    acp = alphas_cumprod(linear_betas())
    table = ddim_table(acp, 10, eta=0.0)
    assert table.coeffs.dtype == np.float32 and table.coeffs.shape == (10, 6)
    assert table.coeffs[-1, 2] == np.sqrt(np.float32(acp[0]))  # the first a_prev is alphas_cumprod[0], not 1
    assert np.all(table.coeffs[:, 5] == 0)


def test_golden_schedule_buffers_and_ddpm():
    from golden import find_golden

    state = torch.load(find_golden("*.ckpt")[0], map_location="cpu", weights_only=True)["state_dict"]
    acp = alphas_cumprod(linear_betas())
    np.testing.assert_array_equal(acp.astype(np.float32), state["alphas_cumprod"].numpy())
    table = ddpm_table(acp, 1000)
    assert list(table.timesteps[:3]) == [999, 998, 997] and table.timesteps[-1] == 0
    coef1 = state["posterior_mean_coef1"].numpy()[::-1]
    coef2 = state["posterior_mean_coef2"].numpy()[::-1]
    var = state["posterior_variance"].numpy()[::-1]
    np.testing.assert_allclose(table.coeffs[:, 2], coef1, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(table.coeffs[:, 4], coef2, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(table.coeffs[:, 5] ** 2, var, rtol=1e-4, atol=1e-9)
    assert table.coeffs[-1, 5] == 0  # no noise at the last step


def test_schedule_ddpm_strided_reaches_x0():
    acp = alphas_cumprod(linear_betas())
    table = ddpm_table(acp, 20)
    assert table.num_steps == 20 and table.timesteps[-1] == 0
    a, b, c, d, e, sigma = table.coeffs[-1]
    assert c == pytest.approx(1.0) and e == pytest.approx(0.0, abs=1e-7) and sigma == 0


def test_ddim_eta_above_one_is_refused_because_its_table_has_nan():
    """With eta > 1 the step noise outgrows sqrt(1 - a_prev): the table would hold NaN, so it is refused; eta 1 is
    the largest valid value and gives a finite table at every step count."""
    from cdx.models.schedule import resolve_eta
    from cdx.errors import InputError

    acp = alphas_cumprod(linear_betas())
    for n in (10, 50, 200):
        assert np.isfinite(ddim_table(acp, n, eta=1.0).coeffs).all()
        with np.errstate(invalid="ignore"):  # the unguarded formula, to show what the check prevents
            a = acp[ddim_timesteps(n)][1:]
            a_prev = acp[ddim_timesteps(n)][:-1]
            sigma = 1.2 * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
            assert np.isnan(np.sqrt(1 - a_prev - sigma ** 2)).any()
        with pytest.raises(InputError, match="out of range"):
            ddim_table(acp, n, eta=1.2)
    assert resolve_eta(1.0, None) == 1.0 and resolve_eta(1.0, 0.0) == 0.0
    for model_eta, eta in ((0.0, -0.1), (0.0, float("nan")), (2.0, None)):
        with pytest.raises(InputError, match="out of range"):
            resolve_eta(model_eta, eta)


def test_quad_spacing_is_the_official_quadratic_discretisation():
    """The official `ddim_discretize="quad"`: ((linspace(0, sqrt(0.8 T), S))^2).astype(int) + 1, written out
    here for 10 steps; the steps crowd at low noise; timesteps that round alike run once."""
    assert list(ddim_timesteps(10, spacing="quad")) == [1, 10, 40, 89, 159, 247, 356, 484, 633, 801]
    for n in (2, 12, 20, 50, 200):
        ts = ddim_timesteps(n, spacing="quad")
        assert ts[0] == 1 and ts[-1] == 801 and np.all(np.diff(ts) > 0)
        assert len(ts) == len(set((np.linspace(0, np.sqrt(800), n) ** 2).astype(int)))
        assert np.all(np.diff(np.diff(ts.astype(float))) > -2)  # gaps grow (up to integer rounding)
    with pytest.raises(ValueError, match="unknown spacing"):
        ddim_timesteps(10, spacing="cosine")
    acp = alphas_cumprod(linear_betas())
    table = ddim_table(acp, 12, eta=1.0, spacing="quad")
    assert list(table.timesteps) == list(ddim_timesteps(12, spacing="quad")[::-1])
    assert np.isfinite(table.coeffs).all()
    np.testing.assert_array_equal(table.coeffs[0, 1], np.sqrt(np.float32(acp[801])))  # B = sqrt(a_t) at t = 801
    ddpm = ddpm_table(acp, 12, spacing="quad")
    assert ddpm.timesteps[-1] == 0 and ddpm.coeffs[-1, 5] == 0  # the last step reaches the clean signal


def test_spacing_is_a_sampling_setting():
    from cdx.errors import InputError
    from cdx.models.config import preset
    from cdx.sampling.settings import Sampling

    cfg = preset("small")
    table = Sampling(steps=10, spacing="quad").checked(cfg).table(cfg)
    assert list(table.timesteps) == [801, 633, 484, 356, 247, 159, 89, 40, 10, 1]
    assert list(Sampling(steps=10).checked(cfg).table(cfg).timesteps) == list(range(901, 0, -100))
    with pytest.raises(InputError, match="spacing 'log'"):
        Sampling(spacing="log").checked(cfg)
    with pytest.raises(InputError, match="--spacing 'log': choose one of uniform, quad"):
        Sampling(spacing="log").checked(cfg, flags=True)
