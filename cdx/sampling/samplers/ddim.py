"""DDIM (Song et al. 2021, Eq. 12) exactly as the official sampler computes it: the default."""
from ...models.schedule import ddim_table
from .registry import Sampler, register_sampler

register_sampler(Sampler("ddim", ddim_table, "DDIM (Song et al. 2021), the official sampler; eta 0 = deterministic",
                         takes_eta=True))
