"""The KL autoencoder of LDM (encoder, decoder, quant_conv, post_quant_conv), official layout."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class AutoencoderConfig:
    embed_dim: int = 3
    z_channels: int = 3
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    resolution: int = 32
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        fields = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        for key in ("ch_mult", "attn_resolutions"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(**fields)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(0.0)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1 convolutions."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # (B, HW, C)
        k = k.reshape(b, c, hh * ww)  # (B, C, HW)
        w = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # (B, HW_q, HW_k)
        v = v.reshape(b, c, hh * ww)
        h = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as in the official model


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution level: a list of ResnetBlocks, their optional attentions, a resampler."""

    def __init__(self, blocks, attns, resample: nn.Module | None, resample_name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        self.resample_name = resample_name if resample is not None else None
        if resample is not None:
            setattr(self, resample_name, resample)  # the official key name: downsample or upsample

    def forward(self, h):
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return getattr(self, self.resample_name)(h) if self.resample_name else h


class Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + tuple(cfg.ch_mult)
        res, levels = cfg.resolution, []
        for i, mult in enumerate(cfg.ch_mult):
            cin, cout = cfg.ch * in_mult[i], cfg.ch * mult
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout))
                cin = cout
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cin))
            last = i == len(cfg.ch_mult) - 1
            levels.append(Level(blocks, attns, None if last else Downsample(cin), "downsample"))
            res = res if last else res // 2
        self.down = nn.ModuleList(levels)
        self.mid = Mid(cin)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        cin = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = Mid(cin)
        levels = [None] * n
        for i in reversed(range(n)):
            cout = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout))
                cin = cout
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cin))
            levels[i] = Level(blocks, attns, Upsample(cin) if i != 0 else None, "upsample")
            res = res * 2 if i != 0 else res
        self.up = nn.ModuleList(levels)
        self.norm_out = norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Autoencoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        zc = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.quant_conv = nn.Conv2d(zc, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> moments (B, 2*embed_dim, h, w): mean then logvar."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B, embed_dim, h, w) -> image (B, 3, H, W), not clamped."""
        return self.decoder(self.post_quant_conv(z))


class VaeDecoder(nn.Module):
    """Exported network: scaled latent -> image, i.e. decode(z / scale_factor)."""

    def __init__(self, ae: Autoencoder, scale_factor: float):
        super().__init__()
        self.ae, self.scale_factor = ae, scale_factor

    def forward(self, latent):
        return self.ae.decode(latent * (1.0 / self.scale_factor))  # the official order of rounding


class VaeEncoder(nn.Module):
    """Exported network: image -> scaled posterior mean, scale_factor * mean."""

    def __init__(self, ae: Autoencoder, scale_factor: float):
        super().__init__()
        self.ae, self.scale_factor = ae, scale_factor

    def forward(self, image):
        mean = self.ae.encode_moments(image)[:, : self.ae.cfg.embed_dim]
        return mean * self.scale_factor
