"""TensorRT backend: profiles, the engine manifest and its refusals, build planning, the tolerance check
and the exact head-padding rewrite (through ONNX Runtime) run everywhere; what polygraphy does for the
build and the comparisons is tested for real in test_polygraphy.py. Building, running, refitting and
graph-capturing engines needs TensorRT and a GPU; those tests skip, saying so, where they are absent.
Nothing here stands in for TensorRT."""
from __future__ import annotations

import copy
import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cdx.backends.trt import (available, build_engines, cache_key, check_engine_manifest, parse_batch, plan_builds,
                              profiles_for, read_engine_manifest, tensorrt_version, timing_cache_name)
from cdx.backends.trt.builder import plan_entry
from cdx.backends.trt.manifest import MANIFEST, build_header, read_onnx_manifest, record_engine
from cdx.backends.trt.profiles import profiles_to_json
from cdx.backends.trt.verify import check_errors
from cdx.errors import CdxError, InputError, StaleArtifactError
from cdx.export.head_pad import head_dims, pad_attention_heads, padded_dim
from cdx.export.onnx_export import export_network, random_inputs
from cdx.export.spec import network_specs
from cdx.models.collab import CollaborativeModel
from cdx.models.config import ModelConfig, preset
from cdx.models.text_encoder import TextEncoder, TextEncoderConfig
from cdx.models.unet import UNet, UNetConfig

GPU = ("NVIDIA H100 80GB HBM3", (9, 0))
TRT = "10.9.0.34"
NO_TRT = "TensorRT is not installed (no wheel reachable on this machine)"


