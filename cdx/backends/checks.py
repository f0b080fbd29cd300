"""Checks every backend shares: what an export or engine folder has built in, dtype names, the GPU's presence."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CdxError


def check_built_in(runner, req) -> None:
    """An export or engine folder has its guidance and FreeU built in: refuse a request for others."""
    check_guidance(runner, req.guidance, req.engine_dir)
    if req.feature_cache is not None and runner.cfg.feature_cache != req.feature_cache:
        raise CdxError(f"{req.engine_dir} holds no feature-cache networks at branch {req.feature_cache} (its "
                       f"branch: {runner.cfg.feature_cache}); run from the checkpoint (--checkpoint) or export again")
    if req.freeu is not None and runner.cfg.freeu != req.freeu:
        raise CdxError(f"{req.engine_dir} was exported with FreeU {runner.cfg.freeu or 'off'}, not {req.freeu}; run "
                       "from the checkpoint (--checkpoint) or export again")


def check_guidance(runner, guidance: dict[str, float] | None, where: Path) -> None:
    """An export or engine folder has its guidance built in: refuse a request for other scales."""
    have = {m.name: m.guidance for m in runner.cfg.modalities}
    for name, scale in (guidance or {}).items():
        if name not in have:
            raise CdxError(f"--guidance: no modality named {name} in {where}")
        if have[name] != scale:
            raise CdxError(f"{where} was exported with guidance {name}={have[name]:g}, not {scale:g}; "
                           f"run from the checkpoint (--checkpoint) or export again")


def dtype_name(dtype: torch.dtype | None) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "default"


def cuda_visible() -> bool:
    return torch.cuda.is_available()
