"""Shared fixtures: a tiny random bundle and its ONNX export, made once per session."""
from __future__ import annotations

import pytest

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
