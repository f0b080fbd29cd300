"""8-bit post-training quantization for the OpenVINO backend ("openvino-int8"), with NNCF.

The networks the loop calls every step (the collaborators and the diffusers) are quantized to int8 weights
and activations; the encoders and the VAE decoder, which run once per image, stay fp32. NNCF's own
quantizer is used (nncf.quantize with the transformer model type, which keeps softmax and normalisation in
floating point, plus its bias correction): placing quantize/dequantize pairs by hand would mean
re-deriving what it already knows about OpenVINO's int8 kernels.

Calibration is a real generation: the fp32 OpenVINO runner samples `RECIPE["faces"]` synthetic faces (caption
and label map) from a seed stream of their own, not the training (1234), eval-net (7100), test (72000)
or FD-reference (73000) faces, and every per-step network's inputs are recorded at every step.

The quantized models live in the cache, in a folder keyed by the export's manifest digest and the recipe,
written atomically with a manifest of file hashes (`int8.json`) that is checked on every use; a damaged
entry is quantized again in its place, a folder cdx did not write is never touched.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...defaults import cache_subdir
from ...errors import CdxError, StaleArtifactError

FORMAT = "cdx-openvino-int8"
CALIBRATION_SEED = 74000
RECIPE = {"version": 1, "tool": "nncf", "model_type": "transformer", "preset": "mixed", "faces": 16,
          "batch": 8, "steps": 20, "seed": CALIBRATION_SEED, "kinds": ["unet", "diffuser"]}


def nncf_version() -> str | None:
    try:
        import nncf

        return nncf.__version__
    except ImportError:
        return None


def quantized_networks(specs: dict) -> list[str]:
    return [name for name, spec in specs.items() if spec.kind in RECIPE["kinds"]]


class _Recorder:
    """A runner that passes every call through and keeps the inputs of the networks named in `keep`."""

    def __init__(self, runner, keep: list[str]):
        self._runner = runner
        self.feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in keep}

    def __getattr__(self, name):
        return getattr(self._runner, name)

    def run(self, network: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if network in self.feeds:
            self.feeds[network].append({k: v.detach().cpu().numpy().copy() for k, v in inputs.items()})
        return self._runner.run(network, inputs)


def calibration_feeds(runner, recipe: dict = RECIPE) -> dict[str, list[dict[str, np.ndarray]]]:
    """{network: [its inputs at one step of one batch]} from the fp32 runner generating synthetic faces."""
    from ...synth import generate as synth_face
    from ...sampling.pipeline import generate
    from ...sampling.request import make_request

    rec = _Recorder(runner, quantized_networks(runner.specs))
    kinds = {m.kind for m in runner.cfg.modalities}
    faces = [synth_face((recipe["seed"], i)) for i in range(recipe["faces"])]
    for lo in range(0, len(faces), recipe["batch"]):
        part = faces[lo:lo + recipe["batch"]]
        req = make_request(runner.cfg, text=[f.caption for f in part] if "text" in kinds else None,
                           mask=[f.label for f in part] if "mask" in kinds else None,
                           seed=recipe["seed"] + lo, steps=min(recipe["steps"], runner.cfg.timesteps))
        generate(rec, req)
    return rec.feeds


def quantize_network(name: str, model, feeds: list[dict], recipe: dict = RECIPE):
    """`model` (an OpenVINO model) quantized by NNCF on `feeds` with the recipe's preset and model type."""
    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    try:  # NNCF draws rich progress bars on stdout: kept out of cdx's own output
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(model, nncf.Dataset(feeds), preset=nncf.QuantizationPreset(recipe["preset"]),
                                 model_type=nncf.ModelType(recipe["model_type"]), subset_size=len(feeds))
    except Exception as e:  # NNCF's errors are of many types and lines: one line, naming the network
        raise CdxError(f"int8 quantization of {name} failed ({type(e).__name__}: "
                       f"{(str(e).splitlines() or [''])[0][:160]})") from None


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def recipe_key(export_digest: str, recipe: dict) -> str:
    ident = {"export": export_digest, "recipe": recipe}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:24]


def read_int8_manifest(folder: Path, export_digest: str, recipe: dict) -> dict:
    """The folder's manifest, refused (StaleArtifactError) unless it is for this export and recipe and every
    file it lists has its recorded hash."""
    from ...integrity import verified_sha256

    try:
        man = json.loads((folder / "int8.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        raise StaleArtifactError(f"{folder}: no readable int8.json") from None
    if not (isinstance(man, dict) and man.get("format") == FORMAT and man.get("export_digest") == export_digest
            and man.get("recipe") == recipe and isinstance(man.get("files"), dict)
            and isinstance(man.get("networks"), dict)):
        raise StaleArtifactError(f"{folder}/int8.json: malformed, or for another export or recipe")
    got = verified_sha256(folder, list(man["files"]))
    bad = [f for f, digest in man["files"].items() if got[f] != digest]
    if bad:
        raise StaleArtifactError(f"{folder / bad[0]}: missing, truncated or modified since it was written")
    return man


def int8_models(runner, notice: Callable[[str], None] = _stderr, recipe: dict = RECIPE) -> dict[str, Path]:
    """{network: its int8 OpenVINO model (.xml)} for the fp32 `runner`'s export, quantized on first use (a
    minute for the shipped model; `notice` says so)."""
    import openvino as ov

    from ...integrity import file_sha256
    from ...io import atomic_folder
    from ...export.cache import cached_entry

    digest = runner.manifest["digest"]
    key = recipe_key(digest, recipe)

    def verify(folder: Path) -> dict[str, Path]:
        try:
            man = read_int8_manifest(folder, digest, recipe)
        except StaleArtifactError as e:  # cached_entry quantizes again in its place
            notice(f"openvino-int8: {' '.join(str(e).split())}; quantizing again")
            raise
        return {name: folder / f for name, f in man["networks"].items()}

    def build(folder: Path, fresh: bool) -> dict[str, Path]:
        names = quantized_networks(runner.specs)
        notice(f"openvino-int8: calibrating on {recipe['faces']} synthetic faces, {recipe['steps']} steps (first use)")
        feeds = calibration_feeds(runner, recipe)
        with atomic_folder(folder, FORMAT, overwrite=not fresh, keep_existing=fresh, what="the int8 cache") as tmp:
            for name in names:
                notice(f"openvino-int8: quantizing {name} (first use)")
                ov.save_model(quantize_network(name, runner._model(name), feeds[name], recipe), str(tmp / f"{name}.xml"),
                              compress_to_fp16=False)
            files = sorted(p.name for p in tmp.iterdir())
            man = {"format": FORMAT, "export_digest": digest, "recipe": recipe,
                   "networks": {name: f"{name}.xml" for name in names},
                   "files": {f: file_sha256(tmp / f) for f in files}}
            (tmp / "int8.json").write_text(json.dumps(man, indent=1))
        return {name: folder / f"{name}.xml" for name in names}

    return cached_entry(cache_subdir("openvino-int8"), key, FORMAT, verify, build, "int8 cache")
