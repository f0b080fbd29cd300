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


# --- security.py and the ingress's checks (docs/serving.md, "What listens where") --------------------------

def test_content_type_must_be_json():
    from cdx.serve.security import content_type_error

    for ok in ("application/json", "Application/JSON", "application/json; charset=utf-8",
               'application/json;charset="UTF-8"', "application/json ; charset=utf8"):
        assert content_type_error(ok, "/v1/generate") is None, ok
    for bad in (None, "", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x", "application/jsonx", "application/json-patch+json",
                "application/json; charset=latin-1", "application/json; boundary=x", "*/*"):
        err = content_type_error(bad, "/v1/generate")
        assert err and "\n" not in err and ("application/json" in err or "UTF-8" in err), (bad, err)


def test_host_header_must_name_the_server():
    from cdx.serve.security import ANY, host_error, host_of, served_hosts

    assert host_of("127.0.0.1:8000") == "127.0.0.1" and host_of("LocalHost.") == "localhost"
    assert host_of("[::1]:8000") == "[::1]" and host_of("[0:0::1]") == "[::1]"
    for malformed in ("::1", "[::1", "[::1]x", "a:b:c", "127.0.0.1:", "a b", "user@127.0.0.1", ""):
        assert host_of(malformed) is None, malformed
    loop = served_hosts("127.0.0.1")
    assert set(loop) == {"127.0.0.1", "localhost", "[::1]"}
    assert set(served_hosts("localhost")) == set(loop) and "[::1]" in served_hosts("::1")
    assert served_hosts("0.0.0.0") == served_hosts("::") == (ANY,)
    assert served_hosts("192.0.2.7")[0] == "192.0.2.7" and "localhost" not in served_hosts("192.0.2.7")
    for ok in ("127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000", "LOCALHOST:1"):
        assert host_error(ok, loop) is None, ok
    for bad in ("evil.example:8000", "evil.example", "127.0.0.1.evil.example", "localhost.evil:8000", "0.0.0.0",
                "192.0.2.7:8000", "[::1", None):
        err = host_error(bad, loop)
        assert err and "\n" not in err and "127.0.0.1" in err, (bad, err)
    assert host_error("evil.example", (ANY,)) is None and host_error("evil.example", None) is None
    with pytest.raises(InputError, match="allowed_hosts"):
        ServeOptions(allowed_hosts="localhost")
    assert ServeOptions.from_dict({"allowed_hosts": ["a", "b"]}).allowed_hosts == ("a", "b")


class _FakeMethod:
    def __init__(self, reply):
        self.reply, self.calls = reply, 0

    async def _answer(self):
        return self.reply

    def remote(self, *args):
        self.calls += 1
        return self._answer()


@pytest.fixture
def ingress(cfg, monkeypatch):
    """The ingress's FastAPI app without Ray: its routes' `self` is a cdx Ingress object built by hand (no
    replica, no Serve), whose model handle answers every job with one black image."""
    for mod in ("ray", "fastapi", "httpx"):
        if importlib.util.find_spec(mod) is None:
            if os.environ.get("CDX_REQUIRE_SERVE") == "1":
                pytest.fail(f"CDX_REQUIRE_SERVE=1 but {mod} is not installed", pytrace=False)
            pytest.skip(f"{mod} is not installed (the serve extra)")
    from types import SimpleNamespace

    import ray.serve
    from fastapi.testclient import TestClient

    from cdx.serve.batching import Reply
    from cdx.serve.ingress import Ingress, app
    from cdx.serve.security import served_hosts

    def make(host="127.0.0.1"):
        cls = Ingress.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper (whose __del__ is async)
        assert cls.__module__ == "cdx.serve.ingress" and hasattr(cls, "check")
        obj = object.__new__(cls)
        obj.options = ServeOptions(allowed_hosts=served_hosts(host))
        obj.cfg, obj.backend, obj.seconds = cfg, "fake", 1.0
        reply = Reply(arrays=np.zeros((1, 8, 8, 3), np.uint8), seeds=[0], modalities=["text"],
                      timesteps=np.arange(2), backend="fake", call_items=1)
        obj.model = SimpleNamespace(generate=_FakeMethod(reply), describe=_FakeMethod("fake"))
        monkeypatch.setattr(ray.serve, "get_replica_context", lambda: SimpleNamespace(servable_object=obj))
        return obj, TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)

    return make


def _one_line_error(r, status):
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert list(body) == ["error"] and body["error"] and "\n" not in body["error"], body
    return body["error"]


def test_generate_takes_json_only(ingress):
    obj, client = ingress()
    payload = json.dumps({"text": "a face", "steps": 2})
    # what a page on another site can send without a CORS preflight: a "simple request"
    for ctype in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                  "multipart/form-data; boundary=x", "application/json; charset=latin-1"):
        r = client.post("/v1/generate", content=payload, headers={"Content-Type": ctype})
        assert "application/json" in _one_line_error(r, 415) or "UTF-8" in r.json()["error"]
        r = client.post("/v1/label-map", content=json.dumps({"mask": "x"}), headers={"Content-Type": ctype})
        _one_line_error(r, 415)
    r = client.post("/v1/generate", content=payload.encode(), headers={"Content-Type": ""})
    _one_line_error(r, 415)
    assert obj.model.generate.calls == 0
    for ctype in ("application/json", "application/json; charset=utf-8", "Application/JSON;charset=\"UTF-8\""):
        r = client.post("/v1/generate", content=payload, headers={"Content-Type": ctype})
        assert r.status_code == 200, (ctype, r.text[:300])
        assert r.json()["seeds"] == [0] and len(r.json()["images"]) == 1
    assert obj.model.generate.calls == 3
    # the other checks keep their order and their statuses behind it
    assert client.post("/v1/generate", json={"text": "a", "x": 1}).status_code == 422
    assert client.post("/v1/generate", json={"text": "a", "steps": 0}).status_code == 400


def test_host_header_is_checked(ingress):
    obj, client = ingress("127.0.0.1")
    good = json.dumps({"text": "a face", "steps": 2})
    for host in ("evil.example:8000", "evil.example", "localhost.evil.example:8000", "192.0.2.7:8000"):
        r = client.post("/v1/generate", content=good, headers={"Host": host, "Content-Type": "application/json"})
        assert "this server answers to" in _one_line_error(r, 400)
        assert _one_line_error(client.get("/v1/model", headers={"Host": host}), 400)
        assert _one_line_error(client.get("/", headers={"Host": host}), 400)
    assert obj.model.generate.calls == 0
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost"):
        r = client.post("/v1/generate", content=good, headers={"Host": host, "Content-Type": "application/json"})
        assert r.status_code == 200, (host, r.text[:300])
        assert client.get("/v1/model", headers={"Host": host}).status_code == 200
    obj, client = ingress("0.0.0.0")  # listening on every address: any name
    r = client.post("/v1/generate", content=good, headers={"Host": "evil.example", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:300]


def test_ray_token_and_temp_folder_are_made_private(tmp_path, monkeypatch):
    from cdx.serve.local import make_token_private, private_temp_dir

    token = tmp_path / "auth_token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    said = []
    assert make_token_private(said.append) is None  # none yet: Ray writes it (under umask 077)
    token.write_text("x" * 32)
    token.chmod(0o644)  # as Ray writes it under the usual umask
    assert make_token_private(said.append) == token
    assert token.stat().st_mode & 0o777 == 0o600 and "644" in said[-1]
    assert make_token_private(said.append) == token and len(said) == 1  # already private: nothing said
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    root = private_temp_dir()
    assert root.parent == tmp_path and root.stat().st_mode & 0o777 == 0o700
