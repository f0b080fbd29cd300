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
    from golden import examples_dir

    return examples_dir() / "256_masks" / "29980.png"
