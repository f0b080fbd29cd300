"""The fast torch path for CUDA: UNets, diffusers and the VAE in fp16 (or bf16), attention through
`F.scaled_dot_product_attention` with each module's own scale, optional channels-last weights, and an
`enqueue` on a chosen stream (what `cdx.sampling.graph` captures, spread over streams).

The reference modules are not edited: attention is swapped by overriding one hook (`forward`) in a
subclass, only in the model handed to `CudaTorchRunner`, so the default CPU path keeps its numerics.
As in the official fp16 conversion, the UNets' GroupNorm32 layers keep fp32 parameters (they
normalise in fp32 and cast back). Encoders stay fp32: they run once per request.

`pad_heads=8` zero-pads every attention head of the UNets and diffusers to a multiple of 8 (at least 16;
`cdx.export.head_pad`, exact) before SDPA sees them: the official heads are 12/18/30 channels wide (2/3/5
in the diffusers), below what SDPA's fused flash and memory-efficient kernels take, so unpadded they fall
back to the math kernel. Off by default until measured on a GPU (`cdx bench --variants` has the variant).

`fuse_norm_silu=True` runs every GroupNorm32 -> SiLU pair of the UNets and diffusers (both halves of each
ResBlock, the output head) as one Triton kernel (`cdx.kernels.group_norm_silu`) instead of four fp16/fp32
passes. Off by default until measured on a GPU; inductor fuses the pattern itself.

`pair_unets=True` also builds the two collaborators as one `PairedUNet` (and the two diffusers as another:
official-256's text and mask networks share one architecture), so a CUDA-graph step runs 2 calls instead
of 4 (`pair_calls`); the single networks stay for everything else. Off by default until measured.

Channels-last is off by default: torch's CUDA GroupNorm takes NCHW only, and nearly every UNet
convolution follows a GroupNorm, so NHWC weights would add two layout copies per convolution;
`cdx bench --variants` measures both. The same code runs on CPU tensors, for the tests.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ...kernels.group_norm_silu import group_norm_silu
from ...models.autoencoder import AttnBlock
from ...models.collab import CollaborativeModel
from ...models.unet import CrossAttention, GroupNorm32
from .eager import TorchRunner

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Streams per step by default: 4 measured fastest on an H200 (official-256, batch 4, 50 steps, fp16, fused
# kernel, per-step graph: 966 ms against 1438 ms on one stream; benchmarks/results/2026-11-26-nvidia-h200.json).
STREAMS = 4


class SdpaCrossAttention(CrossAttention):
    """CrossAttention as one fused `scaled_dot_product_attention` call with the explicit scale d^-0.5."""

    def forward(self, x, context=None):
        context = x if context is None else context
        b, n, _ = x.shape
        h = self.heads
        # (B, L, h*d) -> (B, h, L, d): a view, the last dimension stays contiguous
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        # softmax(q k^T * scale) v; the scale is the reference module's, never re-derived from a padded d
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(b, n, -1)  # (B, h, N, d) -> (B, N, h*d)
        return self.to_out(out)


class SdpaAttnBlock(AttnBlock):
    """The VAE's single-head pixel attention as one `scaled_dot_product_attention` call, scale c^-0.5."""

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        # (B, C, H, W) -> (B, 1, HW, C): one head whose size is the channel count
        q, k, v = (t.reshape(b, 1, c, hh * ww).transpose(2, 3) for t in (q, k, v))
        h = F.scaled_dot_product_attention(q, k, v, scale=int(c) ** -0.5)  # (B, 1, HW, C)
        h = h.transpose(2, 3).reshape(b, c, hh, ww)  # (B, 1, HW, C) -> (B, C, H, W)
        return x + self.proj_out(h)


SDPA_CLASSES = {CrossAttention: SdpaCrossAttention, AttnBlock: SdpaAttnBlock}


def use_sdpa(module: torch.nn.Module) -> int:
    """Switch every reference attention inside `module` to its SDPA subclass in place; returns how many."""
    count = 0
    for m in module.modules():
        swap = SDPA_CLASSES.get(type(m))
        if swap is not None:
            m.__class__ = swap  # same parameters and attributes, one overridden method
            count += 1
    return count


def keep_norms_fp32(module: torch.nn.Module) -> None:
    """GroupNorm32 normalises an fp32 copy of its input, so its parameters must stay fp32."""
    for m in module.modules():
        if isinstance(m, GroupNorm32):
            m.float()


class GroupNormSiLU(GroupNorm32):
    """GroupNorm32 with the SiLU after it folded in: one kernel where Triton runs, else the same torch ops."""

    def forward(self, x):
        return group_norm_silu(x, self.num_groups, self.weight, self.bias, self.eps)


