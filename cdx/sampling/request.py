"""A generation request, validated once at the boundary: every user value checked and every input file
decoded here, so that nothing after it fails on bad input.

`make_request` turns what a user gives (captions, masks, other conditions, one per item or one for all;
seeds; the sampling settings, `settings.Sampling`) into a frozen `Request` of encoder inputs (B, ...) per
modality, one seed per item, the checked settings and their step table (computed here, once). Every bad
value raises `cdx.InputError` with a one-line message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..errors import InputError
from ..models.config import ModelConfig
from ..models.modalities import kind_of
from ..models.schedule import StepTable
from ..validate import SEED_LIMIT, check_float, check_int, check_seed
from .settings import Sampling

GUIDANCE_RANGE = (0.0, 30.0)  # classifier-free guidance scales beyond 30 only saturate the image


@dataclass(frozen=True)
class Request:
    """What one call of the pipeline generates; every field already checked."""

    inputs: dict[str, torch.Tensor]  # modality name -> encoder input (B, ...), in the model's modality order
    seeds: tuple[int, ...]  # one per item: item i draws its noise from generator(seeds[i])
    sampling: Sampling  # checked against the model
    table: StepTable  # the sampling's per-step coefficients: sampling.table(cfg)
    return_influence: bool = False
    return_intermediates: bool = False  # the decoded predicted x0 of every step
    cuda_graph: bool | None = None  # None: on where the runner is on CUDA

    @property
    def batch(self) -> int:
        return len(self.seeds)

    @property
    def names(self) -> list[str]:
        return list(self.inputs)

    @property
    def num_steps(self) -> int:
        """How many steps the loop runs (from the table: DDIM may give one more than asked)."""
        return self.table.num_steps

    def compatible_key(self) -> tuple:
        """Requests with equal keys can share one batched call (serving)."""
        return (tuple(self.inputs), self.sampling, self.return_influence, self.return_intermediates)


def concat_requests(requests) -> Request:
    """One request of all the items of compatible requests (equal `compatible_key`), in order: what a server
    runs as one batch. Each item keeps its own seed, so each keeps its image."""
    reqs = list(requests)
    if not reqs:
        raise ValueError("no requests to concatenate")
    key = reqs[0].compatible_key()
    if any(r.compatible_key() != key for r in reqs[1:]):
        raise ValueError("requests differ in modalities, sampling settings or what they return")
    inputs = {n: torch.cat([r.inputs[n] for r in reqs]) for n in reqs[0].inputs}
    seeds = tuple(s for r in reqs for s in r.seeds)
    first = reqs[0]
    return Request(inputs=inputs, seeds=seeds, sampling=first.sampling, table=first.table,
                   return_influence=first.return_influence, return_intermediates=first.return_intermediates,
                   cuda_graph=first.cuda_graph)


def check_guidance(cfg: ModelConfig, guidance: Mapping[str, float] | None) -> dict[str, float] | None:
    """{modality: scale} with every name a modality of the model and every scale in GUIDANCE_RANGE."""
    if guidance is None:
        return None
    if not isinstance(guidance, Mapping):
        raise InputError(f"guidance {guidance!r}: expected a mapping of modality name to scale, e.g. {{'text': 3}}")
    have = [m.name for m in cfg.modalities]
    out = {}
    for name, scale in guidance.items():
        if name not in have:
            raise InputError(f"guidance: no modality named {name}; this model has {', '.join(have)}")
        out[name] = check_float(scale, f"guidance {name}", *GUIDANCE_RANGE)
    return out or None


def _per_item(value, what: str) -> list | None:
    """A list of per-item values, or a one-item list for a single value (None: not given)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            raise InputError(f"{what}: an empty list; give one value per item or a single value")
        if any(v is None for v in value):
            raise InputError(f"{what}: every item of a batch needs a value (found None); the modalities of a "
                             "batch are the same for every item")
        return list(value)
    return [value]


def _batch_size(lists: Mapping[str, list], seeds: list | None, batch: int | None) -> int:
    sizes = {k: len(v) for k, v in lists.items() if len(v) > 1}
    if seeds is not None and len(seeds) > 1:
        sizes["seed"] = len(seeds)
    if batch is not None:
        batch = check_int(batch, "batch", 1, 1 << 20)
        if seeds is not None and len(seeds) > 1:
            raise InputError("give seed as a list or batch=n with one seed, not both")
        sizes["batch"] = batch
    if len(set(sizes.values())) > 1:
        raise InputError("the per-item lists differ in length: " + ", ".join(f"{k} {n}" for k, n in sizes.items()))
    return next(iter(sizes.values()), 1)


