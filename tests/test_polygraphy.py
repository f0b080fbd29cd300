"""cdx through polygraphy, for real, on a machine without TensorRT: the build's profiles and configs as
polygraphy's own objects (checked against what polygraphy's CLI makes of the flags docs/tensorrt.md
shows), the export and engine comparisons through its ONNX Runtime runner and comparator, its CLI on
saved results, the one-line refusal to build without TensorRT, and cuda-python's error codes. What needs
a GPU skips with "no CUDA device"; nothing here stands in for TensorRT or polygraphy."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("polygraphy", reason="polygraphy is not installed (pip install polygraphy)")

from polygraphy.backend.trt import CreateConfig, Profile  # noqa: E402
from polygraphy.comparator import IterationResult, RunResults  # noqa: E402

from cdx.cli import main  # noqa: E402
from cdx.backends.pytorch.eager import TorchRunner  # noqa: E402
from cdx.backends.trt import available, build_engines, plan_builds  # noqa: E402
from cdx.backends.trt.builder import build_config, polygraphy_flags, polygraphy_profile  # noqa: E402
from cdx.errors import CdxError  # noqa: E402
from cdx.export.onnx_export import random_inputs  # noqa: E402
from cdx.export.spec import network_specs  # noqa: E402
from cdx.export.verify import TOLERANCE, compare_with_onnxrt, verify_export  # noqa: E402
from cdx.models.bundle import load_bundle  # noqa: E402
from cdx.models.config import ModelConfig  # noqa: E402

GPU = ("NVIDIA H100 80GB HBM3", (9, 0))
TRT = "10.9.0.34"
POLYGRAPHY = shutil.which("polygraphy", path=str(Path(sys.executable).parent)) or shutil.which("polygraphy")


def manifest_of(folder: Path) -> dict:
    from cdx.export.manifest import read_export_manifest

    return read_export_manifest(folder)


def ort_outputs(path: Path, inputs: dict) -> dict[str, np.ndarray]:
    """ONNX Runtime directly (not through polygraphy), for an independent reference."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {k: v.numpy() for k, v in inputs.items()})))


def shapes(profile) -> list:
    return [(name, tuple(s.min), tuple(s.opt), tuple(s.max)) for name, s in profile.items()]


@pytest.fixture
def jobs(tiny_export, tmp_path):
    _, planned, _ = plan_builds(tiny_export, tmp_path / "eng", TRT, GPU, batch=(1, 2, 4), vae_fp32=True,
                                refittable=True)
    return {j.name: j for j in planned}


# ---------------------------------------------------------------- the build as polygraphy data

def test_polygraphy_profiles_follow_the_specs(jobs, tiny_export):
    specs = network_specs(ModelConfig.from_dict(manifest_of(tiny_export)["config"]))
    assert set(jobs) == set(specs)
    for name, job in jobs.items():
        profile = polygraphy_profile(job.profiles)
        assert isinstance(profile, Profile)
        assert shapes(profile) == [(t.name, t.concrete(1), t.concrete(2), t.concrete(4)) for t in specs[name].inputs]
    assert "tensorrt" not in sys.modules


def test_polygraphy_config_carries_every_build_setting(jobs, tmp_path):
    cache = tmp_path / "timing.cache"
    for name, job in jobs.items():
        cfg = build_config(job, cache, opt_level=3)
        assert isinstance(cfg, CreateConfig)
        assert cfg.fp16 == (not name.startswith("vae")) and cfg.tf32 and cfg.refittable
        assert cfg.timing_cache_path == str(cache) and cfg.builder_optimization_level == 3
        assert cfg.memory_pool_limits is None
        assert [shapes(p) for p in cfg.profiles] == [shapes(polygraphy_profile(job.profiles))]
    assert "tensorrt" not in sys.modules  # configs are data until a build calls them


def _gen_script(tmp_path: Path, onnx_path: Path, flags: list[str]) -> ast.Module:
    """The script polygraphy's CLI writes for `polygraphy run ONNX --trt --onnxrt FLAGS` (nothing runs)."""
    if POLYGRAPHY is None:
        pytest.skip("polygraphy's command line is not on PATH")
    script = tmp_path / "gen.py"
    r = subprocess.run([POLYGRAPHY, "run", str(onnx_path), "--trt", "--onnxrt", *flags, "--gen-script", str(script)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return ast.parse(script.read_text())


def _config_call(tree: ast.Module) -> ast.Call:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "CreateTrtConfig"]
    assert len(calls) == 1
    return calls[0]


@pytest.mark.parametrize("name", ["mask_unet", "vae_decoder"])
def test_polygraphy_cli_reads_the_documented_flags_as_the_same_build(jobs, tmp_path, name):
    """docs/tensorrt.md's `polygraphy convert` flags (polygraphy_flags) mean, to polygraphy's own CLI,
    the profiles and config that build_engines passes to its loaders."""
    job, cache = jobs[name], tmp_path / "timing.cache"
    tree = _gen_script(tmp_path, job.onnx_path, polygraphy_flags(job, cache, workspace=1 << 30, opt_level=3))
    profiles = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "profiles")
    theirs = eval(compile(ast.Expression(profiles), "gen.py", "eval"), {"__builtins__": {}, "Profile": Profile})
    ours = build_config(job, cache, opt_level=3)
    assert [shapes(p) for p in theirs] == [shapes(p) for p in ours.profiles]
    kw = {k.arg: k.value for k in _config_call(tree).keywords}
    assert ast.unparse(kw.pop("memory_pool_limits")) == "{trt.MemoryPoolType.WORKSPACE: 1073741824}"
    kw.pop("profiles")
    values = {k: ast.literal_eval(v) for k, v in kw.items()}
    assert values == {"fp16": True, "tf32": True, "refittable": True, "load_timing_cache": str(cache),
                      "builder_optimization_level": 3} if ours.fp16 else \
        values == {"tf32": True, "refittable": True, "load_timing_cache": str(cache), "builder_optimization_level": 3}
    assert f"save_timing_cache='{cache}'" in ast.unparse(tree)


