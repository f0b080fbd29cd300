"""benchmarks/temporal_swap.py: its splices of collaborative and no_temporal, and its weight recorder."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from cdx.backends.pytorch.eager import TorchRunner
from cdx.sampling.loop import draw_noise, make_shaping
from cdx.evaluation.methods import run_method
from cdx.evaluation.run_eval import _contexts, synthetic_faces
from cdx.evaluation.nets import parse_target
from cdx.models.config import preset
from cdx.models.random_init import random_model
from cdx.models.tokenizer import Tokenizer
from cdx.train.assemble import sampling_config

REPO = Path(__file__).resolve().parents[1]


def load_swap():
    spec = importlib.util.spec_from_file_location("temporal_swap", REPO / "benchmarks" / "temporal_swap.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_splices_meet_collaborative_and_no_temporal_at_their_ends_and_the_recorder_changes_nothing():
    swap = load_swap()
    torch.manual_seed(0)
    runner = TorchRunner(random_model(preset("tiny"), seed=11))
    cfg = sampling_config(runner.cfg, shaping=True, shaping_scale=4.0)
    faces = synthetic_faces((6,), 2)
    faces["parse"] = parse_target(faces["labels"])
    modalities = _contexts(runner, cfg, Tokenizer(), faces, 0, 2)
    table = cfg.step_table(4)
    x_T, noise = draw_noise(4, 2, (cfg.latent_channels, *cfg.latent_size), table.num_steps)

    def weights(method):
        return run_method(method, runner, modalities, x_T, noise, table, cfg, return_influence=True)[0].influence

    collab, frozen = weights("collaborative"), weights("no_temporal")
    n = table.num_steps
    assert (collab[1:] - frozen[1:]).abs().max() > 1e-3  # the diffusers' weights change over t
    torch.testing.assert_close(weights(swap.spliced("a", n, True)), collab, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights(swap.spliced("b", 1, True)), frozen, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights(swap.spliced("c", 1, False)), collab, rtol=0, atol=1e-6)
    torch.testing.assert_close(weights(swap.spliced("d", n, False)), frozen, rtol=0, atol=1e-6)
    mid = weights(swap.spliced("e", 2, True))  # the diffusers at steps 0-1, step 0's weights from step 2 on
    torch.testing.assert_close(mid[:2], collab[:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(mid[2], frozen[2], rtol=0, atol=1e-6)  # step 0's weights depend on x_T alone
    assert (mid[2] - collab[2]).abs().max() > 1e-4

    labels = faces["labels"]
    rec = swap.Recorder(labels, 0, n, batch=2)  # modalities in model order: mask first
    torch.testing.assert_close(weights(rec.method()), collab, rtol=0, atol=1e-6)
    table_ = rec.table()
    hair = list(swap.REGIONS).index("hair")
    assert rec.counts.sum() > 0 and rec.counts[hair] > 0
    # step 0: the raw weight is its own step-0 weight, and the mixed weight its own frozen one
    assert np.allclose(table_["raw"][0], table_["raw0"][0]) and np.allclose(table_["mixed"][0], table_["mixed0"][0])
    assert not np.allclose(table_["raw"][2], table_["raw0"][2])
    # the mixed weight of the boosted, decayed mask rises with its raw weight: S k / (1 + (S - 1) w k)^2 > 0
    gains = np.asarray(table_["gain"])[:, rec.counts > 0]
    assert (gains[:-1] > 0).all() and (gains[-1] >= 0).all()  # at t = 1 the decay k is ~0: no gain left
