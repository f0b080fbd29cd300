"""Feature caching (DeepCache, Ma et al., CVPR 2024) on a collaborator UNet: a "full" call that also returns
the deep features entering the shallow end of the decoder (the cache), and a "shallow" call that recomputes
only the first `branch + 1` encoder blocks and the last `branch + 1` decoder blocks around a given cache.

    full:     (x, t, context)        -> (eps, cache)   the whole UNet; cache = h before output block -(branch+1)
    shallow:  (x, t, context, cache) -> eps            input blocks [0, branch], output blocks [-(branch+1):]

The decoder's last `branch + 1` blocks take exactly the skips of the first `branch + 1` encoder blocks, so the
shallow path needs nothing else. A guided collaborator (cdx.models.guidance) runs both halves on its
[cond; null] batch; its cache is (2B, C, h, w) regrouped as (B, 2C, h, w), so every tensor keeps the batch
axis first. FreeU's hooks sit on the output blocks and so hold in both paths. With the same x, t and
context, shallow(x, t, c, full(x, t, c)[1]) is the full call's eps exactly."""
from __future__ import annotations

import torch
from torch import nn

from .guidance import GuidedUNet
from .unet import UNet, UNetConfig, timestep_embedding


# The skip branch cdx caches at: the shallow path is the first resolution level's two encoder blocks and
# two decoder blocks (about 5 % of the shipped model's collaborator; docs/fast-sampling.md)
BRANCH = 1


def cache_shape(cfg: UNetConfig, branch: int, latent: tuple[int, int]) -> tuple[int, int, int]:
    """(C, h, w) of the cache of a UNet of `cfg` at `branch` for latents of size `latent`."""
    n = len(cfg.channel_mult) * (cfg.num_res_blocks + 1)  # its output blocks
    if not 0 <= branch < n - 1:
        raise ValueError(f"feature cache branch {branch}: must be in 0..{n - 2} for this UNet")
    ch, ds = cfg.model_channels * cfg.channel_mult[-1], 2 ** (len(cfg.channel_mult) - 1)
    k = 0
    for level, mult in list(enumerate(cfg.channel_mult))[::-1]:  # the decoder, as UNet builds it
        for i in range(cfg.num_res_blocks + 1):
            if k == n - branch - 1:
                return ch, latent[0] // ds, latent[1] // ds
            ch = cfg.model_channels * mult
            if level and i == cfg.num_res_blocks:
                ds //= 2
            k += 1
    raise AssertionError("unreachable")


def split_forward(unet: UNet, x, t, context, branch: int, cache=None):
    """(eps, cache) of the full UNet when `cache` is None, else eps of the shallow path around `cache`."""
    emb = unet.time_embed(timestep_embedding(t, unet.cfg.model_channels).to(x.dtype))
    n = len(unet.output_blocks)
    hs, h = [], x
    for block in unet.input_blocks[:branch + 1]:
        h = block(h, emb, context)
        hs.append(h)
    if cache is None:
        for block in unet.input_blocks[branch + 1:]:
            h = block(h, emb, context)
            hs.append(h)
        h = unet.middle_block(h, emb, context)
        for block in unet.output_blocks[:n - branch - 1]:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        cache = h
    h = cache
    for block in unet.output_blocks[n - branch - 1:]:
        h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
    return unet.out(h), cache


class _Split(nn.Module):
    def __init__(self, net: nn.Module, branch: int):
        super().__init__()
        self.net, self.branch = net, int(branch)
        self.guided = isinstance(net, GuidedUNet)
        self.unet = net.unet if self.guided else net

    def _inputs(self, x, t, context):
        if not self.guided:
            return x, t, context
        null = self.net.null.to(context.dtype).expand(context.shape[0], -1, -1)
        return torch.cat([x, x]), torch.cat([t, t]), torch.cat([context, null])

    def _eps(self, eps):
        if not self.guided:
            return eps
        cond, uncond = eps.chunk(2)
        return uncond + self.net.scale * (cond - uncond)


class CachingUNet(_Split):
    """The full call: (x, t, context) -> (eps, cache (B, C', h', w'))."""

    def forward(self, x, t, context):
        eps, cache = split_forward(self.unet, *self._inputs(x, t, context), self.branch)
        if self.guided:  # (2B, C, h, w) -> (B, 2C, h, w): cond and null caches side by side
            cache = torch.cat(cache.chunk(2), dim=1)
        return self._eps(eps), cache


class ShallowUNet(_Split):
    """The shallow call: (x, t, context, cache) -> eps."""

    def forward(self, x, t, context, cache):
        if self.guided:
            cache = torch.cat(cache.chunk(2, dim=1))  # (B, 2C, h, w) -> (2B, C, h, w)
        eps, _ = split_forward(self.unet, *self._inputs(x, t, context), self.branch, cache.to(x.dtype))
        # a shallow path without attention does not read the context: an empty slice's sum (exactly 0) keeps it
        # an input of the exported graph, which must have the spec's inputs
        return self._eps(eps) + context.flatten(1)[:, :0].sum(1).view(-1, 1, 1, 1).to(eps.dtype)