def test_build_engine_without_tensorrt_refuses_in_one_line(tiny_export, tmp_path):
    if available()[0]:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(CdxError, match="TensorRT"):
        build_engines(tiny_export, tmp_path / "eng")
    r = CliRunner().invoke(main, ["build-engine", "--onnx", str(tiny_export), "--out", str(tmp_path / "eng")])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "TensorRT" in lines[0], r.output
    assert not (tmp_path / "eng").exists()


# ---------------------------------------------------------------- comparisons through polygraphy

def test_verify_export_equals_a_direct_onnxruntime_comparison(tiny_bundle, tiny_export):
    """cdx export --verify's numbers (polygraphy's OnnxrtRunner and comparator) are max|ort - torch| /
    max|torch| on the same inputs, recomputed here with onnxruntime and torch alone."""
    model = load_bundle(tiny_bundle)
    worst = verify_export(TorchRunner(model), tiny_export, seed=11)
    manifest, ref = manifest_of(tiny_export), TorchRunner(model)
    g = torch.Generator().manual_seed(11)
    specs = network_specs(ModelConfig.from_dict(manifest["config"]))
    assert list(worst) == list(specs)
    for name, spec in specs.items():
        inputs = random_inputs(spec, 3, g)
        ort = ort_outputs(tiny_export / manifest["networks"][name]["file"], inputs)
        want = {k: v.numpy().astype(np.float64) for k, v in ref.run(name, inputs).items()}
        direct = max(np.abs(ort[k] - want[k]).max() / np.abs(want[k]).max() for k in want)
        assert 0 < worst[name] <= TOLERANCE and worst[name] == pytest.approx(direct, rel=1e-5), name


@pytest.fixture
def encoder_case(tiny_export):
    manifest = manifest_of(tiny_export)
    spec = network_specs(ModelConfig.from_dict(manifest["config"]))["mask_encoder"]
    path = tiny_export / manifest["networks"]["mask_encoder"]["file"]
    inputs = random_inputs(spec, 2, torch.Generator().manual_seed(5))
    return path, inputs, ort_outputs(path, inputs)["context"]


@pytest.mark.parametrize("factor,passes", [(0.5, True), (0.99, True), (1.5, False), (40.0, False)])
def test_compare_through_polygraphy_measures_and_judges_a_known_error(encoder_case, factor, passes):
    """One element moved by factor * tol * max|reference|: the worst error is factor * tol, and
    polygraphy's verdict at tol is exactly worst <= tol."""
    path, inputs, base = encoder_case
    tol = 1e-3
    data = base.copy()
    idx = np.unravel_index(np.abs(base).argmin(), base.shape)  # a small element: the step dominates
    data[idx] += factor * tol * np.abs(base).max()
    worst, ok = compare_with_onnxrt(path, inputs, {"context": data}, "data", tol, reference="onnxrt")
    assert worst == pytest.approx(factor * tol, rel=1e-3) and ok == passes


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # polygraphy's stats of an inf error
@pytest.mark.parametrize("how", ["nan", "inf", "shape"])
def test_compare_through_polygraphy_calls_broken_outputs_infinitely_wrong(encoder_case, how):
    path, inputs, base = encoder_case
    data = base.copy()
    if how == "shape":
        data = data[:1]
    else:
        data.flat[7] = np.nan if how == "nan" else np.inf
    worst, ok = compare_with_onnxrt(path, inputs, {"context": data}, "data", 1e-3, reference="onnxrt")
    assert worst == float("inf") and not ok


def test_compare_through_polygraphy_is_relative_to_the_named_reference(encoder_case):
    path, inputs, base = encoder_case
    doubled = {"context": 2 * base}
    assert compare_with_onnxrt(path, inputs, doubled, "data", 1e-3, reference="onnxrt")[0] == pytest.approx(1.0)
    assert compare_with_onnxrt(path, inputs, doubled, "data", 1e-3, reference="data")[0] == pytest.approx(0.5)