def rel_err(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def placeholder_graph(spec, path: Path, value: float = 0.0) -> None:
    """A valid ONNX graph with the spec's inputs and outputs that computes constants `value`: for the
    manifest bookkeeping, which reads a graph's inputs and outputs and hashes its bytes."""
    import onnx
    from onnx import TensorProto, helper

    dt = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    nodes, outputs = [], []
    for t in spec.outputs:
        shape = helper.make_tensor(f"{t.name}_shape", TensorProto.INT64, [len(t.shape)], list(t.concrete(1)))
        nodes += [helper.make_node("Constant", [], [f"{t.name}_shape"], value=shape),
                  helper.make_node("ConstantOfShape", [f"{t.name}_shape"], [t.name],
                                   value=helper.make_tensor("v", dt[t.dtype], [1], [value]))]
        outputs.append(helper.make_tensor_value_info(t.name, dt[t.dtype], list(t.shape)))
    inputs = [helper.make_tensor_value_info(t.name, dt[t.dtype], list(t.shape)) for t in spec.inputs]
    graph = helper.make_graph(nodes, spec.name, inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def write_onnx_manifest(root: Path, manifest: dict) -> None:
    """manifest.json as cdx.export writes it (with its digest): what a re-export leaves behind."""
    from cdx.export.manifest import manifest_digest

    manifest = {k: v for k, v in manifest.items() if k != "digest"}
    (root / "manifest.json").write_text(json.dumps({**manifest, "digest": manifest_digest(manifest)}, indent=1))


def reexport(root: Path, name: str, value: float) -> None:
    """`name` exported again (a placeholder computing `value`), its manifest entry updated."""
    om = json.loads((root / "manifest.json").read_text())
    spec = network_specs(ModelConfig.from_dict(om["config"]))[name]
    placeholder_graph(spec, root / f"{name}.onnx", value)
    om["networks"][name]["sha256"] = hashlib.sha256((root / f"{name}.onnx").read_bytes()).hexdigest()
    write_onnx_manifest(root, om)


def onnx_folder(root: Path, cfg, exported=(), model=None) -> Path:
    """An ONNX export folder in the layout of cdx.export: {network}.onnx per spec and manifest.json.

    The networks in `exported` are exported from `model` by cdx.export's exporter; the others are
    placeholder graphs with the spec's inputs and outputs."""
    specs = network_specs(cfg)
    root.mkdir(parents=True, exist_ok=True)
    networks = {}
    for name, spec in specs.items():
        path = root / f"{name}.onnx"
        if name in exported:
            export_network(model, spec, path, 17)
        else:
            placeholder_graph(spec, path)
        io = lambda ts: [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in ts]  # noqa: E731
        networks[name] = {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                          "inputs": io(spec.inputs), "outputs": io(spec.outputs)}
    write_onnx_manifest(root, {"format": "cdx-onnx", "version": 1, "opset": 17, "bundle_hash": "b" * 64,
                               "config": cfg.to_dict(), "networks": networks})
    return root


def record_placeholder_plans(onnx_dir, out_dir, **kw) -> dict:
    """Plan a build and record each job in the manifest, with placeholder bytes where a plan would be.

    No TensorRT runs here and nothing stands in for it: this exercises cdx's own manifest bookkeeping."""
    header, jobs, _ = plan_builds(onnx_dir, out_dir, TRT, GPU, **kw)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    manifest = None
    for job in jobs:
        tmp = Path(out_dir) / f".{job.file}.tmp"
        tmp.write_bytes(f"placeholder plan {job.key}".encode())
        manifest = record_engine(out_dir, header, job.name, plan_entry(job, tmp), plan_tmp=tmp)
    return manifest


@pytest.fixture
def tiny_onnx(tmp_path):
    return onnx_folder(tmp_path / "onnx", preset("tiny"))


# ---------------------------------------------------------------- profiles and cache keys

def test_trt_profiles_follow_the_specs():
    specs = network_specs(preset("tiny"))
    for name, spec in specs.items():
        prof = profiles_for(spec, (1, 2, 4))
        assert list(prof) == [t.name for t in spec.inputs], name
        for t in spec.inputs:
            assert prof[t.name] == (t.concrete(1), t.concrete(2), t.concrete(4))
    prof = profiles_for(specs["text_unet"], (1, 2, 4))
    assert prof["x"] == ((1, 3, 16, 16), (2, 3, 16, 16), (4, 3, 16, 16))
    assert prof["context"][2] == (4, 77, 64) and prof["t"][0] == (1,)
    static = profiles_for(specs["mask_encoder"], (1, 3, 4), static=True)
    assert static["mask"] == ((3, 19, 1024),) * 3


@pytest.mark.parametrize("bad", [(0, 1, 4), (2, 1, 4), (1, 5, 4), ("a", 1, 2)])
def test_trt_profiles_refuse_bad_batch(bad):
    with pytest.raises(InputError):
        profiles_for(network_specs(preset("tiny"))["text_unet"], bad)


def test_trt_parse_batch():
    assert parse_batch("1,2,8") == (1, 2, 8)
    assert parse_batch("4") == (4, 4, 4)
    for bad in ("1,2", "x", "4,2,1", "1,,2"):
        with pytest.raises(InputError):
            parse_batch(bad)


def test_trt_cache_key_depends_on_every_build_input():
    prof = profiles_to_json(profiles_for(network_specs(preset("tiny"))["text_unet"], (1, 1, 4)))
    base = dict(network="text_unet", onnx_sha256="a" * 64, trt_version=TRT, gpu=GPU, precision="fp16",
                profiles=prof, refittable=False)
    key = cache_key(**base)
    assert key == cache_key(**{**base, "gpu": ("NVIDIA H100 80GB HBM3", "9.0")})  # same GPU, other spelling
    assert key == cache_key(**{**base, "profiles": dict(reversed(list(prof.items())))})
    other_prof = profiles_to_json(profiles_for(network_specs(preset("tiny"))["text_unet"], (1, 2, 4)))
    for change in ({"network": "mask_unet"}, {"onnx_sha256": "b" * 64}, {"trt_version": "10.8.0"},
                   {"gpu": ("NVIDIA A100", (8, 0))}, {"precision": "fp32"}, {"profiles": other_prof},
                   {"refittable": True}):
        assert cache_key(**{**base, **change}) != key, change
    assert timing_cache_name(TRT, GPU) == timing_cache_name(TRT, GPU)
    assert timing_cache_name(TRT, GPU) != timing_cache_name("10.8.0", GPU)


# ---------------------------------------------------------------- build planning and the manifest

def test_trt_plan_builds_precision_profiles_and_subset(tiny_onnx, tmp_path):
    _, jobs, current = plan_builds(tiny_onnx, tmp_path / "eng", TRT, GPU, vae_fp32=True)
    assert current == [] and [j.name for j in jobs] == list(network_specs(preset("tiny")))
    prec = {j.name: j.precision for j in jobs}
    assert prec["vae_decoder"] == prec["vae_encoder"] == "fp32"
    assert {prec[n] for n in prec if not n.startswith("vae")} == {"fp16"}
    _, jobs, _ = plan_builds(tiny_onnx, tmp_path / "eng", TRT, GPU, fp16=False, networks=["text_unet"])
    assert [(j.name, j.precision) for j in jobs] == [("text_unet", "fp32")]
    assert jobs[0].profiles["x"][2] == (4, 3, 16, 16)
    with pytest.raises(InputError, match="no ONNX for"):
        plan_builds(tiny_onnx, tmp_path / "eng", TRT, GPU, networks=["sketch_unet"])


def test_trt_plan_builds_refuses_a_broken_export(tmp_path):
    onnx = onnx_folder(tmp_path / "onnx", preset("tiny"))
    (onnx / "text_unet.onnx").unlink()
    with pytest.raises(StaleArtifactError, match="cdx export"):
        plan_builds(onnx, tmp_path / "eng", TRT, GPU)
    with pytest.raises(CdxError, match="cdx export"):
        plan_builds(tmp_path / "nowhere", tmp_path / "eng", TRT, GPU)


def test_trt_manifest_records_the_build_and_skips_current_plans(tiny_onnx, tmp_path):
    out = tmp_path / "eng"
    record_placeholder_plans(tiny_onnx, out, vae_fp32=True, batch=(1, 2, 4))
    m = check_engine_manifest(out, tiny_onnx, gpu=GPU, trt_version=TRT, verify_plans=True)
    assert m == read_engine_manifest(out)
    assert m["tensorrt"] == TRT and m["gpu"] == {"name": GPU[0], "compute_capability": "9.0"}
    assert m["precision"] == "fp16" and m["vae_fp32"] is True and m["refittable"] is False
    assert m["onnx_manifest_sha256"] == read_onnx_manifest(tiny_onnx)[1]
    assert m["networks"]["text_unet"]["profiles"]["x"] == [[1, 3, 16, 16], [2, 3, 16, 16], [4, 3, 16, 16]]
    onnx_entry = read_onnx_manifest(tiny_onnx)[0]["networks"]["text_unet"]
    assert m["networks"]["text_unet"]["onnx_sha256"] == onnx_entry["sha256"]
    # rerun with the same settings: nothing to build
    _, jobs, current = plan_builds(tiny_onnx, out, TRT, GPU, vae_fp32=True, batch=(1, 2, 4))
    assert jobs == [] and len(current) == len(m["networks"])
    # other settings, or a damaged plan, rebuild what they touch
    _, jobs, _ = plan_builds(tiny_onnx, out, TRT, GPU, vae_fp32=False, batch=(1, 2, 4))
    assert sorted(j.name for j in jobs) == ["vae_decoder", "vae_encoder"]
    (out / "mask_unet.plan").write_bytes(b"damaged plan of same size!"[: m["networks"]["mask_unet"]["bytes"]])
    _, jobs, _ = plan_builds(tiny_onnx, out, TRT, GPU, vae_fp32=True, batch=(1, 2, 4))
    assert [j.name for j in jobs] == ["mask_unet"]
    _, jobs, _ = plan_builds(tiny_onnx, out, "10.10.0", GPU, vae_fp32=True, batch=(1, 2, 4))
    assert len(jobs) == len(m["networks"])


def _corrupt(out: Path, onnx: Path, how: str):
    path = out / MANIFEST
    m = json.loads(path.read_text())
    if how == "truncated":
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif how == "empty object":
        path.write_text("{}")
    elif how == "missing":
        path.unlink()
    elif how == "other format":
        path.write_text(json.dumps({**m, "format": "cdx-onnx"}))
    elif how == "no networks key":
        path.write_text(json.dumps({k: v for k, v in m.items() if k != "networks"}))
    elif how == "gpu not a record":
        path.write_text(json.dumps({**m, "gpu": "H100"}))
    elif how == "tampered entry":
        m["networks"]["text_unet"]["precision"] = "fp32"
        path.write_text(json.dumps(m))
    elif how == "plan missing":
        (out / "text_unet.plan").unlink()
    elif how == "plan truncated":
        (out / "text_unet.plan").write_bytes(b"x")
    elif how == "onnx changed":
        reexport(onnx, "text_unet", 1.0)
    elif how == "onnx config changed":  # exported again, from a model of another config
        cfg = json.loads((onnx / "manifest.json").read_text())["config"]
        onnx_folder(onnx, ModelConfig.from_dict({**cfg, "latent_size": [32, 32]}))


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty object", "missing", "other format", "no networks key",
                                 "gpu not a record",
                                 "tampered entry", "plan missing", "plan truncated", "onnx changed",
                                 "onnx config changed"])
