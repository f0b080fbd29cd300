"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its third-order form; diffusers'
`DPMSolverMultistepScheduler`, midpoint variant): the data-prediction ODE solver, as a table.

With alpha = sqrt(a), sigma = sqrt(1 - a) and lambda = log(alpha / sigma), the step from s to t (h =
lambda_t - lambda_s) on the predicted x0 of this step (m0) and the previous ones (m1, m2) is

    order 1:  x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) m0                (= DDIM with eta 0)
    order 2:  ... + alpha_t (1 - e^-h) D1 / 2,  D1 = (m0 - m1) / r0,  r0 = h_prev / h
    order 3:  x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^-h) m0 + alpha_t ((e^-h - 1) / h + 1) D1
                    - alpha_t ((e^-h - 1 + h) / h^2 - 1 / 2) D2   (D1, D2: the divided differences)

The SDE variant (Lu et al. 2022, SDE-DPM-Solver++(2M); diffusers' "sde-dpmsolver++") adds noise as DDIM's
eta does: x_t = (sigma_t / sigma_s) e^-h x_s + alpha_t (1 - e^-2h) (m0 + D1 / 2) + sigma_t sqrt(1 - e^-2h) z.

Each is linear in m0, m1, m2: per step, x_t = E x_s + C m0 + H1 m1 + H2 m2. C and E go to the fused kernel's
columns (schedule.COEFF_NAMES; A = sigma_s and B = alpha_s give m0 = (x - A eps) / B, D = sigma = 0); H1 and
H2 are `StepTable.history`. The timesteps and the last target are DDIM's (its spacing, the last
step to alphas_cumprod[0]), so order 1 is DDIM with eta 0. The first steps use lower orders (no history
yet), and so do the last ones below 15 steps, as in diffusers (lower_order_final).
"""
from __future__ import annotations

import numpy as np

from ...models.schedule import StepTable, ddim_timesteps

LOWER_ORDER_FINAL_BELOW = 15  # steps: diffusers' lower_order_final threshold


def orders(n: int, order: int) -> list[int]:
    """The order of each of n steps: warming up from 1, and lower at the end below 15 steps."""
    out = [min(order, i + 1) for i in range(n)]
    if n < LOWER_ORDER_FINAL_BELOW:
        out[-1] = 1
        if n >= 2:
            out[-2] = min(out[-2], 2)
    return out


def weights(h: float, h_prev: list[float], order: int, alpha_t: float, sde: bool = False) -> np.ndarray:
    """(w0, w1, w2): the weights of m0, m1, m2 in one step of the given order (h_prev: h of the previous
    steps, most recent first)."""
    c = alpha_t * -np.expm1(-2 * h if sde else -h)  # alpha_t (1 - e^-h), or (1 - e^-2h) for the SDE
    if order == 1:
        return np.array([c, 0.0, 0.0])
    r0 = h_prev[0] / h
    d1_0 = np.array([1.0, -1.0, 0.0]) / r0  # D1_0 = (m0 - m1) / r0
    if order == 2:
        return np.array([c, 0.0, 0.0]) + 0.5 * c * d1_0
    r1 = h_prev[1] / h
    d1_1 = np.array([0.0, 1.0, -1.0]) / r1  # D1_1 = (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    k2 = alpha_t * (np.expm1(-h) / h + 1.0)
    k3 = alpha_t * ((np.expm1(-h) + h) / h ** 2 - 0.5)
    return np.array([c, 0.0, 0.0]) + k2 * d1 - k3 * d2


def multistep_table(acp: np.ndarray, num_steps: int, order: int, kind: str, sde: bool = False,
                    spacing: str = "uniform") -> StepTable:
    """The step table of DPM-Solver++(order M) on DDIM's timesteps (see the module docstring)."""
    acp32 = np.asarray(acp, dtype=np.float32)
    ts = ddim_timesteps(num_steps, acp32.shape[0], spacing)[::-1].copy()  # sampling order, t descending
    a_s = acp32[ts].astype(np.float64)
    a_t = np.concatenate([acp32[ts[1:]], acp32[:1]]).astype(np.float64)  # the last step goes to acp[0]
    alpha_s, sigma_s, alpha_t, sigma_t = np.sqrt(a_s), np.sqrt(1 - a_s), np.sqrt(a_t), np.sqrt(1 - a_t)
    lam_s, lam_t = np.log(alpha_s / sigma_s), np.log(alpha_t / sigma_t)
    h = lam_t - lam_s
    n = len(ts)
    coeffs, history = np.zeros((n, 6)), np.zeros((n, 2))
    for i, k in enumerate(orders(n, order)):
        w = weights(h[i], [h[i - 1], h[i - 2] if i >= 2 else np.nan], k, alpha_t[i], sde)
        e = sigma_t[i] / sigma_s[i] * (np.exp(-h[i]) if sde else 1.0)
        noise = sigma_t[i] * np.sqrt(-np.expm1(-2 * h[i])) if sde else 0.0
        coeffs[i] = [sigma_s[i], alpha_s[i], w[0], 0.0, e, noise]  # A, B, C, D, E, sigma
        history[i] = w[1:]
    return StepTable(timesteps=ts, coeffs=coeffs.astype(np.float32), kind=kind, eta=1.0 if sde else 0.0,
                     history=history.astype(np.float32))