def test_compare_through_polygraphy_fails_outputs_with_other_names(encoder_case):
    """polygraphy pairs lone outputs of different names by position; cdx does not accept that."""
    path, inputs, base = encoder_case
    assert compare_with_onnxrt(path, inputs, {"eps": base}, "data", 1e-3) == (float("inf"), False)


def test_polygraphy_cli_compares_saved_reference_outputs(tiny_bundle, tiny_export, tmp_path):
    """The ONNX Runtime half of docs/tensorrt.md's comparison: `polygraphy run ONNX --onnxrt --load-inputs
    --load-outputs`, here with torch's outputs saved in polygraphy's JSON format; it fails a 1% error."""
    if POLYGRAPHY is None:
        pytest.skip("polygraphy's command line is not on PATH")
    from polygraphy.json import save_json

    manifest = manifest_of(tiny_export)
    spec = network_specs(ModelConfig.from_dict(manifest["config"]))["mask_diffuser"]
    inputs = random_inputs(spec, 2, torch.Generator().manual_seed(2))
    out = TorchRunner(load_bundle(tiny_bundle)).run("mask_diffuser", inputs)["logits"].numpy()
    save_json([{k: v.numpy() for k, v in inputs.items()}], str(tmp_path / "inputs.json"))
    atol = TOLERANCE * float(np.abs(out).max())
    rcs = []
    for scale in (1.0, 1.01):
        runs = RunResults()
        runs.append(("torch", [IterationResult(outputs={"logits": out * scale}, runner_name="torch")]))
        runs.save(str(tmp_path / "torch.json"))
        r = subprocess.run([POLYGRAPHY, "run", str(tiny_export / manifest["networks"]["mask_diffuser"]["file"]),
                            "--onnxrt", "--load-inputs", str(tmp_path / "inputs.json"),
                            "--load-outputs", str(tmp_path / "torch.json"), "--atol", f"{atol:.6g}", "--rtol", "0"],
                           capture_output=True, text=True, timeout=120)
        rcs.append(r.returncode)
    assert rcs[0] == 0 and rcs[1] != 0, rcs


# ---------------------------------------------------------------- cuda-python

def _cudart():
    from cdx.backends.trt.graph import cudart

    try:
        return cudart()
    except CdxError as e:
        pytest.skip(str(e))


def test_cuda_python_results_and_errors(monkeypatch):
    """check() unpacks cuda-python's (error, value) results and turns an error into one line."""
    from cdx.backends.trt.graph import check

    rt = _cudart()
    assert check(rt.cudaGetErrorName(rt.cudaError_t.cudaErrorInvalidValue), "cudaGetErrorName") \
        == b"cudaErrorInvalidValue"
    mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
    # the legacy stream cannot be captured on a GPU, and nothing can be without a driver
    with pytest.raises(CdxError, match=r"^cudaStreamBeginCapture failed: cudaError\w+$"):
        check(rt.cudaStreamBeginCapture(0, mode), "cudaStreamBeginCapture")


def test_cuda_python_missing_is_one_line(monkeypatch):
    from cdx.backends.trt.graph import NO_CUDA_PYTHON, cudart

    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(CdxError) as e:
        cudart()
    assert str(e.value) == NO_CUDA_PYTHON


@pytest.mark.gpu
def test_cuda_python_graph_replays_a_step_that_reads_its_index_on_the_device():
    from cdx.backends.trt.graph import capture

    _cudart()
    dev = torch.device("cuda")
    timesteps = torch.tensor([999, 750, 500, 250, 1], device=dev)
    step, t, tf = torch.zeros(1, dtype=torch.int64, device=dev), torch.zeros(1, dtype=torch.int64, device=dev), \
        torch.zeros(1, device=dev)
    x0 = torch.randn(64, device=dev)
    x, seen = x0.clone(), torch.zeros(5, device=dev)

    def body():  # t_i gathered by the device index, written into preallocated buffers only
        torch.index_select(timesteps, 0, step, out=t)
        tf.copy_(t)
        x.mul_(0.5).add_(tf)
        seen.index_copy_(0, step, tf)
        step.add_(1)

    body()  # warm-up outside the capture
    step.zero_(), x.copy_(x0), seen.zero_()
    graph = capture(body, dev)
    assert int(step) == 0  # captured, not run
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    want = x0.clone()
    for v in timesteps.tolist():
        want = want * 0.5 + v
    assert torch.equal(seen, timesteps.float()) and int(step) == 5
    torch.testing.assert_close(x, want)
    graph.close()


@pytest.mark.gpu
def test_cuda_python_capture_refuses_a_body_that_allocates():
    from cdx.backends.trt.graph import capture

    _cudart()
    x = torch.randn(1024, device="cuda")
    with pytest.raises(CdxError, match="allocated"):
        capture(lambda: x * 2, x.device)


def test_verification_without_polygraphy_is_one_line(tiny_bundle, tiny_export, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "polygraphy" else real(name, *a))
    with pytest.raises(CdxError) as e:
        verify_export(TorchRunner(load_bundle(tiny_bundle)), tiny_export)
    assert str(e.value) == "verification compares through polygraphy, which is not installed: pip install polygraphy"