def test_trt_refuses_stale_or_corrupted_engines(tiny_onnx, tmp_path, how):
    out = tmp_path / "eng"
    record_placeholder_plans(tiny_onnx, out)
    _corrupt(out, tiny_onnx, how)
    with pytest.raises(StaleArtifactError, match="cdx build-engine"):
        check_engine_manifest(out, tiny_onnx, gpu=GPU, trt_version=TRT)


@pytest.mark.parametrize("gpu,trt", [(("NVIDIA A100-SXM4-80GB", (8, 0)), TRT), (("NVIDIA H100 80GB HBM3", (8, 9)), TRT),
                                     (("NVIDIA H200", (9, 0)), TRT), (GPU, "10.8.0.43"), (GPU, "10.9.0")])
def test_trt_refuses_engines_of_another_gpu_or_tensorrt(tiny_onnx, tmp_path, gpu, trt):
    out = tmp_path / "eng"
    record_placeholder_plans(tiny_onnx, out)
    with pytest.raises(StaleArtifactError, match="cdx build-engine") as e:
        check_engine_manifest(out, tiny_onnx, gpu=gpu, trt_version=trt)
    assert ("TensorRT" in str(e.value)) == (trt != TRT)


def test_trt_partial_rebuild_after_a_new_export_still_refuses_the_other_stale_plans(tiny_onnx, tmp_path):
    out = tmp_path / "eng"
    record_placeholder_plans(tiny_onnx, out)
    for name in ("text_unet", "mask_unet"):  # a re-export changed two networks
        reexport(tiny_onnx, name, 2.0)
    m = record_placeholder_plans(tiny_onnx, out, networks=["text_unet"])  # only one is rebuilt
    assert m["onnx_manifest_sha256"] == read_onnx_manifest(tiny_onnx)[1]
    with pytest.raises(StaleArtifactError, match="the ONNX of mask_unet changed"):
        check_engine_manifest(out, tiny_onnx, gpu=GPU, trt_version=TRT)
    check_engine_manifest(out, tiny_onnx, gpu=GPU, trt_version=TRT, networks=["text_unet", "text_diffuser"])


