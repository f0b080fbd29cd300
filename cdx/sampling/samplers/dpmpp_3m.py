"""DPM-Solver++(3M) (Lu et al. 2022): the third-order multistep data-prediction solver."""
from .dpm_solver import multistep_table
from .registry import Sampler, register_sampler

register_sampler(Sampler("dpmpp-3m", lambda acp, steps, eta, spacing="uniform":
                         multistep_table(acp, steps, 3, "dpmpp-3m", spacing=spacing),
                         "DPM-Solver++(3M) (Lu et al. 2022), deterministic, 10-20 steps"))
