"""The backend registry and `auto`'s choice, with the availability checks replaced."""
from __future__ import annotations

import pytest
import torch

from cdx import backends as B
from cdx.backends import checks, registry as R
from cdx.errors import CdxError, InputError


@pytest.fixture
def registry():
    """The registry as it is, restored after the test."""
    saved = dict(R._REGISTRY)
    yield B
    R._REGISTRY.clear()
    R._REGISTRY.update(saved)


def req(**kw):
    return B.BackendRequest(**{"checkpoint": "bundle", **kw})


def test_builtin_order_and_cli_choices():
    builtin = [n for n in B.backend_names() if n in ("tensorrt", "torch", "onnxruntime")]
    assert builtin == ["tensorrt", "torch", "onnxruntime"]  # auto's order; others may sit between them
    assert B.backend_choices()[0] == "auto" and set(B.backend_names()) <= set(B.backend_choices())


def test_auto_on_a_cpu_without_engines_picks_onnxruntime(registry, monkeypatch):
    monkeypatch.setattr(checks, "cuda_visible", lambda: False)
    name, why = B.choose_auto(req())
    assert name not in ("tensorrt", "torch")  # onnxruntime, or a CPU backend registered ahead of it
    assert "no TensorRT engines" in why and "no CUDA device" in why


def test_auto_on_an_x86_cpu_with_openvino_picks_it(registry, monkeypatch):
    from cdx.backends import openvino as openvino_backend
    from cdx.backends.openvino import runner as openvino_runner

    monkeypatch.setattr(checks, "cuda_visible", lambda: False)
    monkeypatch.setattr(openvino_runner, "openvino_version", lambda: "2026.4")
    monkeypatch.setattr(openvino_backend.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: False)
    names = B.backend_names()
    assert names.index("openvino-bf16") < names.index("openvino") < names.index("onnxruntime")
    name, why = B.choose_auto(req())
    assert name == "openvino" and "not torch: no CUDA device" in why
    assert "not openvino-bf16: this CPU has no native bf16" in why
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: True)  # measured faster at fp32's quality
    assert B.choose_auto(req())[0] == "openvino-bf16"
    assert "not openvino-bf16: it runs the fp32 export" in str(pytest.raises(CdxError, B.choose_auto,
                                                                              req(dtype=torch.float16)).value)
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: False)
    monkeypatch.setattr(openvino_backend.platform, "machine", lambda: "aarch64")  # not measured there
    name, why = B.choose_auto(req())
    assert name == "onnxruntime" and "not openvino: auto picks it on x86 CPUs only" in why
    monkeypatch.setattr(openvino_backend.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(openvino_runner, "openvino_version", lambda: None)
    name, why = B.choose_auto(req())
    assert name == "onnxruntime" and "not openvino: openvino is not installed" in why
    monkeypatch.setattr(checks, "cuda_visible", lambda: True)  # a GPU: the torch CUDA path, never openvino
    monkeypatch.setattr(openvino_runner, "openvino_version", lambda: "2026.4")
    assert B.choose_auto(req())[0] == "torch"
    assert B.choose_auto(req(device="cpu"))[0] == "openvino"
    monkeypatch.setattr(openvino_backend, "native_bf16", lambda: True)
    assert B.choose_auto(req())[0] == "torch"  # a GPU still comes first


def test_auto_with_a_gpu_picks_the_torch_cuda_path(registry, monkeypatch):
    monkeypatch.setattr(checks, "cuda_visible", lambda: True)
    assert B.choose_auto(req())[0] == "torch"
    assert B.choose_auto(req(device="cpu"))[0] != "torch"  # auto uses torch only for the CUDA path
    assert B.choose_auto(B.BackendRequest(engine_dir="exp"))[0] != "torch"  # no bundle to load


def test_auto_with_usable_engines_picks_tensorrt(registry, monkeypatch):
    monkeypatch.setattr(checks, "cuda_visible", lambda: True)
    monkeypatch.setattr(B.trt, "_trt_usable", lambda d: (d is not None, "TensorRT 10.1 on a GPU"))
    assert B.choose_auto(req(engine_dir="engines"))[0] == "tensorrt"
    assert B.choose_auto(req())[0] == "torch"


def test_a_registered_backend_is_chosen_and_offered(registry, monkeypatch):
    monkeypatch.setattr(checks, "cuda_visible", lambda: False)
    made = []
    fake = B.Backend("fake", lambda r: None if r.checkpoint else "needs a bundle",
                     lambda r: made.append(r) or "a runner", lambda r: "fake runner")
    registry.register_backend(fake, before=B.choose_auto(req())[0])  # ahead of what auto picks now
    assert "fake" in B.backend_choices()
    assert B.choose_auto(req())[0] == "fake"
    runner, desc = B.make_runner("auto", "bundle")
    assert runner == "a runner" and desc.startswith("backend: fake runner; auto chose fake")
    assert made and made[0].checkpoint is not None
    assert B.choose_auto(B.BackendRequest(engine_dir="exp"))[0] != "fake"


def test_refusals_name_the_reason(registry, monkeypatch):
    monkeypatch.setattr(checks, "cuda_visible", lambda: False)
    with pytest.raises(InputError, match="unknown backend"):
        B.make_runner("nonesuch", "bundle")
    with pytest.raises(CdxError, match="tensorrt backend unavailable: no TensorRT engines"):
        B.make_runner("tensorrt", "bundle")
    with pytest.raises(CdxError, match="needs a CUDA device"):
        B.make_runner("torch", "bundle", dtype=torch.float16)
    with pytest.raises(CdxError, match="fp32 export"):
        B.make_runner("onnxruntime", "bundle", dtype=torch.float16)
    R._REGISTRY.clear()
    with pytest.raises(CdxError, match="no backend"):
        B.choose_auto(req())


@pytest.mark.gpu
def test_auto_on_this_gpu_runs_the_torch_fast_path_on_four_streams(tiny_bundle):
    runner, desc = B.make_runner("auto", tiny_bundle)
    assert runner.backend == "torch-cuda" and runner.streams == 4 and "4 streams" in desc