def fold_norm_silu(module: torch.nn.Module) -> int:
    """Fold every GroupNorm32 directly followed by SiLU in a Sequential into GroupNormSiLU (the SiLU
    becomes Identity), in place; returns how many."""
    count = 0
    for seq in module.modules():
        if not isinstance(seq, torch.nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            if type(seq[i]) is GroupNorm32 and type(seq[i + 1]) is torch.nn.SiLU:
                seq[i].__class__ = GroupNormSiLU
                seq[i + 1] = torch.nn.Identity()
                count += 1
    return count


class CudaTorchRunner(TorchRunner):
    """TorchRunner with the fast-path conversions and `enqueue`; meant for CUDA, runs on any device."""

    backend = "torch-cuda"

    def __init__(self, model: CollaborativeModel, device: str | torch.device = "cuda", dtype=torch.float16,
                 channels_last: bool = False, sdpa: bool = True, vae_dtype: torch.dtype | None = None,
                 cudnn_benchmark: bool = True, streams: int = STREAMS, pad_heads: int = 0,
                 fuse_norm_silu: bool = False, pair_unets: bool = False):
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.pad_heads = int(pad_heads)
        if self.pad_heads:  # in fp32, before the cast: the padding is exact
            from ...export.head_pad import pad_attention_heads

            for m in model.cfg.modalities:
                for net in (model.unets[m.name], model.diffusers[m.name]):
                    pad_attention_heads(net, multiple=self.pad_heads)
        super().__init__(model, device, dtype)  # moves the model, casts UNets and diffusers to `dtype`
        self.streams = int(streams)  # the CUDA-graph loop spreads a step's 2M networks over this many streams
        self.vae_dtype = dtype if vae_dtype is None else vae_dtype
        self.channels_last, self.sdpa, self.fuse_norm_silu = channels_last, sdpa, fuse_norm_silu
        model.vae.to(self.vae_dtype)
        loop_nets = [model.unets[m.name] for m in self.cfg.modalities] + \
                    [model.diffusers[m.name] for m in self.cfg.modalities]
        for net in loop_nets + [model.vae]:
            keep_norms_fp32(net)
            if sdpa:
                use_sdpa(net)
            if fuse_norm_silu and net is not model.vae:
                fold_norm_silu(net)
            if channels_last:
                net.to(memory_format=torch.channels_last)  # 4-d conv weights NHWC
        self.pairs = self._pair_networks() if pair_unets else {}
        if cudnn_benchmark and self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # process-wide: static shapes, autotuned once per shape

    def _pair_networks(self) -> dict:
        """{part: PairedUNet} for the parts whose two modalities share one architecture."""
        from ...models.paired_unet import PairedUNet, pairable

        mods = self.cfg.modalities
        if len(mods) != 2:
            raise ValueError(f"pair_unets pairs two modalities, this model has {len(mods)}")
        pairs = {}
        for part, nets in (("unet", self.model.unets), ("diffuser", self.model.diffusers)):
            a, b = nets[mods[0].name], nets[mods[1].name]
            if pairable(a, b) is None:
                pairs[part] = PairedUNet(a, b).eval()
        if not pairs:
            raise ValueError("pair_unets: " + pairable(self.model.unets[mods[0].name], self.model.unets[mods[1].name]))
        return pairs

    def pair_calls(self, names) -> dict:
        """{part: (x, t, contexts) -> stacked outputs} for CollaborativeStep, when `names` are the paired
        modalities in the model's order (else {}: the networks run one by one)."""
        if tuple(names) != tuple(m.name for m in self.cfg.modalities):
            return {}
        return {part: functools.partial(self._run_pair, part) for part in self.pairs}

    @torch.inference_mode()
    def _run_pair(self, part: str, x, t, contexts):
        dt = self.net_dtype(f"{self.cfg.modalities[0].name}_{part}")
        return self.pairs[part](x.to(dt), t, *(c.to(dt) for c in contexts))

    def net_dtype(self, name: str):
        if self.specs[name].kind in ("vae_decoder", "vae_encoder"):
            return self.vae_dtype
        return super().net_dtype(name)

    def enqueue(self, network: str, inputs: dict[str, torch.Tensor],
                stream: torch.cuda.Stream | None = None) -> dict[str, torch.Tensor]:
        """Launch `network` on `stream` (default: the current one) and return its outputs as they come
        (network dtype, maybe channels-last); no host synchronisation, nothing copied to the host."""
        if stream is None:
            return super().enqueue(network, inputs)
        with torch.cuda.stream(stream):
            return super().enqueue(network, inputs)

    @torch.inference_mode()
    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return {k: v.float().contiguous() for k, v in super().enqueue(network, inputs).items()}


def cuda_runner(model: CollaborativeModel, dtype: str | torch.dtype = "fp16", device: str | torch.device = "cuda",
                **options) -> CudaTorchRunner:
    """The fast torch runner: `dtype` 'fp16' (default), 'bf16' or 'fp32'; options as CudaTorchRunner's."""
    dt = DTYPES[dtype] if isinstance(dtype, str) else dtype
    return CudaTorchRunner(model, device, dt, **options)
