"""Noise schedules as pure functions, computed once into a per-step coefficient table.

Every sampler step in cdx is the same update (see `cdx.kernels.reference`):

    pred_x0 = (x - A * eps) / B
    x_prev  = C * pred_x0 + D * eps + E * x + sigma * noise

DDIM (Song et al. 2021, Eq. 12) uses A = sqrt(1 - a_t), B = sqrt(a_t), C = sqrt(a_prev),
D = sqrt(1 - a_prev - sigma^2), E = 0. DDPM ancestral sampling (Ho et al. 2020, the paper's
Algorithm 2, on a strided set of timesteps) uses the posterior q(x_s | x_t, x0): C = coef1,
E = coef2, D = 0. The table is float32, indexed by step i = 0..N-1 in sampling order (t descending),
and is shared by every backend and by the fused kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Column order of `StepTable.coeffs`.
COEFF_NAMES = ("A", "B", "C", "D", "E", "sigma")
PI32 = float(np.float32(np.pi))  # float32 pi, as the official code gets it from acos(0) * 2


def linear_betas(n: int = 1000, start: float = 0.0015, end: float = 0.0195) -> np.ndarray:
    """LDM 'linear' schedule: linspace(sqrt(start), sqrt(end), n)^2 in float64."""
    return np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """Cumulative product of (1 - beta) in float64. The official model stores it rounded to float32,
    which is what its DDIM sampler reads (`ddim_table` rounds); its DDPM buffers come from float64."""
    return np.cumprod(1.0 - betas, axis=0)


SPACINGS = ("uniform", "quad")  # the official code's two DDIM discretisations (its `ddim_discretize`)


def ddim_timesteps(num_steps: int, num_train_steps: int = 1000, spacing: str = "uniform") -> np.ndarray:
    """The official DDIM timesteps, ascending, in one of its two discretisations (+1, as it adds).

    "uniform" (the official default): range(0, T, T // S) + 1. Its quirk is kept: T // S does not always
    divide T, so asking for 7 steps gives 8. Where the official code would ask for t = T (for example 3
    steps: 1, 334, 667, 1000) it fails with an index error; cdx drops that one out-of-range timestep.

    "quad" (Song et al. 2021, appendix D.2; the official `ddim_discretize="quad"`): t_i = (i * c)^2 + 1 with
    c = sqrt(0.8 T) / (S - 1), so the steps crowd at low noise and the first is t ~ 0.8 T. Where small
    timesteps round to the same integer (more than about 25 steps of 1000), cdx runs each once, where the
    official code would repeat it.
    """
    if num_steps < 1 or num_steps > num_train_steps:
        raise ValueError(f"steps must be in 1..{num_train_steps}, got {num_steps}")
    if spacing == "quad":
        ts = (np.linspace(0, np.sqrt(num_train_steps * 0.8), num_steps) ** 2).astype(np.int64)
        return np.unique(ts) + 1
    if spacing != "uniform":
        raise ValueError(f"unknown spacing {spacing!r} (expected one of {', '.join(SPACINGS)})")
    stride = num_train_steps // num_steps
    ts = np.asarray(list(range(0, num_train_steps, stride)), dtype=np.int64) + 1
    return ts[ts < num_train_steps]


def cosine_decay(t: int, num_train_steps: int = 1000) -> float:
    """The official influence decay k(t) = (cos((1 - t/T) * pi) + 1) / 2, in float32 torch ops."""
    tt = torch.tensor(float(t), dtype=torch.float32)
    k = (torch.cos((1 - tt / num_train_steps) * PI32) + 1) / 2
    return float(k)


@dataclass(frozen=True)
class StepTable:
    """Everything the sampling loop needs per step, known before the loop starts."""

    timesteps: np.ndarray  # (N,) int64, sampling order (descending)
    coeffs: np.ndarray  # (N, 6) float32, columns COEFF_NAMES
    kind: str  # the sampler's name: "ddim", "ddpm", ...
    eta: float
    # (N, 2) float32 or None: a multistep sampler's weights of the predicted x0 of the two previous steps,
    # added to the update: x_prev += H1 * x0_{i-1} + H2 * x0_{i-2} (cdx.sampling.samplers)
    history: np.ndarray | None = None

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])


def check_eta(eta: float | None, flag: str = "--eta") -> None:
    """DDIM eta lies in [0, 1] (None = the model's default). Above 1 the step noise sigma outgrows
    sqrt(1 - a_prev) at some steps and the update's sqrt(1 - a_prev - sigma^2) is NaN."""
    from ..validate import check_float

    if eta is not None:
        check_float(eta, flag, 0.0, 1.0)


def resolve_eta(model_eta: float, eta: float | None, flag: str = "--eta") -> float:
    """The eta to sample with: the request's, else the model's; either must lie in [0, 1]."""
    check_eta(eta, flag)
    check_eta(model_eta, "the model's eta")
    return float(model_eta if eta is None else eta)


def ddim_table(acp: np.ndarray, num_steps: int, eta: float = 0.0, spacing: str = "uniform") -> StepTable:
    """DDIM coefficients exactly as the official sampler rounds them (all scalars float32, from the
    float32 alphas_cumprod buffer), on the timesteps of `spacing` (`ddim_timesteps`)."""
    check_eta(eta, "eta")
    acp = np.asarray(acp, dtype=np.float32)
    ts = ddim_timesteps(num_steps, acp.shape[0], spacing)
    a = acp[ts]  # float32
    a_prev = np.asarray([acp[0]] + acp[ts[:-1]].tolist(), dtype=np.float64)  # first is acp[0], not 1
    # The official expression mixes a float32 tensor and float64 arrays: 1 - a_t is rounded to float32.
    one_minus_a = (np.float32(1) - a).astype(np.float64)
    sigma64 = eta * np.sqrt((1 - a_prev) / one_minus_a * (1 - a.astype(np.float64) / a_prev))
    a32 = a.astype(np.float32)
    a_prev32 = a_prev.astype(np.float32)
    sigma32 = sigma64.astype(np.float32)
    one = np.float32(1.0)
    coeffs = np.stack(
        [
            np.sqrt(one - a32),  # A = sqrt(1 - a_t)
            np.sqrt(a32),  # B = sqrt(a_t)
            np.sqrt(a_prev32),  # C = sqrt(a_prev)
            np.sqrt(one - a_prev32 - sigma32 * sigma32),  # D = sqrt(1 - a_prev - sigma^2)
            np.zeros_like(a32),  # E
            sigma32,
        ],
        axis=1,
    ).astype(np.float32)
    # Sampling order: t descending, so the ascending arrays are read backwards.
    return StepTable(timesteps=ts[::-1].copy(), coeffs=coeffs[::-1].copy(), kind="ddim", eta=float(eta))


def ddpm_table(acp: np.ndarray, num_steps: int, spacing: str = "uniform") -> StepTable:
    """Ancestral DDPM on strided timesteps: posterior q(x_s | x_t, x0) with s the previous step."""
    acp64 = np.asarray(acp, dtype=np.float64)
    n_train = acp64.shape[0]
    if not 1 <= num_steps <= n_train:
        raise ValueError(f"steps must be in 1..{n_train}, got {num_steps}")
    # uniform: t = 0, s, 2s, ... (s = T // N): with N = T this is the original ancestral sampler, t = T-1 .. 0;
    # quad: DDIM's quadratic timesteps without its +1, so the last step still reaches the clean signal
    ts = (ddim_timesteps(num_steps, n_train, spacing) - 1 if spacing != "uniform"
          else np.arange(0, n_train, n_train // num_steps, dtype=np.int64))
    a_t = acp64[ts]
    a_s = np.concatenate([[1.0], acp64[ts[:-1]]])  # before the first timestep the signal is clean
    alpha = a_t / a_s
    beta = 1.0 - alpha
    coef1 = np.sqrt(a_s) * beta / (1.0 - a_t)
    coef2 = np.sqrt(alpha) * (1.0 - a_s) / (1.0 - a_t)
    var = beta * (1.0 - a_s) / (1.0 - a_t)
    coeffs = np.stack(
        [np.sqrt(1 - a_t), np.sqrt(a_t), coef1, np.zeros_like(a_t), coef2, np.sqrt(var)], axis=1
    ).astype(np.float32)
    return StepTable(timesteps=ts[::-1].copy(), coeffs=coeffs[::-1].copy(), kind="ddpm", eta=1.0)


def make_table(acp: np.ndarray, num_steps: int, sampler: str = "ddim", eta: float = 0.0,
               spacing: str = "uniform") -> StepTable:
    """Dispatch on the sampler name."""
    if sampler == "ddim":
        return ddim_table(acp, num_steps, eta, spacing)
    if sampler == "ddpm":
        return ddpm_table(acp, num_steps, spacing)
    raise ValueError(f"unknown sampler {sampler!r} (expected 'ddim' or 'ddpm')")
