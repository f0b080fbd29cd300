"""Two UNets of one architecture as one network: the text and mask collaborators in a single call.

At every step both collaborators see the same x_t and t, so their 2 x ~20 convolutions, GEMMs and
attentions can run as half as many launches of twice the work: a GPU at batch 1-4 is launch- and
occupancy-bound on official-256's 32x32 and 16x16 levels. The pairing is exact (the same maths per UNet,
up to summation order inside a kernel):

    activations  (B, 2C, H, W): UNet a's channels, then UNet b's
    convolution  weights stacked on the output channels; groups=2 (the first conv, whose input x_t both
                 share, takes the plain input with groups=1)
    GroupNorm    2G groups over 2C channels: every group stays inside one UNet's channels
    tokens       (2, B*H*W, I) in the transformers: a Linear is one batched GEMM (baddbmm over the pair),
                 a LayerNorm normalises then applies each UNet's affine map
    attention    the pair folded into the batch, (2B, heads, N, d), one SDPA call; cross-attention keys
                 and values come from each UNet's own context (their widths may differ), one SDPA call
                 when the two contexts have the same length, one per UNet otherwise

`PairedUNet(a, b)` copies the two modules' weights (the originals stay as they are) and refuses UNets whose
configurations differ in anything but the context width. `forward(x, t, context_a, context_b)` returns the
two eps stacked, (2, B, C_out, H, W).
"""
from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .unet import (BasicTransformerBlock, CrossAttention, Downsample, ResBlock, SpatialTransformer, UNet, Upsample,
                   timestep_embedding)


def pairable(a: UNet, b: UNet) -> str | None:
    """None when the two UNets can be paired, else why not."""
    ca, cb = dataclasses.replace(a.cfg, context_dim=0), dataclasses.replace(b.cfg, context_dim=0)
    if ca != cb:
        diff = [f.name for f in dataclasses.fields(ca) if getattr(ca, f.name) != getattr(cb, f.name)]
        return f"their configurations differ in {', '.join(diff)}"
    return None


class PairConv(nn.Module):
    """Two Conv2d of one shape as one: (B, 2Cin, H, W) -> (B, 2Cout, H', W'), or a shared (B, Cin, H, W) input."""

    def __init__(self, a: nn.Conv2d, b: nn.Conv2d, shared_input: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.cat([a.weight, b.weight]).detach().clone())
        self.bias = nn.Parameter(torch.cat([a.bias, b.bias]).detach().clone()) if a.bias is not None else None
        self.stride, self.padding, self.groups = a.stride, a.padding, 1 if shared_input else 2

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.groups)


class PairLinear(nn.Module):
    """Two Linear of one shape as one batched GEMM over (2, M, In) -> (2, M, Out)."""

    def __init__(self, a: nn.Linear, b: nn.Linear):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([a.weight.t(), b.weight.t()]).detach().contiguous())  # (2, In, Out)
        self.bias = nn.Parameter(torch.stack([a.bias, b.bias])[:, None].detach().clone()) \
            if a.bias is not None else None

    def forward(self, x):
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias, x, self.weight)


class PairEmbLinear(PairLinear):
    """PairLinear on the timestep embedding's (B, 2E) layout: (B, 2E) -> (B, 2C)."""

    def forward(self, x):
        b = x.shape[0]
        out = super().forward(x.reshape(b, 2, -1).transpose(0, 1))  # (2, B, C)
        return out.transpose(0, 1).reshape(b, -1)


class PairLayerNorm(nn.Module):
    def __init__(self, a: nn.LayerNorm, b: nn.LayerNorm):
        super().__init__()
        self.shape, self.eps = a.normalized_shape, a.eps
        self.weight = nn.Parameter(torch.stack([a.weight, b.weight])[:, None].detach().clone())  # (2, 1, C)
        self.bias = nn.Parameter(torch.stack([a.bias, b.bias])[:, None].detach().clone())

    def forward(self, x):  # (2, M, C)
        return torch.addcmul(self.bias, F.layer_norm(x, self.shape, eps=self.eps), self.weight)


def pair_group_norm(a: nn.GroupNorm, b: nn.GroupNorm) -> nn.GroupNorm:
    """One GroupNorm (of a's class: GroupNorm32 keeps normalising in fp32) with twice the groups and channels."""
    norm = copy.deepcopy(a)
    norm.num_groups, norm.num_channels = 2 * a.num_groups, 2 * a.num_channels
    norm.weight = nn.Parameter(torch.cat([a.weight, b.weight]).detach().clone())
    norm.bias = nn.Parameter(torch.cat([a.bias, b.bias]).detach().clone())
    return norm