def test_trt_external_data_is_part_of_the_onnx_identity(tiny_onnx, tmp_path):
    """A re-export with new weights can leave a large model's .onnx unchanged and change only its .data."""
    om = json.loads((tiny_onnx / "manifest.json").read_text())
    (tiny_onnx / "text_unet.onnx.data").write_bytes(b"weights")
    om["networks"]["text_unet"]["data"] = {"text_unet.onnx.data": hashlib.sha256(b"weights").hexdigest()}
    write_onnx_manifest(tiny_onnx, om)
    out = tmp_path / "eng"
    m = record_placeholder_plans(tiny_onnx, out)
    assert m["networks"]["text_unet"]["onnx_data_sha256"] == om["networks"]["text_unet"]["data"]
    (tiny_onnx / "text_unet.onnx.data").write_bytes(b"new weights")  # the .onnx itself is unchanged
    om["networks"]["text_unet"]["data"] = {"text_unet.onnx.data": hashlib.sha256(b"new weights").hexdigest()}
    write_onnx_manifest(tiny_onnx, om)
    _, jobs, _ = plan_builds(tiny_onnx, out, TRT, GPU)
    assert [j.name for j in jobs] == ["text_unet"]
    with pytest.raises(StaleArtifactError, match="the ONNX of text_unet changed"):
        check_engine_manifest(out, tiny_onnx, gpu=GPU, trt_version=TRT)


