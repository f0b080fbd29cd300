"""The training loop every stage shares: AdamW with warm-up, an EMA of the weights, gradient
accumulation, data parallelism under torchrun, bf16 autocast, progress and logs on rank 0, periodic
atomic checkpoints, --resume (also with another number of processes), a step and a wall-clock budget.

A stage hands `train` the module it trains, a data set and a loss function `loss_fn(batch, draws)` of
one micro-batch; the loop owns everything else. The order of the samples is a DistributedSampler's for
(seed, epoch), and every random value of step s (timesteps, noise, dropout, crops) is drawn for the
whole global batch from a generator seeded by (seed, s), then sliced to the micro-batch's positions
(`Draws`). So a sample meets the same noise whatever the number of processes and accumulation steps,
a checkpoint needs no RNG state, and a run resumed on N processes continues the one made on M.

Checkpoints and stage outputs: cdx/train/checkpoint.py.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..errors import CdxError, InputError
from . import dist
from .checkpoint import load_checkpoint, save_checkpoint

AMP = ("auto", "none", "bf16")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch: int = 32  # the global batch: samples per optimizer step over all processes and accumulation steps
    lr: float = 2e-4
    warmup: int = 200  # linear warm-up steps, then a constant learning rate (the EMA does the averaging)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    ema_decay: float = 0.999
    seed: int = 0
    max_minutes: float | None = None  # wall-clock budget of this invocation, besides `steps`
    ckpt_every: int = 1000  # steps between checkpoints (0: only at the end)
    ckpt_minutes: float = 5.0  # and at least this often in wall-clock time
    log_every: int = 100
    device: str | None = None  # None: cuda when available, else cpu
    amp: str = "none"  # "auto" (bf16 on CUDA, none elsewhere), "none" or "bf16" (weights, optimizer stay fp32)
    init_from: str | None = None  # a bundle whose trained weights the stage starts from (cdx/train/init.py)
    accum: int = 1  # micro-batches per optimizer step in each process
    loader_workers: int = 0  # DataLoader worker processes
    grad_checkpoint: bool = False  # recompute the UNets' activations in the backward pass (memory for time)


@dataclass
class LoopResult:
    step: int  # steps done in total (including resumed ones)
    start_step: int  # the step this invocation started from
    losses: list[float] = field(default_factory=list)  # per step of this invocation (mean over the global batch)
    seconds: float = 0.0
    stopped_by: str = "steps"  # "steps" or "time"

    @property
    def steps_per_s(self) -> float:
        return 0.0 if self.seconds <= 0 else (self.step - self.start_step) / self.seconds

    def mean_loss(self, last: int = 100) -> float | None:
        """Mean of the last `last` losses; None when no step ran (a manifest then records null, not NaN)."""
        tail = self.losses[-last:]
        return float(np.mean(tail)) if tail else None

    def loss_text(self) -> str:
        loss = self.mean_loss()
        return "n/a" if loss is None else f"{loss:.4f}"


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch (the networks' initial weights); return a CPU generator of `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """The seed of step `step`'s random values: a SeedSequence of (seed, step), so no two pairs share one."""
    return int(np.random.SeedSequence((int(seed), int(step))).generate_state(1, np.uint64)[0] >> np.uint64(1))


class Draws:
    """The random values of one optimizer step for the samples at `positions` of its global batch.

    Each call draws the whole global batch's values from the step's generator and keeps this micro-batch's
    rows, so the values a sample gets depend only on (seed, step, its position): not on the number of
    processes or accumulation steps. The calls must come in the same order in every micro-batch."""

    def __init__(self, seed: int, step: int, global_batch: int, positions: torch.Tensor):
        self.gen = torch.Generator().manual_seed(step_seed(seed, step))
        self.batch, self.positions = global_batch, positions

    def randint(self, high: int) -> torch.Tensor:
        return torch.randint(high, (self.batch,), generator=self.gen)[self.positions]

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn((self.batch, *shape), generator=self.gen)[self.positions]

    def rand(self) -> torch.Tensor:
        return torch.rand((self.batch,), generator=self.gen)[self.positions]

    def shared_randint(self, high: int, n: int) -> torch.Tensor:
        """`n` values shared by the whole step (e.g. one crop window for the batch)."""
        return torch.randint(high, (n,), generator=self.gen)


