"""How a request samples, declared once: `Sampling` is what the Python API's keywords, the CLI's options
(`cdx.cli.options.sampling_options` builds them from these fields) and the HTTP API's fields set, and
`checked` is the one validation of each value. A new setting is one field here (with its option's metadata)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import InputError
from ..models.config import ModelConfig
from ..models.schedule import SPACINGS, StepTable, check_eta, resolve_eta
from ..validate import check_bool, check_float, check_int
from .samplers import get_sampler, sampler_names


# `--fast`: the fastest point of the frontier study whose quality stays within the noise of 50 DDIM steps
# (docs/fast-sampling.md: the shipped model, cdx eval at n = 256 on four draws): 12 DDIM steps on the official
# quadratic spacing, the dynamic diffusers every second step. It replaces the sampler, the steps, the spacing
# and the other levers below.
FAST = {"sampler": "ddim", "steps": 12, "spacing": "quad", "cache_interval": 1, "influence_interval": 2,
        "gate": 0.0}


def _option(flag: str, help: str, **click_kwargs) -> dict:
    return {"flag": flag, "help": help, "click": click_kwargs}


@dataclass(frozen=True)
class Sampling:
    """The sampling settings of a request (None: the model's own)."""

    steps: int = field(default=50, metadata=_option(
        "--steps", "Denoising steps (DDIM's official spacing may run one more).", type=int))
    sampler: str = field(default="ddim", metadata=_option(
        "--sampler", "The sampler of the collaborative loop.", choices=sampler_names()))
    spacing: str = field(default="uniform", metadata=_option(
        "--spacing", "Timestep spacing: uniform (the official default) or quad (steps crowded at low noise, the "
                     "official code's other DDIM discretisation).", choices=SPACINGS))
    eta: float | None = field(default=None, metadata=_option(
        "--eta", "DDIM eta in [0, 1], 0 = deterministic (default: the model's).", type=float))
    shaping: bool | None = field(default=None, metadata=_option(
        "--shaping/--no-shaping", "The official influence shaping (default: the model's)."))
    cache_interval: int = field(default=1, metadata=_option(
        "--cache-interval", "Feature caching: each collaborator's full UNet every K steps, its shallow path "
                            "around the cached deep features in between (1 = off).", type=int))
    influence_interval: int = field(default=1, metadata=_option(
        "--influence-interval", "Run the dynamic diffusers every K steps and reuse their influence maps in "
                                "between (1 = every step).", type=int))
    gate: float = field(default=0.0, metadata=_option(
        "--gate", "Influence gating: skip a collaborator's UNet at a step where its weight is below this at "
                  "every pixel (0 = off).", type=float))
    fast: bool = field(default=False, metadata=_option(
        "--fast", "The fast recipe: 12 DDIM steps on the quad spacing, the diffusers every second one (replaces "
                  "--sampler, --steps, --spacing, --cache-interval, --influence-interval and --gate; "
                  "docs/fast-sampling.md).",
        is_flag=True))

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
        if self.fast:
            return dataclasses.replace(self, fast=False, **FAST).checked(cfg, flags)
        name = {f.name: (f.metadata["flag"].split("/")[0] if flags else f.name) for f in dataclasses.fields(self)}
        steps = check_int(self.steps, name["steps"], 1, cfg.timesteps)
        if self.sampler not in sampler_names():
            raise InputError(f"{name['sampler']} {self.sampler!r}: choose one of {', '.join(sampler_names())}")
        if self.spacing not in SPACINGS:
            raise InputError(f"{name['spacing']} {self.spacing!r}: choose one of {', '.join(SPACINGS)}")
        check_eta(self.eta, name["eta"])
        if self.eta is not None and not get_sampler(self.sampler).takes_eta:
            raise InputError(f"{name['eta']} {self.eta}: the {self.sampler} sampler has no eta (it is for ddim)")
        eta = None if self.eta is None else float(self.eta)
        return Sampling(steps=steps, sampler=self.sampler, spacing=self.spacing, eta=eta, shaping=check_bool(self.shaping, name["shaping"]),
                        cache_interval=check_int(self.cache_interval, name["cache_interval"], 1, 1000),
                        influence_interval=check_int(self.influence_interval, name["influence_interval"], 1, 1000),
                        gate=check_float(self.gate, name["gate"], 0.0, 1.0))

    def table(self, cfg: ModelConfig) -> StepTable:
        """The per-step coefficient table these settings give with `cfg` (eta None: the model's)."""
        return get_sampler(self.sampler).table(cfg.alphas_cumprod(), self.steps, resolve_eta(cfg.eta, self.eta),
                                               self.spacing)

    def loop_options(self) -> dict:
        """The loop's keyword arguments for the settings that cut network evaluations."""
        return {"gate": self.gate, "cache_interval": self.cache_interval, "influence_interval": self.influence_interval}

    @property
    def feature_cache(self) -> int | None:
        """The skip branch whose cached networks these settings need (None: no feature caching)."""
        from ..models.deepcache import BRANCH

        return BRANCH if self.cache_interval > 1 else None

    def config(self, cfg: ModelConfig) -> ModelConfig:
        """`cfg` with these settings' shaping (None: the model's)."""
        return cfg.with_shaping(self.shaping)


def options() -> list[dataclasses.Field]:
    """The settings' fields, in order (what the CLI makes its options from)."""
    return list(dataclasses.fields(Sampling))
