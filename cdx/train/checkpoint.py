"""The files of training: checkpoints (the whole training state, to resume) and stage outputs (a stage's
trained EMA weights with its manifest), each one safetensors file written atomically on rank 0.

A checkpoint holds the tensors `model.*`, `ema.*`, `opt.<param index>.<name>`, and a JSON document under the
metadata key `cdx_train` (step, global batch, optimizer hyper-parameters, stage metadata); no RNG state, as
every step's random values follow from (seed, step). Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import nn

from ..errors import CdxError, InputError, StaleArtifactError
from ..io import atomic_path, loads_json
from . import dist

CKPT_FORMAT = "cdx-train-checkpoint"
CKPT_VERSION = 2


def _flat_state(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    step: int, meta: dict | None = None, global_batch: int | None = None) -> None:
    """Write the whole training state to one safetensors file, atomically (temp file + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {**_flat_state("model", model), **_flat_state("ema", ema)}
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for name, v in st.items():
            v = v if torch.is_tensor(v) else torch.tensor(v)
            tensors[f"opt.{idx}.{name}"] = v.detach().cpu().contiguous().clone()
    doc = {"format": CKPT_FORMAT, "version": CKPT_VERSION, "step": int(step), "global_batch": global_batch,
           "param_groups": sd["param_groups"], "meta": meta or {}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"cdx_train": json.dumps(doc)})


def _read_with_doc(path: Path, key: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Every tensor of a safetensors file and the JSON document stored under metadata `key` ({} if none)."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(key)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, loads_json(raw) if raw else {}  # malformed or nested too deeply: ValueError


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, document) of a checkpoint; a file that is not one is refused."""
    path = Path(path)
    try:
        tensors, doc = _read_with_doc(path, "cdx_train")
    except (SafetensorError, OSError, ValueError) as e:
        raise StaleArtifactError(f"{path}: unreadable checkpoint ({e}); delete it or train without --resume") from None
    if not isinstance(doc, dict) or doc.get("format") != CKPT_FORMAT or doc.get("version") != CKPT_VERSION:
        raise StaleArtifactError(f"{path}: not a version-{CKPT_VERSION} cdx training checkpoint; delete it or "
                                 "train without --resume")
    return tensors, doc


def _sub(tensors: dict, prefix: str) -> dict:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_checkpoint(path: str | os.PathLike, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
                    expect_meta: dict | None = None, absent: dict | None = None,
                    global_batch: int | None = None) -> int:
    """Restore model, EMA and optimizer states in place; returns the saved step. Every key of `expect_meta`
    must have that value in the checkpoint's meta (`absent[key]`, when the key is missing: what a checkpoint
    older than the key meant), and the global batch must be the checkpoint's."""
    tensors, doc = read_checkpoint(path)
    for key, want in (expect_meta or {}).items():
        got = doc["meta"].get(key, (absent or {}).get(key))
        if got != want:
            raise StaleArtifactError(f"{path}: checkpoint was made with a different {key} ({got!r}, now "
                                     f"{want!r}); delete it or train without --resume")
    if global_batch is not None and doc.get("global_batch") not in (None, global_batch):
        raise InputError(f"{path}: checkpoint was made with a global batch of {doc['global_batch']}; resume with "
                         f"--batch {doc['global_batch']} (any number of processes)")
    try:
        model.load_state_dict(_sub(tensors, "model"), strict=True)
        ema.load_state_dict(_sub(tensors, "ema"), strict=True)
    except RuntimeError as e:
        raise StaleArtifactError(f"{path}: checkpoint does not match the model ({str(e).splitlines()[0]})") from None
    state: dict[int, dict] = {}
    for k, v in _sub(tensors, "opt").items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    return int(doc["step"])



# ---------------------------------------------------------------------------------------------
# stage outputs: the trained (EMA) weights of a stage with a JSON manifest, one safetensors file


def save_stage(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict) -> None:
    """Write a stage's weights and its manifest (under the metadata key `cdx_stage`) atomically: on rank 0,
    which the other processes wait for."""
    path = Path(path)
    if dist.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous().clone() if v.is_floating_point() else v.detach().cpu()
                   for k, v in state.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"cdx_stage": json.dumps(meta)})
    dist.barrier()


def load_stage(path: str | os.PathLike, stage: str, rebuild: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(weights, manifest) of a stage output; a missing or foreign file is refused, saying how to make it."""
    path = Path(path)
    if not path.is_file():
        raise CdxError(f"{path}: missing; run `{rebuild}` first")
    try:
        tensors, meta = _read_with_doc(path, "cdx_stage")
    except (SafetensorError, OSError, ValueError) as e:
        raise StaleArtifactError(f"{path}: unreadable ({' '.join(str(e).split())[:200]}); rerun `{rebuild}`") from None
    if not isinstance(meta, dict) or meta.get("stage") != stage:
        raise StaleArtifactError(f"{path}: not a {stage} stage output; rerun `{rebuild}`")
    return tensors, meta


def check_same(path, what: str, got, want, rebuild: str) -> None:
    """Refuse a stage output made for another configuration or from other inputs."""
    if got != want:
        raise StaleArtifactError(f"{path}: made with a different {what}; rerun `{rebuild}`")