def pick_device(name: str | None) -> torch.device:
    """None: CUDA when available, else CPU; an explicit CUDA device that is absent is an error."""
    name = dist.device_for(name)
    if name is None:
        return _tf32(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {name!r}: not a torch device (use cpu or cuda)") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: cdx trains on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CdxError(f"--device {name}: CUDA is not available here; use --device cpu")
    return _tf32(dev)


def _tf32(dev: torch.device) -> torch.device:
    """Training on CUDA may use TF32 matmuls and convolutions (10-bit mantissa products, fp32 sums)."""
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return dev


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, betas=tuple(cfg.betas),
                             weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `cfg.warmup` steps, then constant."""
    if cfg.warmup <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup)


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model, with d warmed up as min(decay, (1 + n) / (10 + n))."""
    d = min(decay, (1 + step) / (10 + step))
    e_params = list(ema.parameters())
    m_params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(e_params, m_params, 1.0 - d)
    for eb, mb in zip(ema.buffers(), model.buffers()):
        eb.copy_(mb)


def use_amp(amp: str, device: torch.device, name: str) -> bool:
    """Whether to autocast to bf16: `auto` on CUDA devices that have bf16; `bf16` anywhere (warned where a CPU
    only emulates it)."""
    if amp not in AMP:
        raise InputError(f"amp must be one of {', '.join(AMP)}, got {amp!r}")
    if amp == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    if amp == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        dist.log(f"{name}: warning: this CPU has no native bf16 (AVX512-BF16 or AMX), so --amp bf16 is emulated "
                 "and several times slower than --amp none (12x measured on a 2-core AVX2 EPYC)")
    return amp == "bf16"


# ---------------------------------------------------------------------------------------------
# the loop

LossFn = Callable[[dict, Draws], torch.Tensor]


def _log(msg: str) -> None:
    if dist.is_main():
        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN computes bf16 natively on this CPU (AVX512-BF16 or AMX); True when torch cannot say."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


class Objective(nn.Module):
    """The trained module and its loss as one module: DistributedDataParallel must see the forward pass."""

    def __init__(self, net: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.net, self.loss_fn = net, loss_fn

    def forward(self, batch: dict, draws: Draws) -> torch.Tensor:
        return self.loss_fn(batch, draws)


def micro_batch(cfg: TrainConfig, world: int) -> int:
    """Samples per micro-batch in each process: the global batch over processes and accumulation steps."""
    if cfg.accum < 1:
        raise InputError(f"--accum must be >= 1, got {cfg.accum}")
    per, rest = divmod(cfg.batch, world * cfg.accum)
    if per < 1 or rest:
        raise InputError(f"--batch {cfg.batch} must be a multiple of processes x --accum ({world} x {cfg.accum})")
    return per


class _ResumedSampler(torch.utils.data.DistributedSampler):
    """A DistributedSampler that starts `skip` items into this process's share of the epoch."""

    def __init__(self, data, skip: int = 0, **kw):
        super().__init__(data, **kw)
        self.skip = skip

    def __iter__(self):
        it = super().__iter__()
        for _ in range(self.skip):
            next(it)
        return it

    def __len__(self) -> int:
        return super().__len__() - self.skip


def _batches(data, cfg: TrainConfig, micro: int, step: int):
    """This process's micro-batches from optimizer step `step` on. An epoch is len(data) // batch steps in
    every process count; the samples of step s are positions s*batch.. of the epoch's permutation."""
    d = dist.current()
    per_epoch = len(data) // cfg.batch
    if per_epoch < 1:
        raise InputError(f"--batch {cfg.batch} is larger than the data set ({len(data)} samples)")
    while True:
        epoch, within = divmod(step, per_epoch)
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        sampler = _ResumedSampler(data, skip=within * cfg.batch // d.world, num_replicas=d.world, rank=d.rank,
                                  shuffle=True, seed=cfg.seed, drop_last=True)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(data, batch_size=micro, sampler=sampler, drop_last=True,
                                             num_workers=cfg.loader_workers)
        it = iter(loader)
        for _ in range((per_epoch - within) * cfg.accum):
            yield next(it)
        step = (epoch + 1) * per_epoch


def _resume_step(name: str, ckpt: str | os.PathLike | None, resume: bool, meta: dict,
                 resume_same: dict | None, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                 cfg: TrainConfig) -> int:
    """The step to start from: the checkpoint's at `ckpt` (loaded into the model, EMA and optimizer), else 0."""
    if resume and ckpt is not None and Path(ckpt).is_file():
        same = {"stage": meta.get("stage"), **{k: meta.get(k) for k in (resume_same or {})}}
        start = load_checkpoint(ckpt, model, ema, opt, expect_meta=same, absent=resume_same, global_batch=cfg.batch)
        _log(f"{name}: resumed from {ckpt} at step {start}")
        return start
    if resume:
        _log(f"{name}: no checkpoint at {ckpt}; starting from step 0")
    return 0


def _accumulate(objective: nn.Module, batches, cfg: TrainConfig, d: dist.Dist, step: int, micro: int,
                device: torch.device, amp: bool) -> float:
    """Forward and backward passes of this process's micro-batches of step `step`; returns their summed loss."""
    total = 0.0
    for k in range(cfg.accum):
        positions = (k * micro + torch.arange(micro)) * d.world + d.rank  # in the step's global batch
        draws = Draws(cfg.seed, step, cfg.batch, positions)
        last = k == cfg.accum - 1 or d.world == 1
        with contextlib.nullcontext() if last else objective.no_sync():  # all-reduce once per step
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = objective(next(batches), draws)
            loss = loss.float() / cfg.accum
            loss.backward()
        total += float(loss.detach())
    return total


def train(name: str, model: nn.Module, loss_fn: LossFn, cfg: TrainConfig, data,
          ckpt: str | os.PathLike | None = None, resume: bool = False, meta: dict | None = None,
          ema: nn.Module | None = None, resume_same: dict | None = None) -> tuple[nn.Module, LoopResult]:
    """Minimise `loss_fn(batch, draws)` over the trainable parameters of `model` (already on its device),
    with batches of `data` (a map-style Dataset).

    Stops after `cfg.steps` steps in total or `cfg.max_minutes` of this invocation, whichever comes
    first; rank 0 checkpoints to `ckpt` every `cfg.ckpt_every` steps / `cfg.ckpt_minutes` and at the end.
    `resume_same` names the keys of `meta` that define the loss (key -> its value in checkpoints made before
    the key existed): a checkpoint made with other values is not resumed.
    Returns the EMA copy of `model` (the weights a stage saves) and the loop's record."""
    device = next(model.parameters()).device
    d = dist.current()
    micro = micro_batch(cfg, d.world)
    ema = make_ema(model) if ema is None else ema
    opt = make_optimizer(model.parameters(), cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    meta = dict(meta or {})
    start = _resume_step(name, ckpt, resume, meta, resume_same, model, ema, opt, cfg)
    result = LoopResult(step=start, start_step=start)
    budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    amp = use_amp(cfg.amp, device, name)
    objective = dist.wrap(Objective(model, loss_fn), device)
    t0 = last_ckpt = time.monotonic()
    run_loss, run_n = 0.0, 0
    # the bar only on a terminal: in a log file each of its frames would repeat the step lines _log writes
    bar = tqdm(total=cfg.steps, initial=start, desc=name, unit="step", dynamic_ncols=True, file=sys.stderr,
               mininterval=0.5, disable=d.rank != 0 or not sys.stderr.isatty())
    model.train()
    step = start
    batches = _batches(data, cfg, micro, start) if start < cfg.steps else iter(())
    ckpt_meta = {**meta, "train": asdict(cfg)}
    try:
        while step < cfg.steps:
            lr = lr_at(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            total = _accumulate(objective, batches, cfg, d, step, micro, device, amp)
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            ema_update(ema, model, cfg.ema_decay, step)
            step += 1
            over = budget is not None and time.monotonic() - t0 >= budget
            stats = dist.all_sum(torch.tensor([total, float(over)], dtype=torch.float64))  # the ranks agree
            value = float(stats[0]) / d.world  # the loss over the global batch
            if not math.isfinite(value):
                raise CdxError(f"{name}: loss became {value} at step {step}; lower --lr or check the data")
            result.losses.append(value)
            run_loss, run_n = run_loss + value, run_n + 1
            bar.update(1)
            if cfg.log_every and step % cfg.log_every == 0:
                el = time.monotonic() - t0
                rate = (step - start) * cfg.batch / max(el, 1e-9)
                bar.set_postfix(loss=f"{run_loss / run_n:.4f}")
                _log(f"{name} step {step}/{cfg.steps} loss {run_loss / run_n:.5f} lr {lr:.2e} "
                     f"{rate:.1f} samples/s elapsed {el / 60:.1f} min")
                run_loss, run_n = 0.0, 0
            due = (cfg.ckpt_every and step % cfg.ckpt_every == 0) or \
                (time.monotonic() - last_ckpt >= 60.0 * cfg.ckpt_minutes)
            if ckpt is not None and due and step < cfg.steps and d.rank == 0:
                save_checkpoint(ckpt, model, ema, opt, step, ckpt_meta, cfg.batch)
                last_ckpt = time.monotonic()
            if stats[1] > 0:
                result.stopped_by = "time"
                break
    finally:
        bar.close()
    result.step, result.seconds = step, time.monotonic() - t0
    if ckpt is not None and step > start and d.rank == 0:
        save_checkpoint(ckpt, model, ema, opt, step, ckpt_meta, cfg.batch)
    dist.barrier()
    model.eval()
    return ema, result
