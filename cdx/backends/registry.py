"""The backend registry: each backend registers its name, an availability check that says why not, and a
factory; `make_runner` is the one factory every command and the Python API use, and `auto` walks the
registry in order of measured speed for the device at hand. The registry imports no backend: each backend
module imports it and ends in its `register_backend` call (`cdx.backends` imports the built-in ones).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import CdxError, InputError
from ..sampling.runner import Runner


@dataclass(frozen=True)
class BackendRequest:
    """What a caller asks of a backend (None: the backend's default)."""

    checkpoint: Path | None = None
    engine_dir: Path | None = None
    device: str | None = None
    dtype: torch.dtype | None = None
    guidance: dict[str, float] | None = None
    freeu: tuple[float, float, float, float] | None = None  # FreeU's (b1, b2, s1, s2); None: the model's
    feature_cache: int | None = None  # the collaborators' cached/shallow networks at this branch (deepcache)
    progress: Callable[[str], None] | None = None
    options: dict = field(default_factory=dict)  # backend-specific, e.g. {"streams": 4}


@dataclass(frozen=True)
class Backend:
    name: str
    why_not: Callable[[BackendRequest], str | None]  # None: usable for this request; else the reason
    factory: Callable[[BackendRequest], Runner]
    describe: Callable[[Runner], str]  # one line: what it runs on
    auto_why_not: Callable[[BackendRequest], str | None] | None = None  # auto's own test (default: why_not)
    # a runner of an in-memory model (an edit's fine-tuned collaborators) from a scratch folder, given the
    # networks whose weights changed; None: the model is exported there and `factory` runs the export
    from_model: Callable[[Any, Path, BackendRequest, Sequence[str]], Runner] | None = None
    options: tuple[str, ...] = ()  # the names of the backend-specific options its factory takes


_REGISTRY: dict[str, Backend] = {}


def register_backend(backend: Backend, before: str | None = None) -> None:
    """Add (or replace) a backend; `before` puts it ahead of another in auto's order."""
    items = [(k, v) for k, v in _REGISTRY.items() if k != backend.name]
    at = next((i for i, (k, _) in enumerate(items) if k == before), len(items))
    items.insert(at, (backend.name, backend))
    _REGISTRY.clear()
    _REGISTRY.update(items)


def backend_names() -> list[str]:
    """The registered backends in auto's order."""
    return list(_REGISTRY)


def backend_choices() -> list[str]:
    """What `--backend` accepts."""
    return ["auto", *_REGISTRY]


def get_backend(name: str) -> Backend:
    """The registered backend `name` (InputError naming the choices when there is none)."""
    if name not in _REGISTRY:
        raise InputError(f"unknown backend {name!r}; choose one of {', '.join(backend_choices())}")
    return _REGISTRY[name]


def resolve_backend(name: str, req: BackendRequest) -> tuple[Backend, str]:
    """(the backend `name` stands for, auto's note): auto resolved, the choice checked usable for `req`."""
    note = ""
    if name == "auto":
        name, note = choose_auto(req)
    b = get_backend(name)
    why = b.why_not(req)
    if why is not None:
        raise CdxError(f"{name} backend unavailable: {why}")
    return b, note


def choose_auto(req: BackendRequest) -> tuple[str, str]:
    """(backend, why): the first registered backend auto may use for `req`, and why the earlier ones were not."""
    passed = []
    for b in _REGISTRY.values():
        why = (b.auto_why_not or b.why_not)(req)
        if why is None:
            return b.name, f"auto chose {b.name}" + (f" ({'; '.join(passed)})" if passed else "")
        passed.append(f"not {b.name}: {why}")
    raise CdxError("no backend can run this request: " + "; ".join(passed))


def make_runner(backend: str, checkpoint: Path | None, engine_dir: Path | None = None, device: str | None = None,
                dtype: torch.dtype | None = None, progress=None, guidance: dict[str, float] | None = None,
                freeu: tuple | None = None, feature_cache: int | None = None, **options) -> tuple[Runner, str]:
    """Returns (runner, one-line description of the choice). `guidance` {modality: scale} overrides the
    bundle's classifier-free guidance scales (cdx.models.guidance), `freeu` (b1, b2, s1, s2) switches FreeU on
    the collaborators (cdx.models.freeu)."""
    req = BackendRequest(Path(checkpoint) if checkpoint is not None else None,
                         Path(engine_dir) if engine_dir is not None else None, device, dtype, guidance or None,
                         tuple(freeu) if freeu else None, feature_cache, progress, options)
    if device is not None:
        from ..devices import check_device

        check_device(device)
    b, note = resolve_backend(backend, req)
    check_options(b, req.options)
    runner = b.factory(req)
    return runner, f"backend: {b.describe(runner)}" + (f"; {note}" if note else "")


def check_options(b: Backend, options: dict) -> None:
    """Refuse an option the backend does not take (InputError naming the ones it does)."""
    unknown = [k for k in options if k not in b.options]
    if unknown:
        takes = f"its options: {', '.join(b.options)}" if b.options else "it takes none"
        raise InputError(f"backend {b.name}: no option {unknown[0]!r} ({takes})")


def runner_of_model(backend: str, model, scratch: Path, changed: Sequence[str],
                    req: BackendRequest) -> tuple[Runner, str]:
    """(runner, description) of an in-memory `model` on `backend` (resolved and checked for `req`): the
    backend's own `from_model`, else an ONNX export of the model in `scratch` run by its factory. `changed`
    names the networks whose weights differ from the bundle's (what an engine backend refits)."""
    b, _ = resolve_backend(backend, req)
    check_options(b, req.options)
    if b.from_model is not None:
        runner = b.from_model(model, scratch, req, changed)
    else:
        runner = b.factory(dataclasses.replace(req, checkpoint=None, engine_dir=export_model(model, scratch)))
    return runner, f"backend: {b.describe(runner)}"


def export_model(model, scratch: Path) -> Path:
    """`model` saved as a bundle in scratch/bundle and exported to ONNX in scratch/onnx (returned)."""
    from ..export.onnx_export import export_bundle
    from ..models.bundle import save_bundle

    save_bundle(model, scratch / "bundle")
    export_bundle(scratch / "bundle", scratch / "onnx", model=model)
    return scratch / "onnx"
