"""cdx.serve without Ray: which jobs share a call, how a call's output is split back, the body schema and
the options. The end-to-end checks (a real Ray instance, `cdx serve`, HTTP, Chromium) are test_serve.py."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import os

import numpy as np
import pytest

if importlib.util.find_spec("pydantic") is None:  # installed with the serve extra (ray and fastapi need it)
    if os.environ.get("CDX_REQUIRE_SERVE") == "1":
        pytest.fail("CDX_REQUIRE_SERVE=1 but the serve extra is not installed (pydantic)", pytrace=False)
    pytest.skip("the serve extra is not installed (pip install -e '.[serve]')", allow_module_level=True)

from cdx.api import Output, config_of  # noqa: E402
from cdx.sampling.request import make_request  # noqa: E402
from cdx.errors import InputError  # noqa: E402
from cdx.serve.batching import Job, plan_calls, run_jobs, split_output  # noqa: E402
from cdx.serve.options import ServeOptions  # noqa: E402
from cdx.serve.schema import label_map_from_png, parse_body, request_kwargs  # noqa: E402


@pytest.fixture(scope="module")
def cfg():
    return config_of()


def job(cfg, steps=4, batch=1, seed=0, guidance=None, influence=False):
    return Job(make_request(cfg, text="a face", seed=seed, steps=steps, batch=batch, return_influence=influence),
               guidance)


def test_plan_calls_groups_compatible_jobs_and_caps_items(cfg):
    rng = np.random.default_rng(0)
    jobs = [job(cfg, steps=int(rng.choice([4, 6])), batch=int(rng.integers(1, 4)), seed=i) for i in range(40)]
    jobs.append(job(cfg, steps=4, guidance={"text": 2.0}))
    calls = plan_calls(jobs, max_items=5)
    assert sorted(i for c in calls for i in c) == list(range(len(jobs)))  # every job exactly once
    for c in calls:
        assert len({jobs[i].key() for i in c}) == 1  # one key a call
        assert c == sorted(c)  # arrival order kept
        assert sum(jobs[i].request.batch for i in c) <= 5 or len(c) == 1
    assert any(jobs[c[0]].guidance for c in calls if len(c) == 1)  # other guidance never joins the others
    keys = {jobs[i].key() for i in range(40)}
    # as few calls as the cap allows: within a key, a new call only when the next job does not fit
    for k in keys:
        mine = [c for c in calls if jobs[c[0]].key() == k]
        for a, b in zip(mine, mine[1:]):
            assert sum(jobs[i].request.batch for i in a) + jobs[b[0]].request.batch > 5


def test_split_output_cuts_per_job(cfg):
    rng = np.random.default_rng(1)
    jobs = [job(cfg, batch=b, seed=10 * i, influence=True) for i, b in enumerate([2, 1, 3])]
    arrays = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    influence = rng.random((5, 2, 6, 4, 4), dtype=np.float32)
    seeds = [s for j in jobs for s in j.request.seeds]
    out = Output(images=[], seeds=seeds, modalities=["mask", "text"], timesteps=np.arange(5)[::-1],
                 timings={"loop_ms": 1.0}, backend="b", influence=influence, arrays=arrays)
    replies = split_output(out, jobs, started=jobs[-1].sent + 0.5)
    at = 0
    for j, r in zip(jobs, replies):
        b = j.request.batch
        np.testing.assert_array_equal(r.arrays, arrays[at:at + b])
        np.testing.assert_array_equal(r.influence, influence[:, :, at:at + b])
        assert r.seeds == list(j.request.seeds) and r.call_items == 6 and r.timings["queue_ms"] >= 0
        at += b


class _FailingPipe:
    def generate(self, req, guidance=None):
        if req.sampling.steps == 4:
            raise InputError("batch 9: needs too much memory")
        raise RuntimeError("boom")


def test_run_jobs_fails_only_the_failing_call(cfg):
    jobs = [job(cfg, steps=4), job(cfg, steps=6), job(cfg, steps=4)]
    replies = run_jobs(_FailingPipe(), jobs, max_items=8)
    assert replies[0].error == replies[2].error == "batch 9: needs too much memory" and replies[0].user_error
    assert replies[1].error == "internal error: RuntimeError" and not replies[1].user_error


def _png(array, mode=None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, format="PNG")
    return buf.getvalue()


def test_body_schema_refuses_in_one_line(cfg):
    o = ServeOptions()
    bad = {b"{": "not valid JSON", b"[]": "JSON object"}
    for body, word in [({"text": "a", "x": 1}, "unknown field 'x'"), ({"text": "a", "steps": "4"}, "steps"),
                       ({"text": 3}, "text"), ({"text": "a", "seed": 1.5}, "seed"),
                       ({"text": "a", "batch": True}, "batch")]:
        bad[json.dumps(body).encode()] = word
    for raw, word in bad.items():
        with pytest.raises(InputError, match=word) as e:
            parse_body(raw)
        assert "\n" not in str(e.value)
    for body, word in [({}, "at least one condition"), ({"text": "a", "steps": 0}, "steps 0"),
                       ({"text": "a", "steps": 101}, "steps 101"), ({"text": "a", "batch": 5}, "batch 5"),
                       ({"mask": "@@"}, "base64"), ({"text": "a", "guidance": {"sketch": 2}}, "sketch")]:
        with pytest.raises(InputError, match=word):
            request_kwargs(parse_body(json.dumps(body).encode()), cfg, o)


def test_mask_png_is_read_by_the_mask_reader(cfg):
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 19, (37, 53), dtype=np.uint8)
    np.testing.assert_array_equal(label_map_from_png(_png(ids, "L")), ids)
    bad = ids.copy()
    bad[3, 4] = 19
    with pytest.raises(InputError, match=r"^mask: .*19"):
        label_map_from_png(_png(bad, "L"))
    with pytest.raises(InputError, match=r"^mask: .*truncated"):
        label_map_from_png(_png(ids, "L")[:-30])
    data_url = "data:image/png;base64," + base64.b64encode(_png(ids, "L")).decode()
    body = parse_body(json.dumps({"mask": data_url}).encode())
    kwargs, guidance = request_kwargs(body, cfg, ServeOptions())
    np.testing.assert_array_equal(kwargs["mask"], ids)
    assert guidance is None
    big = np.zeros((40, 3000), np.uint8)
    with pytest.raises(InputError, match="3000x40"):
        big_body = parse_body(json.dumps({"mask": base64.b64encode(_png(big, "L")).decode()}).encode())
        request_kwargs(big_body, cfg, ServeOptions())


def test_options_refuse_bad_values():
    with pytest.raises(InputError, match="max_batch"):
        ServeOptions(max_batch=0)
    with pytest.raises(InputError, match="'replica'"):
        ServeOptions.from_dict({"replica": 2})
    with pytest.raises(InputError, match="max_request_batch"):
        ServeOptions(max_items=2, max_request_batch=4)
    assert ServeOptions.from_dict(ServeOptions(max_batch=3).to_dict()).max_batch == 3
