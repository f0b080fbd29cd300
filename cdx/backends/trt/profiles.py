"""TensorRT optimisation profiles, derived from the NetworkSpecs ("batch" is the one dynamic axis)."""
from __future__ import annotations

from ...errors import InputError
from ...export.spec import NetworkSpec

Shape = tuple[int, ...]
Batch = tuple[int, int, int]


def check_batch(batch: Batch) -> Batch:
    try:
        lo, opt, hi = (int(b) for b in batch)
    except (TypeError, ValueError):
        raise InputError(f"batch must be MIN,OPT,MAX integers, got {batch!r}") from None
    if not 1 <= lo <= opt <= hi:
        raise InputError(f"batch must satisfy 1 <= MIN <= OPT <= MAX, got {lo},{opt},{hi}")
    return lo, opt, hi


def parse_batch(text: str) -> Batch:
    """'1,2,4' -> (1, 2, 4); a single 'N' -> (N, N, N)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise InputError(f"--batch takes N or MIN,OPT,MAX (e.g. 1,1,4), got {text!r}")
    return check_batch(tuple(int(p) for p in parts))


def profiles_for(spec: NetworkSpec, batch: Batch = (1, 1, 4),
                 static: bool = False) -> dict[str, tuple[Shape, Shape, Shape]]:
    """{input name: (min, opt, max) shape}; `static` builds for OPT only (min = opt = max)."""
    lo, opt, hi = check_batch(batch)
    if static:
        lo = hi = opt
    return {t.name: (t.concrete(lo), t.concrete(opt), t.concrete(hi)) for t in spec.inputs}


def profiles_to_json(profiles: dict[str, tuple[Shape, Shape, Shape]]) -> dict[str, list[list[int]]]:
    return {name: [list(s) for s in shapes] for name, shapes in sorted(profiles.items())}


def batch_range(profiles_json: dict[str, list[list[int]]]) -> tuple[int, int]:
    """(min, max) batch an engine accepts, read from its recorded profiles (axis 0 is "batch")."""
    shapes = next(iter(profiles_json.values()))
    return shapes[0][0], shapes[2][0]
