"""The TensorRT entry of the backend registry (cdx.engine.backends): name, availability, factory."""
from __future__ import annotations

from pathlib import Path

NAME = "tensorrt"


def availability(engine_dir=None) -> tuple[bool, str]:
    """(True, what) when engines in `engine_dir` can run here, else (False, one-line reason)."""
    from .env import available
    from .manifest import MANIFEST

    if engine_dir is None:
        return False, "no TensorRT engines given (--engine-dir)"
    if not (Path(engine_dir) / MANIFEST).is_file():
        return False, f"no {MANIFEST} in {engine_dir} (cdx build-engine writes one)"
    return available()


def factory(engine_dir, device="cuda", networks=None):
    """The runner of an engine folder, checked against its manifest (see TensorRTRunner)."""
    from .runner import TensorRTRunner

    return TensorRTRunner(engine_dir, device=device, networks=networks)
