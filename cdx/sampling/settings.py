"""How a request samples, declared once: `Sampling` is what the Python API's keywords, the CLI's options
(`cdx.cli.options.sampling_options` builds them from these fields) and the HTTP API's fields set, and
`checked` is the one validation of each value. A new setting is one field here (with its option's metadata)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InputError
from ..models.config import ModelConfig
from ..models.schedule import StepTable, check_eta
from ..validate import check_bool, check_int

SAMPLERS = ("ddim", "ddpm")


def _option(flag: str, help: str, **click_kwargs) -> dict:
    return {"flag": flag, "help": help, "click": click_kwargs}


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of a request (None: the model's own)."""

    steps: int = field(default=50, metadata=_option(
        "--steps", "Denoising steps (DDIM's official spacing may run one more).", type=int))
    sampler: str = field(default="ddim", metadata=_option(
        "--sampler", "The sampler of the collaborative loop.", choices=SAMPLERS))
    eta: float | None = field(default=None, metadata=_option(
        "--eta", "DDIM eta in [0, 1], 0 = deterministic (default: the model's).", type=float))
    shaping: bool | None = field(default=None, metadata=_option(
        "--shaping/--no-shaping", "The official influence shaping (default: the model's)."))

    @classmethod
    def of(cls, **values) -> "Sampling":
        """From keyword values; an unknown name is a one-line error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown sampling setting {unknown[0]!r}; the settings are {', '.join(sorted(names))}")
        return cls(**values)

    def checked(self, cfg: ModelConfig, flags: bool = False) -> "Sampling":
        """Every value checked against the model (one-line `InputError`s naming the value, or its option with
        `flags`), numbers normalised."""
        name = {f.name: (f.metadata["flag"].split("/")[0] if flags else f.name) for f in dataclasses.fields(self)}
        steps = check_int(self.steps, name["steps"], 1, cfg.timesteps)
        if self.sampler not in SAMPLERS:
            raise InputError(f"{name['sampler']} {self.sampler!r}: choose one of {', '.join(SAMPLERS)}")
        check_eta(self.eta, name["eta"])
        eta = None if self.eta is None else float(self.eta)
        return Sampling(steps=steps, sampler=self.sampler, eta=eta, shaping=check_bool(self.shaping, name["shaping"]))

    def table(self, cfg: ModelConfig) -> StepTable:
        """The per-step coefficient table these settings give with `cfg` (eta None: the model's)."""
        return cfg.step_table(self.steps, self.sampler, self.eta)

    def config(self, cfg: ModelConfig) -> ModelConfig:
        """`cfg` with these settings' shaping (None: the model's)."""
        return cfg.with_shaping(self.shaping)


def options() -> list[dataclasses.Field]:
    """The settings' fields, in order (what the CLI makes its options from)."""
    return list(dataclasses.fields(Sampling))
