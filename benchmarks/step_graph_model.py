"""The whole collaborative step as one graph: all M collaborators, all M diffusers and (optionally) the
combine (softmax influence, shaping, weighted eps, the DDIM/DDPM update) in one ONNX model, run by ONNX
Runtime or OpenVINO, so that the per-call overhead is paid once per step instead of 2M + 1 times and the
runtime may schedule the independent branches together.

    inputs   x (B, C, h, w), t (B,) int64, context_<m> (B, L_m, D_m) per modality m,
             [with the combine: noise (B, C, h, w), row (6,) the step's table row,
              decay (M,) the step's shaping row, scale (M,)]
    outputs  eps (M, B, C, h, w), logits (M, B, 1, h, w)   [networks only]
             eps (B, C, h, w), x_prev (B, C, h, w)           [with the combine]

The graph is exported from the same modules as the per-network export (`CollaborativeModel.module`, so
guided collaborators and FreeU are inside it) and the combine is `collaborate_reference`, the maths every
other path is checked against. `benchmarks/step_graph.py` measures it against the per-network graphs.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from cdx.defaults import cache_dir
from cdx.kernels import collaborate_reference
from cdx.models.collab import CollaborativeModel


class StepModule(nn.Module):
    """The 2M networks of a step (and the combine when `combine`) as one module with positional inputs."""

    def __init__(self, model: CollaborativeModel, names: Sequence[str], combine: bool, shaped: bool,
                 receiver: int = -1):
        super().__init__()
        self.names, self.combine, self.shaped, self.receiver = list(names), combine, shaped, receiver
        self.unets = nn.ModuleList([model.module(f"{n}_unet") for n in names])
        self.diffusers = nn.ModuleList([model.module(f"{n}_diffuser") for n in names]) if len(names) > 1 else None

    def forward(self, x, t, *rest):
        m = len(self.names)
        contexts = rest[:m]
        eps = torch.stack([u(x, t, c) for u, c in zip(self.unets, contexts)])  # (M, B, C, h, w)
        if self.diffusers is not None:
            logits = torch.stack([d(x, t, c) for d, c in zip(self.diffusers, contexts)])  # (M, B, 1, h, w)
        else:
            logits = torch.zeros((1, x.shape[0], 1, *x.shape[2:]), dtype=x.dtype)
        if not self.combine:
            return eps, logits
        noise, row = rest[m], rest[m + 1]
        decay, scale = (rest[m + 2].unsqueeze(0), rest[m + 3]) if self.shaped else (None, None)
        e, x_prev = collaborate_reference(eps, logits, x, noise, row.unsqueeze(0), 0, decay, scale, self.receiver)
        return e, x_prev


def input_names(names: Sequence[str], combine: bool, shaped: bool) -> list[str]:
    ins = ["x", "t", *[f"context_{n}" for n in names]]
    if combine:
        ins += ["noise", "row"] + (["decay", "scale"] if shaped else [])
    return ins


def example_inputs(model: CollaborativeModel, names, batch: int, combine: bool, shaped: bool,
                   g: torch.Generator) -> dict[str, torch.Tensor]:
    """Fresh random inputs of the step graph's shapes (contexts from each modality's spec)."""
    from cdx.export.spec import network_specs

    cfg = model.cfg
    specs = network_specs(cfg)
    latent = (batch, cfg.latent_channels, *cfg.latent_size)
    feed = {"x": torch.randn(latent, generator=g), "t": torch.randint(0, cfg.timesteps, (batch,), generator=g)}
    for n in names:
        feed[f"context_{n}"] = torch.randn(specs[f"{n}_unet"].inputs[2].concrete(batch), generator=g)
    if combine:
        feed["noise"] = torch.randn(latent, generator=g)
        feed["row"] = torch.rand(6, generator=g) + 0.5
        if shaped:
            feed["decay"] = torch.rand(len(names), generator=g)
            feed["scale"] = torch.rand(len(names), generator=g) * 4 + 1
    return feed


def export_step_graph(model: CollaborativeModel, names: Sequence[str], path: Path, batch: int, combine: bool,
                      shaped: bool, receiver: int = -1, opset: int = 17) -> Path:
    """Export the step to `path` with static shapes for `batch` (written beside it, then renamed)."""
    import onnx

    module = StepModule(model, names, combine, shaped, receiver).eval()
    feed = example_inputs(model, names, batch, combine, shaped, torch.Generator().manual_seed(0))
    outs = ["eps", "x_prev"] if combine else ["eps", "logits"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, tuple(feed.values()), str(tmp), input_names=list(feed), output_names=outs,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def step_graph_path(bundle_digest: str, cfg, names, batch: int, combine: bool, shaped: bool, receiver: int) -> Path:
    """The cache file of a step graph, keyed by the bundle, the config and the graph's own parameters."""
    ident = {"bundle": bundle_digest, "config": cfg.to_dict(), "names": list(names), "batch": batch,
             "combine": combine, "shaped": shaped, "receiver": receiver}
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir() / "step_graph" / f"{key}.onnx"


class StepGraph:
    """One step graph compiled by ONNX Runtime ("onnxruntime") or OpenVINO ("openvino")."""

    def __init__(self, path: Path, runtime: str, threads: int | None = None):
        self.path, self.runtime = Path(path), runtime
        self.threads = threads or os.cpu_count() or 1
        if runtime == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = self.threads, 1
            opts.log_severity_level = 3
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            self.outputs = [o.name for o in self._sess.get_outputs()]
        elif runtime == "openvino":
            import openvino as ov

            core = ov.Core()
            self._compiled = core.compile_model(str(path), "CPU", {
                "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
                "INFERENCE_PRECISION_HINT": "f32", "CACHE_DIR": str(cache_dir() / "openvino" / "step_graph")})
            self._req = self._compiled.create_infer_request()
            self.outputs = [o.name for o in self._sess_outputs(path)]  # OpenVINO may rename them: by position
        else:
            raise ValueError(f"unknown runtime {runtime!r}")

    def __call__(self, feed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feed.items()}
        if self.runtime == "onnxruntime":
            outs = self._sess.run(self.outputs, arrays)
            return {k: torch.from_numpy(o) for k, o in zip(self.outputs, outs)}
        self._req.infer(arrays, share_inputs=True)
        return {k: torch.from_numpy(np.array(self._req.get_output_tensor(j).data)) for j, k in enumerate(self.outputs)}

    @staticmethod
    def _sess_outputs(path: Path):
        import onnx

        return onnx.load(str(path), load_external_data=False).graph.output