def test_trt_build_refuses_onnx_files_modified_after_export(tiny_onnx, tmp_path):
    (tiny_onnx / "mask_unet.onnx").write_bytes(b"edited by hand")
    with pytest.raises(StaleArtifactError, match="cdx export"):
        plan_builds(tiny_onnx, tmp_path / "eng", TRT, GPU)


def test_trt_refusal_repeats_the_recorded_build_flags(tiny_onnx, tmp_path):
    out = tmp_path / "eng"
    record_placeholder_plans(tiny_onnx, out, vae_fp32=True, refittable=True, batch=(1, 2, 8))
    with pytest.raises(StaleArtifactError) as e:
        check_engine_manifest(out, tiny_onnx, gpu=GPU, trt_version="10.8.0")
    assert f"`cdx build-engine --onnx {tiny_onnx} --out {out} --fp16 --vae-fp32 --refittable --batch 1,2,8`" \
        in str(e.value)


def test_trt_onnx_manifest_rewrite_with_same_networks_is_accepted(tiny_onnx, tmp_path):
    out = tmp_path / "eng"
    record_placeholder_plans(tiny_onnx, out)
    om = json.loads((tiny_onnx / "manifest.json").read_text())
    (tiny_onnx / "manifest.json").write_text(json.dumps(om, indent=4))  # other bytes, same content
    check_engine_manifest(out, tiny_onnx, gpu=GPU, trt_version=TRT)
    with pytest.raises(StaleArtifactError, match="no engine for 'sketch_unet'"):
        check_engine_manifest(out, gpu=GPU, trt_version=TRT, networks=["sketch_unet"])


def _record_many(out: str, prefix: str, n: int) -> None:
    header = {"format": "cdx-trt", "version": 1, "tensorrt": TRT, "gpu": {"name": GPU[0], "compute_capability": "9.0"},
              "onnx_manifest_sha256": "o" * 64, "bundle_hash": None, "config": {"preset": "tiny"}}
    for i in range(n):
        data = f"{prefix}{i}".encode() * 100
        tmp = Path(out) / f".{prefix}{i}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        entry = {"file": f"{prefix}{i}.plan", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                 "kind": "unet", "onnx_sha256": "x", "precision": "fp16", "profiles": {}, "refittable": False,
                 "cache_key": "k"}
        record_engine(out, header, f"{prefix}{i}", entry, plan_tmp=tmp)


def test_trt_concurrent_builds_into_one_folder_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record_many, args=(str(tmp_path), p, 25)) for p in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    m = read_engine_manifest(tmp_path)
    assert len(m["networks"]) == 50
    for name, e in m["networks"].items():
        assert hashlib.sha256((tmp_path / e["file"]).read_bytes()).hexdigest() == e["sha256"], name
    assert not list(tmp_path.glob(".*.tmp"))


def test_trt_a_build_for_another_tensorrt_drops_the_old_entries(tiny_onnx, tmp_path):
    out = tmp_path / "eng"
    record_placeholder_plans(tiny_onnx, out)
    onnx, sha = read_onnx_manifest(tiny_onnx)
    header = build_header(onnx, sha, "10.10.0", GPU)
    entry = dict(read_engine_manifest(out)["networks"]["text_unet"])
    m = record_engine(out, header, "text_unet", entry)
    assert list(m["networks"]) == ["text_unet"] and m["tensorrt"] == "10.10.0"


# ---------------------------------------------------------------- availability, verification helpers

def test_trt_availability_is_reported_in_one_line():
    ok, reason = available()
    assert isinstance(ok, bool) and reason and "\n" not in reason
    if tensorrt_version() is None:
        assert not ok and reason == "TensorRT is not installed: pip install tensorrt (needs an NVIDIA GPU and driver)"


