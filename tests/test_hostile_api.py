"""The Python API's contract under hostile use: every bad argument to `cdx.Pipeline.load` and to a call is a
`cdx.CdxError` (an `InputError`) with a one-line message, never another exception; one Pipeline called from
several threads gives each call the image it gives alone, on every backend."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from hostile import CAPTION
from PIL import Image

import cdx


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CDX_CACHE", str(tmp_path_factory.getbasetemp() / "api-cache"))


def _one_line_input_error(call, *needles):
    with pytest.raises(cdx.InputError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg
    return msg


LOAD = {
    "unknown_option": ({"backend": "torch", "foo": 1}, ("no option 'foo'", "streams")),
    "checkpoint_int": ({"checkpoint": 123}, ("checkpoint 123",)),
    "checkpoint_bool": ({"checkpoint": True}, ("checkpoint True",)),
    "engine_dir_int": ({"engine_dir": 7}, ("engine_dir 7",)),
    "dtype_list": ({"dtype": [1]}, ("dtype [1]",)),
    "backend_list": ({"backend": ["torch"]}, ("backend ['torch']",)),
    "device_int": ({"backend": "torch", "device": 3}, ("device 3",)),
    "progress_not_callable": ({"backend": "torch", "progress": 3}, ("progress",)),
    "streams_zero": ({"backend": "torch", "streams": 0}, ("streams 0",)),
    "compile_mode": ({"backend": "torch-compile", "compile_mode": "fastest"}, ("compile_mode 'fastest'",)),
    "freeu_huge": ({"backend": "torch", "freeu": (1e30, 1, 1, 1)}, ("FreeU b1", "[0, 2]")),
}


@pytest.mark.parametrize("case", sorted(LOAD))
def test_load_refuses_bad_arguments(tiny_bundle, case):
    kwargs, needles = LOAD[case]
    if "checkpoint" not in kwargs and "engine_dir" not in kwargs:
        kwargs = {"checkpoint": tiny_bundle, **kwargs}
    _one_line_input_error(lambda: cdx.Pipeline.load(**kwargs), *needles)


def test_openvino_options_are_its_own(tiny_bundle):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'cdx[openvino]')")
    _one_line_input_error(lambda: cdx.Pipeline.load(tiny_bundle, backend="openvino", streams=2),
                          "backend openvino", "no option 'streams'", "threads")
    _one_line_input_error(lambda: cdx.Pipeline.load(tiny_bundle, backend="openvino", threads="x"), "threads 'x'")


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    return cdx.Pipeline.load(tiny_bundle, backend="torch")


def _closed_image():
    im = Image.new("L", (32, 32))
    im.close()
    return im


CALLS = {
    "conditions_list": (lambda: {"conditions": ["text"]}, ("conditions", "mapping")),
    "conditions_str": (lambda: {"conditions": "text"}, ("conditions", "mapping")),
    "closed_pil_mask": (lambda: {"mask": _closed_image()}, ("mask", "closed image")),
    "caption_not_text": (lambda: {"text": "a man \udcff"}, ("text", "not valid text")),
    "cuda_graph_str": (lambda: {"text": CAPTION, "cuda_graph": "yes"}, ("cuda_graph 'yes'",)),
    "return_influence_str": (lambda: {"text": CAPTION, "return_influence": "no"}, ("return_influence",)),
}


@pytest.mark.parametrize("case", sorted(CALLS))
def test_a_call_refuses_bad_arguments(pipe, case):
    make, needles = CALLS[case]
    _one_line_input_error(lambda: pipe(steps=1, **make()), *needles)


def test_a_pil_sketch_too_large_is_refused_before_reading():
    from cdx.models.modalities import _pil_pixels

    big = Image.new("1", (10_000, 10_000))
    with pytest.raises(cdx.InputError, match="megapixels"):
        _pil_pixels(big, "sketch", np.asarray)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "openvino"])
def test_one_pipeline_shared_by_threads(tiny_bundle, backend):
    """Two threads calling one Pipeline each get the image their call gives alone (OpenVINO's infer requests
    are busy while they run: "Infer Request is busy" without the runner's lock)."""
    if backend == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed (pip install 'cdx[openvino]')")
    p = cdx.Pipeline.load(tiny_bundle, backend=backend)
    seeds = (1, 2, 3)
    alone = {s: p(text=CAPTION, seed=s, steps=2).arrays for s in seeds}
    got, errors = {}, []

    def call(s):
        try:
            for _ in range(2):
                got[s] = p(text=CAPTION, seed=s, steps=2).arrays
        except Exception as e:  # noqa: BLE001 - collected and reported by the assertion
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=call, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(np.array_equal(got[s], alone[s]) for s in seeds)
