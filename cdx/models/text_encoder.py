"""The official BERTEmbedder's transformer (x-transformers `TransformerWrapper` + `Encoder`).

Token embedding + learned absolute positions; `depth` pre-norm layers alternating self-attention
(8 heads x 64, q/k/v without bias) and a GELU feed-forward (x4); a final LayerNorm. No attention
mask: padding positions are attended, as in the official model. The output embeddings are the
context; the official `to_logits` head is unused and not built.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TextEncoderConfig:
    n_embed: int = 32
    n_layer: int = 2
    vocab_size: int = 1000
    max_seq_len: int = 77
    heads: int = 8
    dim_head: int = 64

    @classmethod
    def from_dict(cls, d: dict) -> "TextEncoderConfig":
        return cls(**{f: d[f] for f in cls.__dataclass_fields__ if f in d})


class PositionalEmbedding(nn.Module):
    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, n: int, device) -> torch.Tensor:
        return self.emb(torch.arange(n, device=device))[None]  # (1, n, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x):
        b, n, _ = x.shape
        # (B, n, h*d) -> (B, h, n, d)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (self.to_q(x), self.to_k(x), self.to_v(x)))
        attn = (torch.matmul(q, k.transpose(-1, -2)) * self.scale).softmax(dim=-1)  # (B, h, n, n)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, -1)  # (B, n, h*d)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU()), nn.Dropout(0.0),
                                 nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(x)


class Layers(nn.Module):
    """`layers.{2i}` = [LayerNorm, Attention], `layers.{2i+1}` = [LayerNorm, FeedForward]."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        layers = []
        for _ in range(cfg.n_layer):
            layers.append(nn.ModuleList([nn.LayerNorm(cfg.n_embed), Attention(cfg.n_embed, cfg.heads, cfg.dim_head)]))
            layers.append(nn.ModuleList([nn.LayerNorm(cfg.n_embed), FeedForward(cfg.n_embed)]))
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for norm, block in self.layers:
            x = block(norm(x)) + x
        return x


class TextEncoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.token_emb = nn.Embedding(cfg.vocab_size, cfg.n_embed)
        self.pos_emb = PositionalEmbedding(cfg.n_embed, cfg.max_seq_len)
        self.attn_layers = Layers(cfg)
        self.norm = nn.LayerNorm(cfg.n_embed)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) int64 -> context (B, L, n_embed)."""
        x = self.token_emb(tokens)
        x = x + self.pos_emb(tokens.shape[1], tokens.device)
        return self.norm(self.attn_layers(x))


class MaskEncoder(nn.Module):
    """The official SegMaskEncoder: one-hot (B, 19, 1024) cast to float, then Linear(1024 -> context)."""

    def __init__(self, mask_embed_dim: int = 1024, context_dim: int = 32):
        super().__init__()
        self.linear = nn.Linear(mask_embed_dim, context_dim)

    def forward(self, onehot: torch.Tensor) -> torch.Tensor:
        return self.linear(onehot.float())

