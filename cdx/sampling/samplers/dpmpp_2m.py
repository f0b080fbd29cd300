"""DPM-Solver++(2M) (Lu et al. 2022): the second-order multistep data-prediction solver."""
from .dpm_solver import multistep_table
from .registry import Sampler, register_sampler

register_sampler(Sampler("dpmpp-2m", lambda acp, steps, eta, spacing="uniform":
                         multistep_table(acp, steps, 2, "dpmpp-2m", spacing=spacing),
                         "DPM-Solver++(2M) (Lu et al. 2022), deterministic, 15-20 steps"))