def test_trt_check_errors_uses_the_tolerance_of_each_precision():
    manifest = {"networks": {"text_unet": {"precision": "fp16"}, "vae_decoder": {"precision": "fp32"}}}
    check_errors({"text_unet": 1e-2, "vae_decoder": 1e-3}, manifest)
    with pytest.raises(CdxError, match="vae_decoder") as e:
        check_errors({"text_unet": 1e-2, "vae_decoder": 1e-2}, manifest)
    assert "text_unet" not in str(e.value)
    with pytest.raises(CdxError, match="text_unet"):
        check_errors({"text_unet": float("nan")}, manifest)
    with pytest.raises(CdxError, match="text_unet"):
        check_errors({"text_unet": float("inf")}, manifest)


# ---------------------------------------------------------------- exact head padding

def official_like_unet(out_channels: int = 1) -> UNet:
    """32 heads as in the official models; channels 96 and 160 give head sizes 3 and 5 (the diffusers')."""
    cfg = UNetConfig(in_channels=3, out_channels=out_channels, model_channels=32, channel_mult=(1, 3, 5),
                     num_res_blocks=1, attention_resolutions=(2, 4), num_heads=32, context_dim=64)
    return UNet(cfg).eval()


def unet_args(batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g),
            torch.randn(batch, 77, 64, generator=g))


def test_head_pad_sizes():
    assert [padded_dim(d) for d in (12, 18, 30, 2, 3, 5, 16, 64)] == [16, 24, 32, 16, 16, 16, 16, 64]
    assert [padded_dim(d, 16) for d in (12, 18, 30, 3)] == [16, 32, 32, 16]
    assert padded_dim(3, 8, min_dim=0) == 8


def test_head_pad_tiny_preset_is_already_aligned_and_pads_exactly_when_asked():
    cfg = preset("tiny")
    torch.manual_seed(0)
    for m in cfg.modalities[:1]:
        for net in (UNet(m.unet).eval(), UNet(m.diffuser).eval()):
            dims = set(head_dims(net).values())
            assert dims in ({32}, {16})  # the tiny preset's head sizes are multiples of 16 already
            padded = copy.deepcopy(net)
            assert pad_attention_heads(padded) == {}
            assert set(pad_attention_heads(padded, multiple=24).values()) == {(d, 48 if d == 32 else 24) for d in dims}
            args = unet_args()
            with torch.no_grad():
                assert rel_err(padded(*args), net(*args)) < 1e-5


@pytest.mark.parametrize("prescale_q", [False, True])
def test_head_pad_official_head_sizes_are_exact_in_torch(prescale_q):
    torch.manual_seed(1)
    net = official_like_unet()
    assert set(head_dims(net).values()) == {3, 5}
    padded = copy.deepcopy(net)
    changed = pad_attention_heads(padded, prescale_q=prescale_q)
    assert set(changed.values()) == {(3, 16), (5, 16)} and set(head_dims(padded).values()) == {16}
    args = unet_args(3)
    with torch.no_grad():
        assert rel_err(padded(*args), net(*args)) < 1e-5
    for name, attn in padded.named_modules():
        if name in changed:
            d, h = changed[name][0], attn.heads
            assert attn.scale == (1.0 if prescale_q else d ** -0.5)  # the unpadded softmax scale is kept
            for lin in (attn.to_q, attn.to_k, attn.to_v):
                assert not lin.weight.reshape(h, 16, -1)[:, d:].any()
            assert not attn.to_out[0].weight.reshape(-1, h, 16)[:, :, d:].any()
    assert pad_attention_heads(padded) == {}  # idempotent


def test_head_pad_text_encoder_attention_is_exact():
    torch.manual_seed(2)
    enc = TextEncoder(TextEncoderConfig(n_embed=64, n_layer=2, vocab_size=1000, heads=32, dim_head=2)).eval()
    padded = copy.deepcopy(enc)
    assert set(pad_attention_heads(padded).values()) == {(2, 16)}
    tokens = torch.randint(0, 1000, (2, 77))
    with torch.no_grad():
        assert rel_err(padded(tokens), enc(tokens)) < 1e-5