def make_request(cfg: ModelConfig, text=None, mask=None, conditions: Mapping[str, Any] | None = None, seed=0,
                 batch: int | None = None, sampling: Sampling | None = None, return_influence: bool = False,
                 return_intermediates: bool = False, cuda_graph: bool | None = None, **settings) -> Request:
    """The one validation of a generation request (see the module docstring). `text` and `mask` give the
    model's text and mask modality; `conditions` {modality name: value(s)} any modality by name; the
    sampling settings come as `sampling` or as their keywords (steps=, sampler=, eta=, shaping=)."""
    given: dict[str, Any] = {}
    for kind, value in (("text", text), ("mask", mask)):
        if value is None:
            continue
        mods = [m for m in cfg.modalities if m.kind == kind]
        if not mods:
            raise InputError(f"this model has no {kind} modality (it has {', '.join(m.name for m in cfg.modalities)})")
        given[mods[0].name] = value
    for name, value in (conditions or {}).items():
        if name not in {m.name for m in cfg.modalities}:
            raise InputError(f"no modality named {name!r}; this model has {', '.join(m.name for m in cfg.modalities)}")
        if name in given:
            raise InputError(f"modality {name!r} given twice")
        if value is not None:
            given[name] = value
    if not given:
        raise InputError("give at least one condition: " + ", ".join(
            f"{m.name} ({kind_of(m.kind).describe})" for m in cfg.modalities))
    if sampling is not None and settings:
        raise InputError("give the sampling settings as `sampling` or as keywords, not both")
    sampling = (sampling or Sampling.of(**settings)).checked(cfg)
    lists = {name: _per_item(v, name) for name, v in given.items()}
    seeds = _per_item(seed, "seed")
    n = _batch_size(lists, seeds, batch)
    if len(seeds) == 1:
        first = check_seed(seeds[0])
        if first + n - 1 >= SEED_LIMIT:
            raise InputError(f"seed {first} with batch {n}: the last seed passes 2**64 - 1")
        seeds = [first + i for i in range(n)]
    else:
        seeds = [check_seed(s) for s in seeds]
    inputs = {}
    for m in cfg.modalities:  # model order, so contexts line up with the shaping tables
        if m.name in lists:
            values = lists[m.name]
            kind = kind_of(m.kind)
            if len(values) == 1 and n > 1:  # one condition for every item: parsed (files decoded) once
                one = kind.batch(values, m, m.name)
                inputs[m.name] = one.expand(n, *one.shape[1:]).contiguous()
            else:
                inputs[m.name] = kind.batch(values, m, m.name)
    return Request(inputs=inputs, seeds=tuple(seeds), sampling=sampling, table=sampling.table(cfg),
                   return_influence=bool(return_influence), return_intermediates=bool(return_intermediates),
                   cuda_graph=cuda_graph)


def check_memory(cfg: ModelConfig, req: Request, device: torch.device) -> None:
    """Refuse a batch whose estimated working memory exceeds what the device has free (InputError)."""
    need = estimate_bytes(cfg, req.batch, req.num_steps, len(req.inputs), req.return_influence,
                          req.return_intermediates)
    free = _free_bytes(device)
    if free is not None and need > free:
        raise InputError(f"batch {req.batch}: needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on "
                         f"{device}; use a smaller batch")


def estimate_bytes(cfg: ModelConfig, batch: int, num_steps: int, m: int, influence: bool,
                   intermediates: bool = False) -> int:
    """A rough upper estimate of a request's working memory: the all-steps noise and influence, and the
    largest activations of a collaborator and of the VAE decoder (about 8 live fp32 maps of their widest
    level at full resolution; measured peaks of the shipped and official models stay below it)."""
    c, (h, w) = cfg.latent_channels, cfg.latent_size
    hh, ww = cfg.image_size
    unet = max(x.unet.model_channels * max(x.unet.channel_mult) for x in cfg.modalities)
    vae = cfg.autoencoder.ch * max(cfg.autoencoder.ch_mult)
    per_item = 4 * (num_steps * c * h * w + (num_steps * m * h * w if influence else 0)
                    + 8 * unet * h * w + 8 * vae * hh * ww) + (num_steps * hh * ww * 3 if intermediates else 0)
    return batch * per_item


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:  # Linux: what the kernel says can be allocated without swapping
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
