"""The torch-compile backend on the CPU: inductor's networks against eager torch on fresh random inputs,
the compile notice, and auto never choosing it."""
from __future__ import annotations

import torch

from cdx.backends.registry import BackendRequest, backend_names, make_runner
from cdx.backends.pytorch import _compile_auto_why_not as _auto_why_not
from cdx.export.onnx_export import random_inputs


def test_compiled_matches_eager_on_the_cpu(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    compiled, desc = make_runner("torch-compile", tiny_bundle, device="cpu")
    eager, _ = make_runner("torch", tiny_bundle, device="cpu")
    notices = []
    compiled.notice = notices.append
    assert "torch-compile (inductor" in desc
    g = torch.Generator().manual_seed(5)
    for name in ("text_unet", "mask_diffuser"):
        inputs = random_inputs(eager.specs[name], 3, g)
        a, b = compiled.run(name, inputs), eager.run(name, inputs)
        key = eager.specs[name].outputs[0].name
        scale = b[key].abs().max().item()
        assert scale > 0 and (a[key] - b[key]).abs().max().item() <= 1e-4 * max(1.0, scale), name
    assert len(notices) == 2 and all("compiling" in n for n in notices)
    compiled.run("text_unet", random_inputs(eager.specs["text_unet"], 3, g))
    assert len(notices) == 2  # the same shape again: no recompile notice
    assert any((tmp_path / "inductor").iterdir())


def test_auto_never_picks_torch_compile(tiny_bundle):
    assert "torch-compile" in backend_names()
    assert "auto does not pick it" in _auto_why_not(BackendRequest(tiny_bundle))