def test_head_pad_is_exact_through_onnx_runtime(tmp_path):
    """Padded UNet (head sizes 3/5 -> 16) and text encoder (2 -> 16), exported at opset 17 and run in
    ONNX Runtime at a batch unlike the export's, against the unpadded torch modules."""
    import onnxruntime as ort

    torch.manual_seed(3)
    net = official_like_unet()
    padded = copy.deepcopy(net)
    pad_attention_heads(padded)
    path = tmp_path / "unet.onnx"
    torch.onnx.export(padded, unet_args(2), str(path), input_names=["x", "t", "context"], output_names=["out"],
                      dynamic_axes={n: {0: "batch"} for n in ("x", "t", "context", "out")}, opset_version=17,
                      dynamo=False)
    args = unet_args(3, seed=5)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": args[0].numpy(), "t": args[1].numpy(), "context": args[2].numpy()})[0]
    with torch.no_grad():
        assert rel_err(got, net(*args)) <= 1e-4

    enc = TextEncoder(TextEncoderConfig(n_embed=64, n_layer=2, vocab_size=1000, heads=32, dim_head=2)).eval()
    padded = copy.deepcopy(enc)
    pad_attention_heads(padded)
    path = tmp_path / "text.onnx"
    torch.onnx.export(padded, (torch.randint(0, 1000, (2, 77)),), str(path), input_names=["tokens"],
                      output_names=["context"], dynamic_axes={"tokens": {0: "batch"}, "context": {0: "batch"}},
                      opset_version=17, dynamo=False)
    tokens = torch.randint(0, 1000, (3, 77))
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"tokens": tokens.numpy()})[0]
    with torch.no_grad():
        assert rel_err(got, enc(tokens)) <= 1e-4


# ---------------------------------------------------------------- TensorRT and a GPU

def need_tensorrt():
    ok, reason = available()
    if not ok:
        pytest.skip(NO_TRT if tensorrt_version() is None else reason)


@pytest.fixture
def tiny_engines(tmp_path):
    """Engines built by TensorRT from exported tiny networks (mask encoder, UNet, diffuser, VAE decoder)."""
    need_tensorrt()
    cfg = preset("tiny")
    torch.manual_seed(0)
    model = CollaborativeModel(cfg).eval()
    nets = ["mask_encoder", "mask_unet", "mask_diffuser", "vae_decoder"]
    onnx = onnx_folder(tmp_path / "onnx", cfg, nets, model)
    out = tmp_path / "eng"
    report = build_engines(onnx, out, fp16=True, batch=(1, 2, 4), vae_fp32=True, refittable=True, networks=nets)
    assert set(report.values()) == {"built"}
    return model, onnx, out


@pytest.mark.tensorrt
def test_trt_build_run_verify_and_skip(tiny_engines):
    from cdx.backends.trt import TensorRTRunner, check_errors, verify_engines

    model, onnx, out = tiny_engines
    m = check_engine_manifest(out, onnx, verify_plans=True)
    assert m["networks"]["vae_decoder"]["precision"] == "fp32" and m["vae_fp32"]
    assert set(build_engines(onnx, out, fp16=True, batch=(1, 2, 4), vae_fp32=True, refittable=True,
                             networks=list(m["networks"])).values()) == {"current"}
    errors = verify_engines(out, onnx)
    check_errors(errors, m)
    runner = TensorRTRunner(out, onnx)
    spec = runner.specs["mask_diffuser"]
    g = torch.Generator().manual_seed(0)
    for batch in (1, 3, 4):
        feeds = random_inputs(spec, batch, g)
        got = runner.run("mask_diffuser", {k: v.cuda() for k, v in feeds.items()})["logits"]
        with torch.no_grad():
            ref = model.module("mask_diffuser")(*feeds.values())
        assert got.shape == ref.shape and rel_err(got.cpu(), ref) < 2e-2
    with pytest.raises(InputError, match="--batch"):
        runner.run("mask_diffuser", {k: v.cuda() for k, v in random_inputs(spec, 5, g).items()})


@pytest.mark.tensorrt
def test_trt_enqueue_does_not_synchronise_and_is_graph_capturable(tiny_engines):
    from cdx.backends.trt import TensorRTRunner

    _, onnx, out = tiny_engines
    runner = TensorRTRunner(out, onnx, networks=["mask_diffuser"])
    spec = runner.specs["mask_diffuser"]
    feeds = {k: v.cuda() for k, v in random_inputs(spec, 2, torch.Generator().manual_seed(0)).items()}
    stream = torch.cuda.Stream()
    expect = runner.run("mask_diffuser", feeds)["logits"]
    runner.enqueue("mask_diffuser", feeds, stream)  # warm-up with the captured shapes
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        outs = runner.enqueue("mask_diffuser", feeds, stream)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(outs["logits"], expect)


