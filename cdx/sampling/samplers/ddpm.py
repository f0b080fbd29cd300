"""Ancestral DDPM (Ho et al. 2020) on strided timesteps: the paper's Algorithm 2 as written."""
from ...models.schedule import ddpm_table
from .registry import Sampler, register_sampler

register_sampler(Sampler("ddpm", lambda acp, steps, eta, spacing="uniform":
                         ddpm_table(acp, steps, spacing),
                         "ancestral DDPM (Ho et al. 2020) on strided timesteps"))
