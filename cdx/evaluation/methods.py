"""The generation methods compared in the paper's Tables 1 and 2, as weightings of the one collaborative step.

Every method runs Algorithm 2 (``cdx.sampling.pipeline.loop``) on the same x_T, per-step noise and conditions;
only the per-pixel weights that mix the collaborators' eps differ. A weighting
``hook(step, eps, influence) -> weights (M, B, 1, h, w)`` chooses them (``cdx.sampling.step``):
``influence()`` runs the dynamic diffusers at this step and returns their softmax weights after the model's
official shaping when it has one; ``influence.raw()`` returns them before shaping, and ``influence(w)`` shapes
given weights with this step's shaping. The step hands the weights to the fused collaborate op as logits
``log w`` (softmax(log w) = w), so every method uses the same update.

    collaborative  the dynamic diffusers' weights at every step and pixel (the paper's method)
    composable     equal weights 1/M (Composable Diffusion's plain average of the eps; diffusers unused)
    no_spatial     each step's weights replaced by their spatial mean (per image and modality)
    no_temporal    the diffusers run once, at the first step (t = T's first DDIM timestep, on x_T); their
                   weights are reused at every step, under that step's shaping like every other method: the
                   influence depends on the conditions but the diffusers' output not on t
    text_only      the text collaborator alone
    mask_only      the mask collaborator alone

Also selectable by name (not in "all"):

    no_temporal_frozen  the first step's weights *after* its shaping reused at every step: the shaping's own
                        schedule is frozen as well (cdx's no_temporal before 2026-11-27)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..models.config import ModelConfig
from ..models.schedule import StepTable
from ..sampling.loop import LoopResult
from ..sampling.pipeline import loop, loop_inputs
from ..sampling.runner import Runner
from ..sampling.step import Weighting as WeightsHook


def _collaborative() -> WeightsHook:
    return lambda i, eps, influence: influence()


def _composable() -> WeightsHook:
    return lambda i, eps, influence: torch.full_like(eps[:, :, :1], 1.0 / eps.shape[0], dtype=torch.float32)


def _no_spatial() -> WeightsHook:
    return lambda i, eps, influence: influence().mean((-2, -1), keepdim=True).expand(*eps.shape[:2], 1,
                                                                                      *eps.shape[-2:])


def _no_temporal() -> WeightsHook:
    first: list[torch.Tensor] = []  # the diffusers' unshaped weights of step 0, kept for this one generation

    def hook(i, eps, influence):
        if not first:
            first.append(influence.raw())
        return influence(first[0])

    return hook


def _no_temporal_frozen() -> WeightsHook:
    first: list[torch.Tensor] = []  # the shaped weights of step 0

    def hook(i, eps, influence):
        if not first:
            first.append(influence())
        return first[0]

    return hook


@dataclass(frozen=True)
class Method:
    name: str
    kinds: tuple[str, ...]  # modality kinds it conditions on
    make_hook: Callable[[], WeightsHook]  # a fresh hook per generation (no_temporal keeps state)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("collaborative", ("mask", "text"), _collaborative),
    Method("composable", ("mask", "text"), _composable),
    Method("no_spatial", ("mask", "text"), _no_spatial),
    Method("no_temporal", ("mask", "text"), _no_temporal),
    Method("text_only", ("text",), _collaborative),
    Method("mask_only", ("mask",), _collaborative),
)}
EXTRA_METHODS: dict[str, Method] = {m.name: m for m in (
    Method("no_temporal_frozen", ("mask", "text"), _no_temporal_frozen),
)}


def method_named(name: str) -> Method:
    """A method of :data:`METHODS` or :data:`EXTRA_METHODS` by name (KeyError if neither has it)."""
    return METHODS[name] if name in METHODS else EXTRA_METHODS[name]


def run_method(method: str | Method, runner: Runner, modalities: dict[str, tuple[str, torch.Tensor]],
               x_T: torch.Tensor, noise: torch.Tensor, table: StepTable, cfg: ModelConfig | None = None,
               return_influence: bool = False, gate: float = 0.0, cache_interval: int = 1,
               influence_interval: int = 1) -> tuple[LoopResult, list[str]]:
    """Run one method. ``modalities`` maps a kind ("mask", "text") to (modality name, context) in model order;
    `cfg` gives the official shaping (None: no shaping; composable never has it); `gate` > 0 runs
    `collaborative` with influence gating (the other methods choose their own weights); `cache_interval` > 1
    runs every method with feature caching (the runner needs the feature-cache networks)."""
    m = method_named(method) if isinstance(method, str) else method
    missing = [k for k in m.kinds if k not in modalities]
    if missing:
        raise ValueError(f"method {m.name} needs the {', '.join(missing)} modality, which this model lacks")
    chosen = [v for k, v in modalities.items() if k in m.kinds]
    names, contexts = [n for n, _ in chosen], [c for _, c in chosen]
    li = loop_inputs(cfg if m.name != "composable" else None, table, names, contexts, (x_T, noise))
    if m.name == "collaborative" and gate > 0:  # the diffusers' shaped weights, gated: the plain step's own
        return loop(runner, li, return_influence, cuda_graph=False, gate=gate, cache_interval=cache_interval,
                    influence_interval=influence_interval), names
    return loop(runner, li, return_influence, weighting=m.make_hook(), cache_interval=cache_interval,
                influence_interval=influence_interval), names
