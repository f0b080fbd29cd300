"""The static buffers of a graph-captured loop: every per-step table of a request packed into one float32
upload, and the buffer plan (shapes and dtypes) that decides whether two requests can share a graph."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ...models.schedule import StepTable
from ..runner import Runner
from ..loop import Shaping

ALIGN = 4  # floats: every table view starts on a 16-byte boundary


# ----------------------------------------------------------------------------- step tables, one upload

@dataclass(frozen=True)
class TableLayout:
    """Where each per-step table sits in the packed float32 upload (offsets in floats)."""

    steps: int
    m: int
    coeffs: int  # (N, 6), columns schedule.COEFF_NAMES
    decay: int | None  # (N, M) official shaping decay, or None
    scale: int | None  # (M,) official shaping scale, or None
    size: int
    history: int | None = None  # (N, 2) a multistep sampler's weights of earlier steps' x0, or None


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def table_layout(steps: int, m: int, shaped: bool, multistep: bool = False) -> TableLayout:
    """coeffs, then decay and scale when shaped, then the history weights of a multistep sampler, each
    padded to ALIGN floats."""
    off = _aligned(steps * 6)
    decay = scale = history = None
    if shaped:
        decay, off = off, off + _aligned(steps * m)
        scale, off = off, off + _aligned(m)
    if multistep:
        history, off = off, off + _aligned(steps * 2)
    return TableLayout(steps, m, 0, decay, scale, off, history)


def pack_tables(table: StepTable, shaping: Shaping | None, m: int) -> tuple[np.ndarray, TableLayout]:
    """All per-step float scalars of a request in one (size,) float32 array, and its layout."""
    layout = table_layout(table.num_steps, m, shaping is not None, table.history is not None)
    packed = np.zeros(layout.size, dtype=np.float32)
    if table.history is not None:
        packed[layout.history:layout.history + table.history.size] = np.asarray(table.history, np.float32).reshape(-1)
    packed[:table.coeffs.size] = np.asarray(table.coeffs, np.float32).reshape(-1)
    if shaping is not None:
        if shaping.decay.shape != (table.num_steps, m) or shaping.scale.shape != (m,):
            raise ValueError(f"shaping tables {shaping.decay.shape}, {shaping.scale.shape} do not fit "
                             f"{table.num_steps} steps and {m} modalities")
        packed[layout.decay:layout.decay + shaping.decay.size] = shaping.decay.reshape(-1)
        packed[layout.scale:layout.scale + m] = shaping.scale
    return packed, layout


def table_views(packed: torch.Tensor, layout: TableLayout):
    """(coeffs (N, 6), decay (N, M) or None, scale (M,) or None): contiguous views of the packed buffer."""
    n, m = layout.steps, layout.m
    coeffs = packed[layout.coeffs:layout.coeffs + n * 6].view(n, 6)
    decay = packed[layout.decay:layout.decay + n * m].view(n, m) if layout.decay is not None else None
    scale = packed[layout.scale:layout.scale + m] if layout.scale is not None else None
    return coeffs, decay, scale


def history_view(packed: torch.Tensor, layout: TableLayout) -> torch.Tensor | None:
    """The (N, 2) history weights of a multistep sampler in the packed buffer, or None."""
    if layout.history is None:
        return None
    return packed[layout.history:layout.history + layout.steps * 2].view(layout.steps, 2)


# ----------------------------------------------------------------------------- buffer plan

@dataclass(frozen=True)
class LoopPlan:
    """Shapes and dtypes of every static buffer of one loop; equal plans can share a captured graph."""

    names: tuple[str, ...]
    batch: int
    latent: tuple[int, int, int]  # C, h, w
    eps_dtype: torch.dtype  # what the collaborators return
    logits_dtype: torch.dtype  # what the diffusers return
    contexts: tuple[tuple[tuple[int, ...], torch.dtype], ...]
    layout: TableLayout
    receiver: int
    influence: bool
    trace: bool
    influence_interval: int = 1  # the diffusers at steps 0, K, 2K, ...; their maps reused in between

    @property
    def m(self) -> int:
        return len(self.names)

    @property
    def steps(self) -> int:
        return self.layout.steps

    def buffers(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Every static buffer by name: (shape, dtype)."""
        m, b, n, (c, h, w) = self.m, self.batch, self.steps, self.latent
        f32, i64 = torch.float32, torch.int64
        bufs = {
            "x": ((b, c, h, w), f32),  # the sampler state, updated in place by the kernel
            "eps": ((m, b, c, h, w), self.eps_dtype),  # collaborators' predictions, stacked
            "logits": ((m, b, 1, h, w), self.logits_dtype),  # diffusers' influence logits, stacked
            "eps_out": ((b, c, h, w), self.eps_dtype),  # combined eps of the step
            "noise": ((n, b, c, h, w), f32),  # every step's noise, uploaded once
            "noise_i": ((1, b, c, h, w), f32),  # noise[i], gathered by the device step
            "tables": ((self.layout.size,), f32),  # pack_tables
            "timesteps": ((n,), i64),
            "t": ((1,), i64),  # timesteps[i], gathered by the device step
            "step": ((1,), i64),  # the device step index i
            "coeffs_row": ((1, 6), f32),  # coeffs[i] for kernels that take the step from the host
            "decay_row": ((1, m), f32),
        }
        for j, (shape, dtype) in enumerate(self.contexts):
            bufs[f"context{j}"] = (shape, dtype)
        if self.influence:
            bufs["w"] = ((m, b, 1, h, w), f32)
            bufs["influence"] = ((n, m, b, 1, h, w), f32)
        if self.layout.history is not None:  # a multistep sampler: the state before the step, its row
            bufs["x_in"] = ((b, c, h, w), f32)
            bufs["history_row"] = ((1, 2), f32)
        if self.trace:
            bufs["trace_eps"] = ((n, b, c, h, w), self.eps_dtype)
            bufs["trace_x"] = ((n, b, c, h, w), f32)
        return bufs

    def nbytes(self) -> int:
        return sum(int(np.prod(s)) * torch.empty((), dtype=d).element_size() for s, d in self.buffers().values())


