"""SDE-DPM-Solver++(2M) (Lu et al. 2022): the second-order multistep solver of the diffusion SDE, which adds
each step's noise as DDIM with eta 1 does (the shipped model's own setting)."""
from .dpm_solver import multistep_table
from .registry import Sampler, register_sampler

register_sampler(Sampler("dpmpp-2m-sde", lambda acp, steps, eta, spacing="uniform":
                         multistep_table(acp, steps, 2, "dpmpp-2m-sde", True, spacing),
                         "SDE-DPM-Solver++(2M) (Lu et al. 2022), stochastic like DDIM with eta 1"))
