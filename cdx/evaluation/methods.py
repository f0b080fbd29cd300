"""The generation methods compared in the paper's Tables 1 and 2, as one sampling loop with a weights hook.

Every method runs Algorithm 2 on the same x_T, per-step noise and conditions; only the per-pixel weights that
mix the collaborators' eps differ. A hook ``hook(step, eps, influence) -> weights (M, B, 1, h, w)`` chooses them.
``influence()`` runs the dynamic diffusers at this step and returns their softmax weights after the model's
official shaping when it has one (exactly what ``cdx.engine.sampler.sample`` mixes with);
``influence.raw()`` returns the diffusers' softmax weights before shaping, and ``influence(w)`` shapes given
weights with this step's shaping. The loop hands the hook's weights to the fused collaborate op as logits
``log w`` (softmax(log w) = w), so the engine's sampler is not edited and every method uses the same update.

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
from typing import Callable, Sequence

import torch

from ..engine.runner import Runner
from ..engine.sampler import LoopResult, Shaping
from ..engine.schedule import StepTable
from ..kernels import collaborate, combine_weights

Influence = Callable[..., torch.Tensor]  # an _Influence: (), raw(), (weights)
WeightsHook = Callable[[int, torch.Tensor, Influence], torch.Tensor]
_TINY = torch.finfo(torch.float32).tiny


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


class _Influence:
    """The mixing weights of one step: ``()`` the shaped weights of the diffusers, ``raw()`` before shaping,
    ``(w)`` the shaping applied to given weights. The diffusers run at most once per step."""

    def __init__(self, runner, names, contexts, x, t, decay_i, scale, receiver):
        self._args = runner, names, contexts, x, t
        self._shape = decay_i, scale, receiver
        self._logits = None

    def _run(self) -> torch.Tensor:  # (M, B, 1, h, w) the diffusers' logits (zeros for one modality)
        if self._logits is None:
            runner, names, contexts, x, t = self._args
            if len(names) == 1:
                self._logits = torch.zeros((1, x.shape[0], 1, *x.shape[2:]), device=x.device, dtype=torch.float32)
            else:
                self._logits = torch.stack([runner.run(f"{n}_diffuser", {"x": x, "t": t, "context": c})["logits"]
                                            for n, c in zip(names, contexts)])
        return self._logits

    def raw(self) -> torch.Tensor:
        return combine_weights(self._run())

    def __call__(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        # given weights are shaped through their logits log w (softmax(log w) = w)
        logits = self._run() if weights is None else weights.float().clamp_min(_TINY).log()
        decay_i, scale, receiver = self._shape
        if logits.shape[0] == 1:
            return torch.ones_like(logits, dtype=torch.float32)
        return combine_weights(logits, decay_i, scale, receiver)


def sample_with(
    runner: Runner,
    names: Sequence[str],
    contexts: Sequence[torch.Tensor],
    x_T: torch.Tensor,
    noise: torch.Tensor,
    table: StepTable,
    hook: WeightsHook,
    shaping: Shaping | None = None,
    return_influence: bool = False,
) -> LoopResult:
    """Algorithm 2 with the mixing weights chosen by ``hook``; the rest is ``cdx.engine.sampler.sample``."""
    dev = runner.device
    coeffs = torch.from_numpy(table.coeffs).to(dev)
    ts = torch.from_numpy(table.timesteps).to(dev)
    decay = torch.from_numpy(shaping.decay).to(dev) if shaping else None
    scale = torch.from_numpy(shaping.scale).to(dev) if shaping else None
    x, noise = x_T.to(dev), noise.to(dev)
    contexts = [c.to(dev) for c in contexts]
    b, influence = x.shape[0], []
    for i in range(table.num_steps):
        t = ts[i].expand(b)
        eps = torch.stack([runner.run(f"{n}_unet", {"x": x, "t": t, "context": c})["eps"]
                           for n, c in zip(names, contexts)])  # (M, B, C, h, w)

        influence_i = _Influence(runner, names, contexts, x, t, decay[i] if decay is not None else None, scale,
                                 shaping.receiver if shaping else -1)
        w = hook(i, eps, influence_i)
        logits = w.float().clamp_min(_TINY).log().to(eps.dtype).contiguous()  # softmax(log w) = w
        out = collaborate(eps, logits, x, noise[i], coeffs, i, return_weights=return_influence)
        x = out[1]
        if return_influence:
            influence.append(out[2])
    return LoopResult(z0=x, influence=torch.stack(influence) if return_influence else None)


def run_method(method: str | Method, runner: Runner, modalities: dict[str, tuple[str, torch.Tensor]],
               x_T: torch.Tensor, noise: torch.Tensor, table: StepTable, shaping_for=None,
               return_influence: bool = False) -> tuple[LoopResult, list[str]]:
    """Run one method. ``modalities`` maps a kind ("mask", "text") to (modality name, context) in model order;
    ``shaping_for(names)`` gives the official shaping of a modality list (None: no shaping)."""
    m = method_named(method) if isinstance(method, str) else method
    missing = [k for k in m.kinds if k not in modalities]
    if missing:
        raise ValueError(f"method {m.name} needs the {', '.join(missing)} modality, which this model lacks")
    chosen = [v for k, v in modalities.items() if k in m.kinds]
    names, contexts = [n for n, _ in chosen], [c for _, c in chosen]
    shaping = shaping_for(names) if shaping_for is not None and m.name != "composable" else None
    loop = sample_with(runner, names, contexts, x_T, noise, table, m.make_hook(), shaping, return_influence)
    return loop, names
