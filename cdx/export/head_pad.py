"""Exact zero-padding of attention heads, applied to the torch modules before ONNX export.

The official models fix 32 heads, so head sizes are 12/18/30 in the UNets and 2/3/5 in the
dynamic diffusers. What TensorRT documents about fusing attention into one kernel:

- TensorRT developer guide, "Multi-Head Attention Fusion"
  (https://docs.nvidia.com/deeplearning/tensorrt/developer-guide/index.html#mha-fusion, as quoted in
  https://github.com/NVIDIA/TensorRT/issues/2981 and /issues/4167): fusion needs SM >= 75, FP16, BF16
  or INT8 inputs to both batched matmuls, and for FP16/BF16 a head size H with 16 <= H <= 256 and
  H % 8 == 0; TensorRT may still decline to fuse on performance grounds.
- "Fused Attention" (https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/
  transformers-fused-attention.html): Q is [B, N, S_q, H], K and V are [B, N, S_kv, H]; TensorRT
  requires Q or K (or both, by sqrt) to be multiplied by the attention scale *before* the first
  matmul. Our modules scale Q.K^T after it; `prescale_q=True` folds the scale into to_q's weights
  and sets `scale = 1.0`, leaving a multiply by 1.0 after the first matmul in the exported graph.
  Whether TensorRT removes it and then fuses has not been checked here (no TensorRT on this machine).

None of the official sizes qualifies, so `pad_attention_heads` pads each head to
max(min_dim, ceil(d / multiple) * multiple): 12->16, 18->24, 30->32, 2/3/5->16 with the defaults.
The rewrite is exact: the padded q and k rows are zero, so q.k over a head is unchanged; the padded
v rows are zero and to_out's matching input columns are zero, so the output is unchanged. The
softmax scale stays the unpadded d ** -0.5. Weights for a later refit must come from the padded
module's state_dict, not the original one.
"""
from __future__ import annotations

import torch
from torch import nn

from ..models.text_encoder import Attention
from ..models.unet import CrossAttention

ATTENTION_TYPES = (CrossAttention, Attention)


def padded_dim(d: int, multiple: int = 8, min_dim: int = 16) -> int:
    """The smallest head size >= max(d, min_dim) that is a multiple of `multiple`."""
    if d < 1 or multiple < 1:
        raise ValueError(f"head size {d} and multiple {multiple} must be positive")
    need = max(d, min_dim)
    return -(-need // multiple) * multiple


def _out_linear(attn: nn.Module) -> nn.Linear:
    return attn.to_out[0] if isinstance(attn.to_out, nn.Sequential) else attn.to_out


def _set_out_linear(attn: nn.Module, lin: nn.Linear) -> None:
    if isinstance(attn.to_out, nn.Sequential):
        attn.to_out[0] = lin
    else:
        attn.to_out = lin


def head_dims(module: nn.Module) -> dict[str, int]:
    """Head size of every attention block in `module`, by its qualified name."""
    return {name: m.to_q.out_features // m.heads for name, m in module.named_modules()
            if isinstance(m, ATTENTION_TYPES)}


def _pad_rows(lin: nn.Linear, heads: int, d: int, new_d: int, factor: float = 1.0) -> nn.Linear:
    """Linear(in, heads*d) -> Linear(in, heads*new_d); each head's rows followed by zero rows."""
    w = lin.weight.detach()
    out = nn.Linear(lin.in_features, heads * new_d, bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        wp = w.new_zeros(heads, new_d, lin.in_features)
        wp[:, :d] = w.reshape(heads, d, lin.in_features) * factor  # (h*d, in) -> (h, d, in)
        out.weight.copy_(wp.reshape(heads * new_d, lin.in_features))
        if lin.bias is not None:
            bp = lin.bias.new_zeros(heads, new_d)
            bp[:, :d] = lin.bias.detach().reshape(heads, d) * factor
            out.bias.copy_(bp.reshape(-1))
    return out


def _pad_cols(lin: nn.Linear, heads: int, d: int, new_d: int) -> nn.Linear:
    """Linear(heads*d, out) -> Linear(heads*new_d, out); zero columns for the padded dims."""
    w = lin.weight.detach()
    out = nn.Linear(heads * new_d, lin.out_features, bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        wp = w.new_zeros(lin.out_features, heads, new_d)
        wp[:, :, :d] = w.reshape(lin.out_features, heads, d)  # (out, h*d) -> (out, h, d)
        out.weight.copy_(wp.reshape(lin.out_features, heads * new_d))
        if lin.bias is not None:
            out.bias.copy_(lin.bias.detach())
    return out


def pad_attention_heads(module: nn.Module, multiple: int = 8, min_dim: int = 16,
                        prescale_q: bool = False) -> dict[str, tuple[int, int]]:
    """Pad, in place, every CrossAttention/Attention head of `module` to `padded_dim`; exact.

    Returns {block name: (old head size, new head size)} for the blocks it changed."""
    changed = {}
    for name, attn in module.named_modules():
        if not isinstance(attn, ATTENTION_TYPES):
            continue
        h = attn.heads
        d = attn.to_q.out_features // h
        new_d = padded_dim(d, multiple, min_dim)
        factor = attn.scale if prescale_q else 1.0
        if new_d == d and not prescale_q:
            continue
        attn.to_q = _pad_rows(attn.to_q, h, d, new_d, factor)
        attn.to_k = _pad_rows(attn.to_k, h, d, new_d)
        attn.to_v = _pad_rows(attn.to_v, h, d, new_d)
        _set_out_linear(attn, _pad_cols(_out_linear(attn), h, d, new_d))
        if prescale_q:
            attn.scale = 1.0  # the original d ** -0.5 now lives in to_q's weights
        changed[name] = (d, new_d)
    return changed