class PairAttention(nn.Module):
    """Two CrossAttention of one shape, heads folded into a (2B) batch for one SDPA call."""

    def __init__(self, a: CrossAttention, b: CrossAttention, cross: bool):
        super().__init__()
        self.heads, self.scale, self.cross = a.heads, a.scale, cross
        self.to_q, self.to_out = PairLinear(a.to_q, b.to_q), PairLinear(a.to_out[0], b.to_out[0])
        if cross:  # each UNet's keys and values from its own context (their widths may differ)
            self.to_k = copy.deepcopy(nn.ModuleList([a.to_k, b.to_k]))
            self.to_v = copy.deepcopy(nn.ModuleList([a.to_v, b.to_v]))
        else:
            self.to_k, self.to_v = PairLinear(a.to_k, b.to_k), PairLinear(a.to_v, b.to_v)

    def _heads(self, t: torch.Tensor, batch: int) -> torch.Tensor:  # (2, B*L, h*d) -> (2B, h, L, d)
        return t.reshape(2 * batch, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2)

    def forward(self, x, batch: int, contexts=None):  # x (2, B*N, I)
        q = self._heads(self.to_q(x), batch)
        if not self.cross:
            out = F.scaled_dot_product_attention(q, self._heads(self.to_k(x), batch), self._heads(self.to_v(x), batch),
                                                 scale=self.scale)
        else:
            ks = [self._kv(self.to_k[i], c) for i, c in enumerate(contexts)]
            vs = [self._kv(self.to_v[i], c) for i, c in enumerate(contexts)]
            if ks[0].shape == ks[1].shape:
                out = F.scaled_dot_product_attention(q, torch.cat(ks), torch.cat(vs), scale=self.scale)
            else:
                out = torch.cat([F.scaled_dot_product_attention(q[i * batch:(i + 1) * batch], ks[i], vs[i],
                                                                scale=self.scale) for i in range(2)])
        out = out.transpose(1, 2).reshape(2, -1, q.shape[1] * q.shape[3])  # (2B, h, N, d) -> (2, B*N, h*d)
        return self.to_out(out)

    def _kv(self, linear: nn.Linear, context: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, h, L, d)
        t = linear(context)
        return t.reshape(t.shape[0], t.shape[1], self.heads, -1).transpose(1, 2)


class PairTransformerBlock(nn.Module):
    def __init__(self, a: BasicTransformerBlock, b: BasicTransformerBlock):
        super().__init__()
        self.attn1, self.attn2 = PairAttention(a.attn1, b.attn1, False), PairAttention(a.attn2, b.attn2, True)
        self.norm1, self.norm2, self.norm3 = (PairLayerNorm(x, y) for x, y in
                                              ((a.norm1, b.norm1), (a.norm2, b.norm2), (a.norm3, b.norm3)))
        self.geglu = PairLinear(a.ff.net[0].proj, b.ff.net[0].proj)
        self.ff_out = PairLinear(a.ff.net[2], b.ff.net[2])

    def forward(self, x, batch: int, contexts):
        x = self.attn1(self.norm1(x), batch) + x
        x = self.attn2(self.norm2(x), batch, contexts) + x
        h, gate = self.geglu(self.norm3(x)).chunk(2, dim=-1)
        return self.ff_out(h * F.gelu(gate)) + x


class PairSpatialTransformer(SpatialTransformer):  # a SpatialTransformer to TimestepSequential's routing
    def __init__(self, a: SpatialTransformer, b: SpatialTransformer):
        nn.Module.__init__(self)
        self.norm = pair_group_norm(a.norm, b.norm)
        self.proj_in, self.proj_out = PairConv(a.proj_in, b.proj_in), PairConv(a.proj_out, b.proj_out)
        self.transformer_blocks = nn.ModuleList(PairTransformerBlock(x, y) for x, y in
                                                zip(a.transformer_blocks, b.transformer_blocks))

    def forward(self, x, contexts):
        b, _, hh, ww = x.shape
        h = self.proj_in(self.norm(x))
        h = h.reshape(b, 2, -1, hh * ww).permute(1, 0, 3, 2).reshape(2, b * hh * ww, -1)  # -> (2, B*HW, I)
        for block in self.transformer_blocks:
            h = block(h, b, contexts)
        h = h.reshape(2, b, hh * ww, -1).permute(1, 0, 3, 2).reshape(b, -1, hh, ww)  # -> (B, 2I, H, W)
        return self.proj_out(h) + x


