"""The samplers by name: each module of this package defines one sampler's step table and ends in its
`register_sampler` call; `cdx.sampling.settings` checks a request's sampler against this registry."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...errors import InputError
from ...models.schedule import StepTable


@dataclass(frozen=True)
class Sampler:
    name: str
    # (alphas_cumprod, steps, eta, spacing) -> its step table; spacing: one of models.schedule.SPACINGS
    table: Callable[[np.ndarray, int, float, str], StepTable]
    describe: str  # one line, with the paper it implements
    takes_eta: bool = False  # whether eta (the step noise) means anything to it


_SAMPLERS: dict[str, Sampler] = {}


def register_sampler(sampler: Sampler) -> None:
    _SAMPLERS[sampler.name] = sampler


def sampler_names() -> list[str]:
    return list(_SAMPLERS)


def get_sampler(name: str) -> Sampler:
    """The sampler `name` (an InputError naming the choices when there is none)."""
    if name not in _SAMPLERS:
        raise InputError(f"sampler {name!r}: choose one of {', '.join(_SAMPLERS)}")
    return _SAMPLERS[name]