def _out_dtype(runner: Runner, network: str) -> torch.dtype:
    fn = getattr(runner, "net_dtype", None)
    return fn(network) if callable(fn) else torch.float32


def plan_loop(runner: Runner, names: Sequence[str], contexts: Sequence[torch.Tensor], x_T: torch.Tensor,
              noise: torch.Tensor, table: StepTable, shaping: Shaping | None = None,
              return_influence: bool = False, trace: bool = False, influence_interval: int = 1) -> LoopPlan:
    """The buffer plan for one request, after checking that its tensors agree with each other."""
    m, n = len(names), table.num_steps
    if influence_interval < 1:
        raise ValueError(f"influence_interval must be >= 1, got {influence_interval}")
    if m < 1 or len(contexts) != m:
        raise ValueError(f"need one context per modality, got {len(contexts)} for {m} modalities")
    if x_T.dim() != 4:
        raise ValueError(f"x_T must be (B, C, h, w), got {tuple(x_T.shape)}")
    b = int(x_T.shape[0])
    if tuple(noise.shape) != (n, *x_T.shape):
        raise ValueError(f"noise must be (N, B, C, h, w) = {(n, *x_T.shape)}, got {tuple(noise.shape)}")
    for name, c in zip(names, contexts):
        if c.dim() != 3 or c.shape[0] != b:
            raise ValueError(f"context of {name!r} must be (B={b}, L, D), got {tuple(c.shape)}")
    layout = table_layout(n, m, shaping is not None, table.history is not None)
    return LoopPlan(
        names=tuple(names), batch=b, latent=tuple(int(s) for s in x_T.shape[1:]),
        eps_dtype=_out_dtype(runner, f"{names[0]}_unet"),
        logits_dtype=_out_dtype(runner, f"{names[0]}_diffuser") if m > 1 else _out_dtype(runner, f"{names[0]}_unet"),
        contexts=tuple((tuple(c.shape), c.dtype) for c in contexts), layout=layout,
        receiver=shaping.receiver if shaping is not None else -1, influence=return_influence, trace=trace,
        influence_interval=int(influence_interval),
    )


class _Buffers:
    """The allocated plan: one attribute per buffer, plus the table and step views."""

    def __init__(self, plan: LoopPlan, device: torch.device):
        for name, (shape, dtype) in plan.buffers().items():
            setattr(self, name, torch.zeros(shape, dtype=dtype, device=device))  # logits stay 0 when M == 1
        self.coeffs, self.decay, self.scale = table_views(self.tables, plan.layout)
        self.history = history_view(self.tables, plan.layout)
        self.step0 = self.step.view(())  # the 0-d step the kernels read on the device
        self.contexts = [getattr(self, f"context{j}") for j in range(len(plan.contexts))]