@pytest.mark.tensorrt
def test_trt_refit_and_refusals(tiny_engines):
    import onnx as onnx_lib
    from onnx import numpy_helper

    from cdx.backends.trt import TensorRTRunner

    _, onnx, out = tiny_engines
    runner = TensorRTRunner(out, onnx, networks=["mask_encoder"])
    spec = runner.specs["mask_encoder"]
    feeds = {k: v.cuda() for k, v in random_inputs(spec, 2, torch.Generator().manual_seed(0)).items()}
    before = runner.run("mask_encoder", feeds)["context"]
    inits = {t.name: numpy_helper.to_array(t) for t in onnx_lib.load(str(onnx / "mask_encoder.onnx")).graph.initializer}
    assert runner.refit("mask_encoder", {k: v * 2 for k, v in inits.items()}, strict=False) > 0
    after = runner.run("mask_encoder", feeds)["context"]
    assert rel_err(after.cpu(), 2 * before.cpu()) < 2e-2
    assert runner.refit_from_onnx("mask_encoder", onnx / "mask_encoder.onnx") > 0
    with pytest.raises(StaleArtifactError, match="cdx build-engine"):
        check_engine_manifest(out, onnx, trt_version="0.0.0")


@pytest.mark.tensorrt
def test_trt_engines_are_built_as_polygraphy_was_asked(tiny_engines):
    """The loaders' settings reach TensorRT: profiles, refit, precision and the timing cache."""
    from cdx.backends.trt import TensorRTRunner

    _, onnx, out = tiny_engines
    m = check_engine_manifest(out, onnx, verify_plans=True)
    runner = TensorRTRunner(out, onnx)
    for name, entry in m["networks"].items():
        eng = runner._engine(name).engine
        assert eng.refittable, name
        for inp, shapes in entry["profiles"].items():
            assert [list(s) for s in eng.get_tensor_profile_shape(inp, 0)] == shapes, (name, inp)
    caches = list(out.glob("timing-*.cache"))
    assert len(caches) == 1 and caches[0].stat().st_size > 0
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.lock"))


@pytest.mark.tensorrt
def test_trt_step_captured_through_cuda_python_matches_the_plain_loop(tiny_engines):
    """GraphedLoop's step (engine, device step index, fused update) captured with cudaStreamBeginCapture
    and replayed with cudaGraphLaunch gives the plain loop's result."""
    from cdx.sampling.graph import capture as CG
    from cdx.sampling.graph import plan as GP
    from cdx.sampling.loop import draw_noise, sample
    from cdx.models.schedule import alphas_cumprod, linear_betas, make_table
    from cdx.backends.trt import TensorRTRunner
    from cdx.backends.trt.graph import CudartGraph, cudart

    try:
        cudart()
    except CdxError as e:
        pytest.skip(str(e))
    _, onnx, out = tiny_engines
    runner = TensorRTRunner(out, onnx, networks=["mask_encoder", "mask_unet"])
    spec = runner.specs["mask_unet"]
    table = make_table(alphas_cumprod(linear_betas()), 4, "ddim", 0.0)
    x_T, noise = draw_noise(3, 2, spec.inputs[0].shape[1:], table.num_steps)
    feeds = random_inputs(runner.specs["mask_encoder"], 2, torch.Generator().manual_seed(1))
    ctx = runner.run("mask_encoder", {k: v.cuda() for k, v in feeds.items()})["context"]
    x_T, noise = x_T.cuda(), noise.cuda()
    ref = sample(runner, ["mask"], [ctx], x_T, noise, table)
    plan = GP.plan_loop(runner, ["mask"], [ctx], x_T, noise, table)
    loop = CG.GraphedLoop(runner, plan, mode="step")
    got = loop(x_T, noise, [ctx], table)
    assert isinstance(loop.graph, CudartGraph), "GraphedLoop.prepare does not capture with runner.capture yet"
    assert rel_err(got.z0.cpu(), ref.z0.cpu()) < 1e-3