def pair_module(a: nn.Module, b: nn.Module) -> nn.Module:
    """The paired counterpart of one UNet layer (recursively)."""
    if type(a) is not type(b):
        raise ValueError(f"cannot pair a {type(a).__name__} with a {type(b).__name__}")
    if isinstance(a, nn.Conv2d):
        return PairConv(a, b)
    if isinstance(a, nn.GroupNorm):
        return pair_group_norm(a, b)
    if isinstance(a, (nn.SiLU, nn.Identity, nn.Dropout)):
        return copy.deepcopy(a)
    if isinstance(a, SpatialTransformer):
        return PairSpatialTransformer(a, b)
    if isinstance(a, ResBlock):
        block = copy.copy(a)  # the same forward over paired layers
        block._modules = {"in_layers": pair_module(a.in_layers, b.in_layers),
                          "emb_layers": nn.Sequential(nn.SiLU(), PairEmbLinear(a.emb_layers[1], b.emb_layers[1])),
                          "out_layers": pair_module(a.out_layers, b.out_layers),
                          "skip_connection": pair_module(a.skip_connection, b.skip_connection)}
        return block
    if isinstance(a, (Downsample, Upsample)):
        layer = copy.copy(a)
        layer._modules = {k: pair_module(v, b._modules[k]) for k, v in a._modules.items()}
        return layer
    if isinstance(a, nn.Sequential):  # TimestepSequential stays one: it routes by layer type
        seq = copy.copy(a)
        seq._modules = {k: pair_module(v, b._modules[k]) for k, v in a._modules.items()}
        return seq
    raise ValueError(f"no paired form of {type(a).__name__}")


class PairedUNet(nn.Module):
    """UNets a and b (one architecture, contexts of any width) run as one network."""

    def __init__(self, a: UNet, b: UNet):
        super().__init__()
        why = pairable(a, b)
        if why is not None:
            raise ValueError(f"the two UNets cannot run as one call: {why}")
        self.cfg = a.cfg
        ta, tb = a.time_embed, b.time_embed
        w = ta[0].weight
        self.time_in = nn.Linear(w.shape[1], 2 * w.shape[0], device=w.device, dtype=w.dtype)  # one shared input
        with torch.no_grad():
            self.time_in.weight.copy_(torch.cat([ta[0].weight, tb[0].weight]))
            self.time_in.bias.copy_(torch.cat([ta[0].bias, tb[0].bias]))
        self.time_out = PairEmbLinear(ta[2], tb[2])
        first_a, first_b = a.input_blocks[0][0], b.input_blocks[0][0]
        self.conv_in = PairConv(first_a, first_b, shared_input=True)  # both read the same x_t
        self.input_blocks = nn.ModuleList(pair_module(x, y) for x, y in zip(a.input_blocks[1:], b.input_blocks[1:]))
        self.middle_block = pair_module(a.middle_block, b.middle_block)
        self.output_blocks = nn.ModuleList(pair_module(x, y) for x, y in zip(a.output_blocks, b.output_blocks))
        self.out = pair_module(a.out, b.out)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context_a: torch.Tensor, context_b: torch.Tensor):
        """x (B, in, h, w), t (B,), contexts (B, L_a, D_a) and (B, L_b, D_b) -> eps (2, B, out, h, w)."""
        contexts = (context_a, context_b)
        emb = self.time_out(F.silu(self.time_in(timestep_embedding(t, self.cfg.model_channels).to(x.dtype))))
        h = self.conv_in(x)
        hs = [h]
        for block in self.input_blocks:
            h = block(h, emb, contexts)
            hs.append(h)
        h = self.middle_block(h, emb, contexts)
        for block in self.output_blocks:
            h = block(concat_pairs(h, hs.pop()), emb, contexts)
        out = self.out(h)
        return out.reshape(out.shape[0], 2, -1, *out.shape[2:]).transpose(0, 1)


def concat_pairs(h: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """The UNet's skip concatenation per half: [h_a, skip_a, h_b, skip_b] on the channels."""
    b, _, hh, ww = h.shape
    return torch.cat([h.reshape(b, 2, -1, hh, ww), skip.reshape(b, 2, -1, hh, ww)], dim=2).reshape(b, -1, hh, ww)

