"""DPM-Solver++(3M) (Lu et al. 2022): the third-order multistep data-prediction solver."""
from .dpm_solver import multistep_table
from .registry import Sampler, register_sampler

register_sampler(Sampler("dpmpp-3m", lambda acp, steps, eta: multistep_table(acp, steps, 3, "dpmpp-3m"),
                         "DPM-Solver++(3M) (Lu et al. 2022), deterministic, 10-20 steps"))
