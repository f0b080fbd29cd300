"""The one check of a `--device` value, before any model is loaded."""
from __future__ import annotations

import torch

from .errors import InputError


def check_device(device: str) -> torch.device:
    """`device` as a torch.device that this install can run on; a one-line InputError otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"--device {device}: not a device; use cpu or cuda (cuda:N for one GPU)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise InputError(f"--device {device}: cdx runs on cpu or cuda")
    if not torch.backends.cuda.is_built():
        raise InputError(f"--device {device}: this torch is a CPU-only build; install a CUDA build of torch "
                         "or use --device cpu")
    if not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA device is visible; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


def free_bytes(device: torch.device) -> int | None:
    """The memory that can be allocated on `device` now (CUDA: free device memory; CPU: the kernel's
    MemAvailable); None where it cannot be told."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_free_memory(need: int, device: torch.device | None, what: str, fix: str) -> None:
    """Refuse (InputError) work estimated to need `need` bytes where `device` (None: the CPU) has less free."""
    device = device or torch.device("cpu")
    free = free_bytes(device)
    if free is not None and need > free:
        raise InputError(f"{what}: needs about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free on {device}; "
                         f"{fix}")
