"""One collaborative step, the body of the paper's Algorithm 2, shared by every loop.

At (x_t, t) each collaborator m predicts eps_m and each dynamic diffuser an influence logit map; the
fused op (`cdx.kernels.collaborate`) turns the logits into per-pixel softmax weights (with the
official shaping's row for this step), mixes the eps and applies the sampler update with the step's
table row. The plain loop (`sampler.sample`), the CUDA-graph loop (`cuda_graph.GraphedLoop`, which
captures this same code) and every `cdx eval` method (a *weighting* of this step) call it.

The step writes the networks' outputs into two stacks it is given, eps (M, B, C, h, w) and logits
(M, B, 1, h, w): static buffers under a CUDA graph, buffers made once per request otherwise. With
streams, the 2M independent networks are spread over them (CUDA only).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..kernels import collaborate, combine_weights

_TINY = torch.finfo(torch.float32).tiny
Launch = Callable[[str, dict], dict]  # (network, inputs) -> outputs: a runner's run or enqueue


class StepInfluence:
    """The mixing weights of one step, for a weighting: ``()`` the diffusers' weights after the step's
    shaping, ``raw()`` before it, ``(w)`` the shaping applied to given weights ``w``. The diffusers run
    at most once per step, and only when asked."""

    def __init__(self, step: "CollaborativeStep", x, t, decay_i, scale, receiver):
        self._step, self._x, self._t = step, x, t
        self._shape = decay_i, scale, receiver
        self._ran = False

    def _logits(self) -> torch.Tensor:  # (M, B, 1, h, w); zeros for one modality
        if not self._ran:
            self._step.diffusers(self._x, self._t)
            self._ran = True
        return self._step.logits

    def raw(self) -> torch.Tensor:
        return combine_weights(self._logits())

    def __call__(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        # given weights are shaped through their logits log w (softmax(log w) = w)
        logits = self._logits() if weights is None else weights.float().clamp_min(_TINY).log()
        if logits.shape[0] == 1:
            return torch.ones_like(logits, dtype=torch.float32)
        decay_i, scale, receiver = self._shape
        return combine_weights(logits, decay_i, scale, receiver)


# A weighting chooses the step's final per-pixel weights (M, B, 1, h, w) from the step index, the stacked
# eps and the step's influence; None is the paper's method (the diffusers' logits under the shaping).
Weighting = Callable[[int, torch.Tensor, StepInfluence], torch.Tensor]


class CollaborativeStep:
    """Algorithm 2's loop body over M modalities: `launch` runs a network, `contexts` are their conditions.

    `pairs` (optional) maps a part ("unet", "diffuser") to one call that runs that part of every modality,
    (x, t, contexts) -> the stacked outputs (M, B, ., h, w); a runner offers them as `pair_calls(names)`
    (CudaTorchRunner(pair_unets=True))."""

    def __init__(self, launch: Launch, names: Sequence[str], contexts: Sequence[torch.Tensor],
                 eps: torch.Tensor, logits: torch.Tensor, streams: Sequence = (), combine: Callable | None = None,
                 pairs: dict[str, Callable] | None = None):
        self.launch, self.names, self.contexts = launch, tuple(names), list(contexts)
        self.eps, self.logits = eps, logits  # (M, B, C, h, w), (M, B, 1, h, w): written by the networks
        self.streams, self.combine, self.pairs = list(streams), combine or collaborate, dict(pairs or {})
        self.skipped = 0  # collaborator calls influence gating saved (`gated`)
        # feature caching (cdx.models.deepcache): with an interval K > 1 the collaborators run as
        # {m}_unet_full (eps and the deep features) when `refresh` is set, else {m}_unet_shallow around them
        self.cache_interval, self.refresh, self.caches = 1, True, [None] * len(self.names)
        # influence reuse: the diffusers run only when this is set; otherwise the logits stack keeps the last
        # maps (their shaping is still this step's)
        self.influence_refresh = True

    @classmethod
    def plain(cls, launch: Launch, names, contexts, x: torch.Tensor, eps_dtype=torch.float32,
              logits_dtype=torch.float32) -> "CollaborativeStep":
        """A step with its stacks allocated for x (B, C, h, w); logits stay 0 for a single modality."""
        m = len(names)
        eps = torch.empty((m, *x.shape), dtype=eps_dtype, device=x.device)
        logits = torch.zeros((m, x.shape[0], 1, *x.shape[2:]), dtype=logits_dtype, device=x.device)
        return cls(launch, names, contexts, eps, logits)

    def _jobs(self, part: str, key: str, dest: torch.Tensor):
        """(run(x, t) -> outputs, the stack slot they go to) per call of this part."""
        if part in self.pairs:
            return [(lambda x, t: self.pairs[part](x, t, self.contexts), dest)]  # one call, the whole stack
        if part == "unet" and self.cache_interval > 1:
            return [(lambda x, t, j=j: self._cached_unet(j, x, t), dest[j]) for j in range(len(self.names))]
        return [(lambda x, t, n=n, c=c: self.launch(f"{n}_{part}", {"x": x, "t": t, "context": c})[key], dest[j])
                for j, (n, c) in enumerate(zip(self.names, self.contexts))]

    def _cached_unet(self, j: int, x, t) -> torch.Tensor:
        """Collaborator j with feature caching: the full call keeps its deep features, the shallow one uses them."""
        name, inputs = self.names[j], {"x": x, "t": t, "context": self.contexts[j]}
        if self.refresh or self.caches[j] is None:
            out = self.launch(f"{name}_unet_full", inputs)
            self.caches[j] = out["cache"]
            return out["eps"]
        return self.launch(f"{name}_unet_shallow", {**inputs, "cache": self.caches[j]})["eps"]

    def _run_all(self, jobs, x, t) -> None:
        if not self.streams:
            for run, dest in jobs:
                dest.copy_(run(x, t))
            return
        main = torch.cuda.current_stream(x.device)
        for s in self.streams:
            s.wait_stream(main)
        for k, (run, dest) in enumerate(jobs):
            with torch.cuda.stream(self.streams[k % len(self.streams)]):
                dest.copy_(run(x, t))
        for s in self.streams:
            main.wait_stream(s)

    def collaborators(self, x, t) -> None:
        """eps_m(x, t, c_m) of every modality into the eps stack."""
        self._run_all(self._jobs("unet", "eps", self.eps), x, t)

    def diffusers(self, x, t) -> None:
        """D_m(x, t, c_m) of every modality into the logits stack (nothing to do for one modality, nor when the
        step reuses the last maps: `influence_refresh` unset)."""
        if len(self.names) > 1 and self.influence_refresh:
            self._run_all(self._jobs("diffuser", "logits", self.logits), x, t)

    def networks(self, x, t) -> None:
        """All 2M networks at once (spread over the streams together)."""
        jobs = self._jobs("unet", "eps", self.eps)
        if len(self.names) > 1 and self.influence_refresh:
            jobs += self._jobs("diffuser", "logits", self.logits)
        self._run_all(jobs, x, t)

    def gated(self, x, t, noise_i, coeffs, step, decay, scale, receiver, threshold: float,
              return_weights: bool = False, out=None):
        """Influence gating: the diffusers run first; a collaborator whose weight after the step's shaping is
        below `threshold` at every pixel of every item skips its UNet, and the others' weights are divided by
        their sum, so they sum to 1 again. The final weights go to the fused op as logits log w, unshaped.
        The decision is read on the host, so a gated step is not graph-capturable."""
        i, m = int(step), len(self.names)
        self.diffusers(x, t)
        w = combine_weights(self.logits, decay[i] if decay is not None else None, scale, receiver)
        keep = (w.flatten(1).amax(1) >= threshold).tolist()  # (M,): does m count anywhere?
        if all(keep) or not any(keep):
            keep = [True] * m
        else:
            w = w * torch.tensor(keep, dtype=w.dtype, device=w.device).view(m, 1, 1, 1, 1)
            w = w / w.sum(0, keepdim=True)  # (M, B, 1, h, w): the kept weights renormalised
        jobs = self._jobs("unet", "eps", self.eps)
        self._run_all([job for job, k in zip(jobs, keep) if k], x, t)
        for j, k in enumerate(keep):
            if not k:
                self.eps[j].zero_()  # weight exactly 0: nothing stale can leak into the mix
        self.skipped += keep.count(False)
        logits = w.float().clamp_min(_TINY).log().to(self.eps.dtype).contiguous()
        return self.combine(self.eps, logits, x, noise_i, coeffs, step, return_weights=return_weights, out=out)

    def __call__(self, x, t, noise_i, coeffs, step, decay=None, scale=None, receiver=-1,
                 weighting: Weighting | None = None, return_weights: bool = False, out=None):
        """x_prev (and the mixed eps, and the weights when asked) from x at step `step` of the table `coeffs`.

        Without a weighting, the diffusers' logits go to the fused op with the shaping (decay (N, M) or the
        step's row, scale (M,), receiver). A weighting's final weights w go to it as logits log w, unshaped:
        softmax(log w) = w. `step` may be a 0-d device tensor (graph capture) unless a weighting is given."""
        if weighting is None:
            self.networks(x, t)
            return self.combine(self.eps, self.logits, x, noise_i, coeffs, step, decay=decay, scale=scale,
                                receiver=receiver, return_weights=return_weights, out=out)
        self.collaborators(x, t)
        i = int(step)
        influence = StepInfluence(self, x, t, decay[i] if decay is not None else None, scale, receiver)
        w = weighting(i, self.eps, influence)
        logits = w.float().clamp_min(_TINY).log().to(self.eps.dtype).contiguous()
        return self.combine(self.eps, logits, x, noise_i, coeffs, step, return_weights=return_weights, out=out)
