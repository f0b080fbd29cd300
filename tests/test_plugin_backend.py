"""A new backend is one module and one registration: a toy backend defined and registered in this file alone runs
through the Python API and `cdx run --backend toy`, and gives the reference backend's image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

CAPTION = "This person has brown hair."


class ToyRunner:
    """Runs the torch reference modules through a plain dict of callables, counting every network call."""

    backend = "toy"

    def __init__(self, checkpoint):
        from cdx.export.spec import network_specs
        from cdx.models.bundle import load_bundle

        self.model = load_bundle(checkpoint).eval()
        self.cfg, self.device = self.model.cfg, torch.device("cpu")
        self.specs = network_specs(self.cfg)
        self.calls: dict[str, int] = {}

    def net_dtype(self, network):
        return torch.float32

    @torch.inference_mode()
    def run(self, network, inputs):
        self.calls[network] = self.calls.get(network, 0) + 1
        spec = self.specs[network]
        out = self.model.module(network)(*(inputs[t.name] for t in spec.inputs))
        return {spec.outputs[0].name: out.float()}


@pytest.fixture
def toy_backend():
    from cdx.backends import Backend, register_backend
    from cdx.backends import registry

    made = []

    def factory(req):
        made.append(ToyRunner(req.checkpoint))
        return made[-1]

    register_backend(Backend("toy", lambda req: None if req.checkpoint else "it needs a checkpoint", factory,
                             lambda runner: "toy (a test's own backend)", lambda req: "ask for it by name"))
    yield made
    registry._REGISTRY.pop("toy")


def test_a_backend_registered_from_a_test_runs_through_the_api(toy_backend, tiny_bundle):
    import cdx

    toy = cdx.Pipeline.load(tiny_bundle, backend="toy")
    out = toy(text=CAPTION, seed=3, steps=2)
    assert toy.description.startswith("backend: toy") and toy_backend
    calls = toy_backend[0].calls
    n = len(out.timesteps)
    assert calls["text_unet"] == n and calls["text_encoder"] == 1 and calls["vae_decoder"] == 1
    ref = cdx.Pipeline.load(tiny_bundle, backend="torch")(text=CAPTION, seed=3, steps=2)
    assert np.abs(out.arrays.astype(int) - ref.arrays.astype(int)).max() <= 1  # the same maths, to rounding
    assert cdx.Pipeline.load(tiny_bundle).description.find("toy") < 0  # auto never picks it


def test_a_backend_registered_from_a_test_runs_through_cdx_run(toy_backend, tiny_bundle, tmp_path):
    from cdx.cli import main

    out = tmp_path / "face.png"
    r = CliRunner().invoke(main, ["run", "--backend", "toy", "--checkpoint", str(tiny_bundle), "--text", CAPTION,
                                  "--steps", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "backend: toy" in r.output and Image.open(out).size == (64, 64) and toy_backend[0].calls
    r = CliRunner().invoke(main, ["run", "--backend", "nonesuch", "--checkpoint", str(tiny_bundle), "--text", CAPTION])
    assert r.exit_code == 2 and "toy" in r.output  # the choices offered include the plug-in
