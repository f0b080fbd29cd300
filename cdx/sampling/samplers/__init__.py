"""Samplers as a registry (`registry.py`), one module each, registered by name. Every sampler's step is the
update of `cdx.models.schedule` on the collaborative step's *mixed* eps (the fused kernel), plus, for the
multistep solvers, the weighted predicted x0 of earlier steps (`StepTable.history`, `..history.History`)."""
from .registry import Sampler, get_sampler, register_sampler, sampler_names
from . import ddim, ddpm, dpmpp_2m, dpmpp_3m, dpmpp_2m_sde  # noqa: E402,F401  (each registers itself, in this order)

__all__ = ["Sampler", "get_sampler", "register_sampler", "sampler_names"]
