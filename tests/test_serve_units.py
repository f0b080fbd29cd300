"""cdx.serve without Ray: which jobs share a call, how a call's output is split back, the body schema and
the options. The end-to-end checks (a real Ray instance, `cdx serve`, HTTP, Chromium) are test_serve.py."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
from pathlib import Path

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
    from cdx.serve.drain import Gate
    from cdx.serve.ingress import Ingress, app
    from cdx.serve.security import served_hosts

    def make(host="127.0.0.1"):
        cls = Ingress.func_or_class.__mro__[1]  # the class under Serve's ASGI wrapper (whose __del__ is async)
        assert cls.__module__ == "cdx.serve.ingress" and hasattr(cls, "check")
        obj = object.__new__(cls)
        obj.options = ServeOptions(allowed_hosts=served_hosts(host))
        obj.cfg, obj.backend, obj.seconds, obj.gate = cfg, "fake", 1.0, Gate()
        reply = Reply(arrays=np.zeros((1, 8, 8, 3), np.uint8), seeds=[0], modalities=["text"],
                      timesteps=np.arange(2), backend="fake", call_items=1)
        obj.model = SimpleNamespace(generate=_FakeMethod(reply), describe=_FakeMethod("fake"))

        async def model_ready():  # never serve.status(): outside a replica it would start a Ray instance
            return True, "1 model replica(s) running (stand-in)"

        obj._model_ready = model_ready
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


def test_model_describes_the_http_inputs_and_caption_limit(ingress):
    obj, client = ingress()
    m = client.get("/v1/model").json()
    inputs = {x["kind"]: x["input"] for x in m["modalities"]}
    assert "base64 PNG label map" in inputs["mask"] and "path" not in inputs["mask"] and "PIL" not in inputs["mask"]
    assert "JSON string" in inputs["text"] and m["limits"]["max_text_chars"] == obj.options.max_text_chars


def test_statuses_match_the_docs(ingress):
    """docs/serving.md's table: not JSON and the body's shape are 422, a bad value 400, a caption over
    max_text_chars 400."""
    obj, client = ingress()
    for raw in (b"{'text': 1", b"[]", b'{"text": "a", "x": 1}'):
        _one_line_error(client.post("/v1/generate", content=raw, headers={"Content-Type": "application/json"}), 422)
    long = {"text": "a " * (obj.options.max_text_chars // 2 + 1)}
    assert "characters" in _one_line_error(client.post("/v1/generate", json=long), 400)
    assert obj.model.generate.calls == 0


# --- the caption bound (cdx/models/tokenizer.py): only what the encoding keeps is tokenized -------------

@pytest.fixture(scope="module")
def tokenizer():
    from cdx.models.tokenizer import Tokenizer

    return Tokenizer()


def _whole(tok, text: str):
    """The ids and truncation flag of tokenizing all of `text` (what encode did before the bound)."""
    e = tok._tok.encode(text.lower(), add_special_tokens=True)
    return np.asarray(e.ids, np.int64), len(e.overflowing) > 0


def test_caption_ids_are_those_of_the_whole_caption(tokenizer):
    import random

    rng = random.Random(0)
    pieces = ["hair", "blond", "ΑΣ", "ΑΣ.Α", "naïve", "Ünïcödé", "中文字", "x" * 150, "...", ",", "'",
              "don't",
              "İstanbul", "\x1c", "\t", "\n", "  ", "a.b.c", "ﬁ", "Straße", "中\u0301", "\u0301"]
    captions = ["This woman has long blond hair.", "", "She is smiling and wears eyeglasses " * 3]
    for k in (10, 100, 1000, 3000, 9000) * 8:
        captions.append("".join(rng.choice(pieces) + rng.choice([" ", "", ".", "-", "中"]) for _ in range(k)))
    captions += [" " * 10_000 + "a b c", "a" + " " * 6000 + "b " * 200]
    for text in captions:
        ids, truncated = tokenizer.encode([text])
        want, want_truncated = _whole(tokenizer, text)
        np.testing.assert_array_equal(ids[0], want, err_msg=repr(text[:60]))
        assert truncated == [want_truncated]
        words = tokenizer.words(text)  # a start of the whole caption's words, all of the kept ones among them
        whole = tokenizer._tok.pre_tokenizer.pre_tokenize_str(tokenizer._tok.normalizer.normalize_str(text.lower()))
        assert words == [w for w, _ in whole][:len(words)]
    assert tokenizer.used_part("this woman has blond hair.") == "this woman has blond hair."


def test_a_4_mb_caption_tokenizes_fast(tokenizer):
    import time

    for caption in ("This woman has long blond hair and she is smiling. " * 80_000, "a," * 2_000_000,
                    "中" * 4_000_000):
        started = time.perf_counter()
        ids, truncated = tokenizer.encode([caption])
        words = tokenizer.words(caption)
        took = time.perf_counter() - started
        assert took < 1.0, f"{took:.2f} s for {len(caption)} characters"  # the whole: 6-25 s
        assert truncated == [True] and ids[0, -1] == 102 and len(words) < 20_000
        np.testing.assert_array_equal(ids[0], _whole(tokenizer, caption[:20_000])[0])


# --- cdx serve's life (preflight.py, drain.py, lifecycle.py, logs.py) without Ray --------------------------

def test_preflight_refuses_bad_options_in_one_line():
    import socket
    import time

    from cdx.errors import CdxError
    from cdx.serve.options import ServeOptions
    from cdx.serve.preflight import check_model, check_port, check_port_free, cluster_endpoint, wait_for_cluster

    for port in (0, 70000, -1, True):
        with pytest.raises(InputError, match="--port"):
            check_port(port)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match="in use"):
            check_port_free("127.0.0.1", port)
        with pytest.raises(InputError, match="not an address of this machine"):
            check_port_free("192.0.2.7", port)
        with pytest.raises(InputError, match="not an address of this machine"):
            check_port_free("nonexistent.invalid", port)
        started = time.monotonic()
        with pytest.raises(InputError, match="no Ray cluster answers"):
            wait_for_cluster("127.0.0.1:1", timeout_s=1.0)
        assert time.monotonic() - started < 5
        wait_for_cluster(f"127.0.0.1:{port}", timeout_s=1.0)  # something listens: Ray's turn
    assert cluster_endpoint("10.0.0.5:6379") == ("10.0.0.5", 6379) and cluster_endpoint("[::1]:6379") == ("::1", 6379)
    assert cluster_endpoint("auto") is None and cluster_endpoint("ray://head:10001") is None
    for bad in ("nowhere", "host:", ":6379", "host:99999"):
        with pytest.raises(InputError, match="HOST:PORT"):
            cluster_endpoint(bad)
    with pytest.raises(CdxError, match="/nonexistent"):
        check_model(ServeOptions(checkpoint="/nonexistent"), local=True)
    with pytest.raises(CdxError, match="tensorrt"):
        check_model(ServeOptions(backend="tensorrt"), local=True)
    check_model(ServeOptions(backend="onnxruntime"), local=True)


def test_gate_answers_503_once_closed_and_counts_what_it_took():
    import asyncio

    from cdx.serve.drain import Gate, GateMiddleware

    release = asyncio.Event

    async def scenario():
        go = release()

        async def app(scope, receive, send):
            await go.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        def refuse():
            async def respond(scope, receive, send):
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b"closed"})
            return respond

        gate = Gate()
        mw = GateMiddleware(app, lambda: gate, refuse)

        async def call():
            sent = []

            async def send(message):
                sent.append(message)

            await mw({"type": "http"}, None, send)
            return sent[0]["status"]

        taken = [asyncio.create_task(call()) for _ in range(3)]
        await asyncio.sleep(0.05)
        assert gate.close() == 3 == gate.in_flight
        assert await call() == 503  # a new one, while the three are still in flight
        go.set()
        assert [await t for t in taken] == [200, 200, 200] and gate.in_flight == 0
        gate.open()
        assert await call() == 200

    asyncio.run(scenario())


def test_ingress_drain_closes_every_route(ingress):
    import asyncio

    obj, client = ingress()
    assert client.post("/v1/generate", json={"text": "a face", "steps": 2}).status_code == 200
    assert asyncio.run(obj.drain()) == 0 and asyncio.run(obj.in_flight()) == 0
    for r in (client.get("/healthz"), client.post("/v1/generate", json={"text": "a"}), client.get("/")):
        assert "shutting down" in _one_line_error(r, 503) and r.headers["Retry-After"] == "5"
    assert obj.model.generate.calls == 1


def test_signals_interrupt_a_start_and_drain_a_server():
    """Real signals, raised in a fresh interpreter: in a test process that has loaded other native libraries
    (ONNX Runtime, OpenVINO, torch threads) a raised SIGTERM was seen to crash it."""
    import subprocess
    import sys

    code = "import sys; sys.path.insert(0, 'tests'); import test_serve_units as t; t._signals_body()"
    r = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def _signals_body():
    import signal

    from cdx.serve.lifecycle import StopSignals

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # `cdx serve &` in a script starts so
        s = StopSignals()
        s.install()
        assert signal.getsignal(signal.SIGINT) == s._handle == signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):  # while starting: the start is interrupted
            signal.raise_signal(signal.SIGTERM)
        assert s.requested and s.name == "SIGTERM" and not s.hurry
        s = StopSignals()
        s.install()
        s.interrupting = False
        signal.raise_signal(signal.SIGINT)  # while serving: the drain starts, nothing is raised
        assert s.requested and s.name == "SIGINT" and not s.hurry
        signal.raise_signal(signal.SIGTERM)  # a second one: stop waiting for the requests in flight
        assert s.hurry
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_leftover_processes_are_ended_term_then_kill():
    import subprocess
    import sys
    import time

    pytest.importorskip("psutil")
    from cdx.serve.lifecycle import ProcessTree

    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); "
                "time.sleep(60)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
             for code in ("import time; print(1, flush=True); time.sleep(60)", stubborn)]
    try:
        for p in procs:
            p.stdout.readline()  # its handler is in place
        tree = ProcessTree()
        tree.note()
        assert {p.pid for p in procs} <= set(tree.procs)
        # only these two: the test process may have children of its own (multiprocessing's resource tracker)
        tree.procs = {pid: proc for pid, proc in tree.procs.items() if pid in {p.pid for p in procs}}
        started = time.monotonic()
        assert tree.end_leftovers(grace_s=0.2) == 2
        assert all(p.wait(5) is not None for p in procs) and time.monotonic() - started < 8
        assert procs[0].returncode == -15 and procs[1].returncode == -9
        rest = ProcessTree()
        rest.note()
        assert not {p.pid for p in procs} & set(rest.procs)  # both gone
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_a_failed_deployment_is_told_by_its_cause():
    from cdx.serve.logs import failure_line

    serve_message = (
        "A replica failed to start with exception. Retrying 2 more time(s). Error:\n"
        "ray::ServeReplica:cdx:Model.initialize_and_get_metadata() (pid=1, ip=127.0.0.1)\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
        "ray.exceptions.RayTaskError(CdxError): ray::ServeReplica:cdx:Model.initialize_and_get_metadata()\n"
        "cdx.errors.StaleArtifactError: /b/mask_encoder.safetensors: missing or truncated; re-create it\n")
    assert failure_line(serve_message) == "/b/mask_encoder.safetensors: missing or truncated; re-create it"
    assert failure_line("Traceback:\nValueError: bad\n") == "ValueError: bad"
    assert failure_line("Deploying application cdx failed:\n  x") == "Deploying application cdx failed: x"


def test_warm_up_waits_for_requests_and_shares_the_pipeline_lock():
    import threading
    import time
    from types import SimpleNamespace

    pytest.importorskip("ray")
    from cdx.serve.model import Model

    calls, lock_held = [], []
    cls = Model.func_or_class
    obj = object.__new__(cls)
    obj.calling, obj.waiting = threading.Lock(), 1  # a request waits

    def pipe(**kwargs):
        lock_held.append(obj.calling.locked())
        calls.append(kwargs["batch"])

    pipe.cfg = SimpleNamespace(modalities=[SimpleNamespace(kind="text")])
    obj.pipe = pipe
    warm = threading.Thread(target=obj._warm, args=([1, 2, 3],), daemon=True)
    warm.start()
    time.sleep(0.3)
    assert calls == []  # it lets the request go first
    obj.waiting = 0
    warm.join(5)
    assert calls == [1, 2, 3] and all(lock_held)
