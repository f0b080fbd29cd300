"""Shared fixtures (a tiny random bundle and its ONNX export, made once per session) and the markers' skips.

Markers (registered in pyproject.toml): `gpu` needs a CUDA device, `tensorrt` needs TensorRT and a GPU (both
skip here with the reason), `serve` starts a real `cdx serve` (Ray), `slow` takes over ~20 s on 2 cores;
`pytest -m "not slow"` is the quick subset for contributors.
"""
from __future__ import annotations

import functools

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def tensorrt_missing() -> str | None:
    """Why TensorRT tests cannot run here (None: they can)."""
    from cdx.backends.trt import available

    ok, why = available()
    return None if ok else why


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("gpu") and not HAS_CUDA:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))
        elif item.get_closest_marker("tensorrt") and tensorrt_missing():
            item.add_marker(pytest.mark.skip(reason=tensorrt_missing()))

from cdx.models.bundle import save_bundle
from cdx.models.config import preset
from cdx.models.random_init import random_model


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "tiny"
    save_bundle(random_model(preset("tiny"), seed=7), path)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_bundle, tmp_path_factory):
    from cdx.export.onnx_export import export_bundle

    out = tmp_path_factory.mktemp("onnx") / "tiny"
    export_bundle(tiny_bundle, out)
    return out


@pytest.fixture(scope="session")
def real_mask():
    """A real CelebAMask-HQ label map (official example); skips, saying why, in a clone without ../shared."""
    from golden import examples_dir

    return examples_dir() / "256_masks" / "29980.png"


@pytest.fixture(scope="session")
def mask_png():
    """A label-map PNG in the CelebAMask-HQ format (palette indices = class ids) from the project's own
    synthetic examples: for tests that need a mask file but not a real one."""
    from golden import REPO_ROOT

    return REPO_ROOT / "examples" / "mask_long_hair.png"
