"""`cdx serve` end to end: a real `cdx serve` process (its own local Ray instance, loopback only, private
temp folder), a real HTTP client, the Python API as the reference, a replica killed with ray.kill, a quiet
log with its ready line, bad options refused before Ray starts, and SIGTERM (and SIGINT, started with SIGINT
ignored) draining the requests in flight and leaving no Ray process behind. Small steps keep it to minutes.
The page in headless Chromium is test_serve_page.py.

Skipped (saying why) without the serve extra, except where CDX_REQUIRE_SERVE=1 (.ci/run's full
suite, which installs it), where they fail instead."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import importlib.util
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from golden import REPO_ROOT
from serve_process import Server, alive, free_port, is_loopback, listening_sockets, ray_left, with_dir

pytestmark = pytest.mark.serve
REQUIRED = os.environ.get("CDX_REQUIRE_SERVE") == "1"
for _mod in ("ray", "fastapi", "httpx"):
    if importlib.util.find_spec(_mod) is None:
        if REQUIRED:
            pytest.fail(f"CDX_REQUIRE_SERVE=1 but the serve extra is not installed ({_mod} is missing)", pytrace=False)
        pytest.skip(f"the serve extra is not installed ({_mod}): pip install -e '.[serve]'", allow_module_level=True)
# This process joins the server's Ray in the kill test as a driver, over the loopback address (local.py)
# and with the token the server's Ray wrote to ~/.ray/auth_token; Ray reads both when it is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
import httpx  # noqa: E402
from cdx.evaluation.metrics import psnr  # noqa: E402

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.png"))
CAPTIONS = ["This woman has long blond hair.", "This man has a beard and short black hair.",
            "She is smiling and wears eyeglasses.", "This person is young and has brown hair."]
STEPS = 6
BACKEND = "onnxruntime"  # dynamic shapes: no per-batch compile at start-up (what is served is backend-blind)
TIMEOUT = httpx.Timeout(300.0, connect=10.0)


@pytest.fixture(scope="module")
def pipe():
    """The Python API on the served backend, loaded first so the ONNX export exists before the server starts."""
    import cdx

    return cdx.Pipeline.load(backend=BACKEND)


@pytest.fixture(scope="module")
def server(pipe):
    srv = Server(free_port(), ["--backend", BACKEND, "--max-batch", "8", "--batch-wait-ms", "50",
                                "--max-queued", "8", "--max-steps", "20"])
    try:
        srv.gcs = srv.wait_for(r"ray: started a local instance at (\S+)", 120).group(1)
        srv.wait_for(r"cdx serve: ready at http://", 420)
        srv.note_pids()
        yield srv
    finally:
        import ray

        ray.shutdown()  # the kill test's driver connection, if any
        srv.stop(signal.SIGINT, 90)  # and KILL what it left: only what this server started


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def body(i: int, **extra) -> dict:
    return {"text": CAPTIONS[i % len(CAPTIONS)], "mask": b64(EXAMPLES[i % len(EXAMPLES)]), "seed": 1000 + 7 * i,
            "steps": STEPS, **extra}


def reference(pipe, i: int, batch: int = 1) -> np.ndarray:
    out = pipe(text=CAPTIONS[i % len(CAPTIONS)], mask=EXAMPLES[i % len(EXAMPLES)], seed=1000 + 7 * i, steps=STEPS,
               batch=batch)
    return out.arrays


def decode(png_b64: str) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"))


def assert_same_images(reply: dict, ref: np.ndarray):
    got = np.stack([decode(p) for p in reply["images"]])
    assert got.shape == ref.shape
    for g, r in zip(got, ref):
        assert psnr(g, r) >= 40.0, f"PSNR {psnr(g, r):.1f} dB against the Python API's image"


def post(client: httpx.Client, url: str, payload) -> httpx.Response:
    return client.post(url + "v1/generate", json=payload)


def test_healthz_and_model(server, pipe):
    with httpx.Client(timeout=TIMEOUT) as c:
        assert c.get(server.url + "healthz").status_code == 200
        m = c.get(server.url + "v1/model").json()
    assert [x["name"] for x in m["modalities"]] == pipe.modalities
    assert m["image_size"] == list(pipe.image_size) and len(m["classes"]) == 19
    assert BACKEND in m["backend"] and m["limits"]["max_steps"] == 20
    inputs = {x["kind"]: x["input"] for x in m["modalities"]}  # the HTTP API's words, not the Python API's
    assert "base64 PNG label map" in inputs["mask"] and "path" not in inputs["mask"], inputs
    assert "JSON string" in inputs["text"] and m["limits"]["max_text_chars"] == 4096
    assert any("first start exports" in line for line in server.lines)


# what `cdx serve` prints of its own (quiet: no Ray output, one line per event)
OWN_LINES = re.compile(r"^(ray: (started a local instance at|token in) |deploying \d+ model replica|cdx serve: )")


def test_ready_line_and_a_quiet_log(server):
    port = server.url.rstrip("/").rsplit(":", 1)[1]
    ready = [line for line in server.lines if line.startswith("cdx serve: ready at ")]
    assert ready == [f"cdx serve: ready at http://127.0.0.1:{port}/"], server.log()
    with httpx.Client(timeout=TIMEOUT) as c:
        assert c.get(server.url + "healthz").status_code == 200
    noise = [line for line in server.lines if not OWN_LINES.match(line) or "\x1b[" in line]
    assert not noise, "lines that are not cdx serve's own:\n" + "\n".join(noise[:20])


def test_megabyte_captions_are_refused_without_stalling_the_server(server):
    """Four 4 MB captions at once: each a one-line 400 (over max_text_chars) and /healthz answers meanwhile
    (the whole caption was tokenized before, and /healthz waited 40 s)."""
    caption = "This woman has long blond hair and she is smiling. " * 78_000  # 3.98 MB, under the body limit

    def one(_):
        with httpx.Client(timeout=TIMEOUT) as c:
            return c.post(server.url + "v1/generate", json={"text": caption, "steps": 2})

    with cf.ThreadPoolExecutor(4) as ex:
        futures = [ex.submit(one, i) for i in range(4)]
        time.sleep(0.2)
        started = time.monotonic()
        with httpx.Client(timeout=TIMEOUT) as c:
            assert c.get(server.url + "healthz").status_code == 200
        health_s = time.monotonic() - started
        replies = [f.result() for f in futures]
    for r in replies:
        assert r.status_code == 400 and "4096" in r.json()["error"], (r.status_code, r.text[:300])
    assert health_s < 10, f"/healthz took {health_s:.1f} s while the captions were refused"


def test_32_requests_from_8_clients_match_the_python_api(server, pipe):
    n, batch_of = 32, {5: 2, 17: 3}  # two requests ask for several images: split back by their batch

    def one(i):
        with httpx.Client(timeout=TIMEOUT) as c:
            return i, post(c, server.url, body(i, batch=batch_of.get(i, 1)))

    with cf.ThreadPoolExecutor(8) as ex:
        replies = dict(ex.map(one, range(n)))
    for i, r in replies.items():
        assert r.status_code == 200, (i, r.text[:300])
    sizes = [r.json()["call_images"] for r in replies.values()]
    assert max(sizes) > 1, f"no two requests shared a call: {sizes}"
    for i, r in replies.items():
        j = r.json()
        assert j["seeds"] == [1000 + 7 * i + k for k in range(batch_of.get(i, 1))]
        assert_same_images(j, reference(pipe, i, batch_of.get(i, 1)))


def _png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array, "L").save(buf, format="PNG")
    return buf.getvalue()


BAD = {  # name -> (body or raw bytes, a word the error names)
    "no condition": ({"seed": 1, "steps": 4}, "condition"),
    "truncated PNG": ({"mask": base64.b64encode(EXAMPLES[0].read_bytes()[:-40]).decode()}, "truncated"),
    "class id 19": ({"mask": base64.b64encode(_png_bytes(np.full((32, 32), 19, np.uint8))).decode()}, "19"),
    "steps 0": ({"text": "a face", "steps": 0}, "steps 0"),
    "steps over the limit": ({"text": "a face", "steps": 21}, "steps 21"),
    "batch over the limit": ({"text": "a face", "batch": 5}, "batch 5"),
    "20 MB body": ({"text": "a" * (20 << 20)}, "bytes"),
    "unknown field": ({"text": "a face", "prompt": "x"}, "prompt"),
    "wrong type": ({"text": "a face", "steps": "4"}, "steps"),
    "not JSON": (b"{'text': 1", "JSON"),
    "not base64": ({"mask": "not base64!"}, "base64"),
    "unknown modality": ({"text": "a face", "guidance": {"sketch": 2.0}}, "sketch"),
    "seed out of range": ({"text": "a face", "seed": -1}, "seed"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_request_gets_a_4xx_json_error(server, name):
    payload, word = BAD[name]
    with httpx.Client(timeout=TIMEOUT) as c:
        r = (c.post(server.url + "v1/generate", content=payload, headers={"Content-Type": "application/json"})
             if isinstance(payload, bytes) else post(c, server.url, payload))
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    err = r.json()["error"]
    assert word in err and "\n" not in err and "Traceback" not in err, err


def test_unknown_route_and_method_are_json(server):
    with httpx.Client(timeout=TIMEOUT) as c:
        assert c.get(server.url + "v2/nothing").json()["error"].startswith("Not Found")
        assert c.get(server.url + "v1/generate").status_code == 405


def test_cross_site_requests_are_refused(server):
    """Through Serve's proxy: a CORS simple request (text/plain) gets 415 and a Host that is not this server's
    (a DNS name rebound to 127.0.0.1) 400, each as the one-line JSON error, before any work is done."""
    payload = '{"text": "a face", "steps": 2}'
    with httpx.Client(timeout=TIMEOUT) as c:
        for ctype in ("text/plain;charset=UTF-8", "application/x-www-form-urlencoded"):
            r = c.post(server.url + "v1/generate", content=payload, headers={"Content-Type": ctype})
            assert r.status_code == 415 and "application/json" in r.json()["error"], (r.status_code, r.text[:300])
        port = server.url.rstrip("/").rsplit(":", 1)[1]
        r = c.post(server.url + "v1/generate", content=payload,
                   headers={"Content-Type": "application/json", "Host": f"rebound.example:{port}"})
        assert r.status_code == 400 and "answers to" in r.json()["error"], (r.status_code, r.text[:300])
        assert c.get(server.url + "healthz", headers={"Host": f"localhost:{port}"}).status_code == 200


def test_overload_gets_503_with_retry_after_and_loses_no_accepted_request(server):
    n = 48  # the replica holds 2 x 8, the ingress queues 8 more: the rest must be refused, not dropped

    def one(i):
        with httpx.Client(timeout=TIMEOUT) as c:
            return i, post(c, server.url, {"text": CAPTIONS[i % 4], "seed": i, "steps": STEPS})

    with cf.ThreadPoolExecutor(n) as ex:
        replies = dict(ex.map(one, range(n)))
    codes = [r.status_code for r in replies.values()]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) >= 1 and codes.count(200) >= 8, codes
    for i, r in replies.items():
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and "queue" in r.json()["error"]
        else:
            assert r.json()["seeds"] == [i] and len(r.json()["images"]) == 1
    with httpx.Client(timeout=TIMEOUT) as c:  # and it serves again
        assert post(c, server.url, {"text": "a face", "steps": 2}).status_code == 200


def _replica_actors():
    import ray

    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::cdx#Model")]


@pytest.fixture
def private_umask():
    """This process as a Ray driver writes its logs into the server's Ray folder: owner-only, as the server's."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def test_replica_killed_mid_load_is_replaced(server, pipe, private_umask):
    import ray

    assert server.gcs.startswith("127.0.0.1:")  # the server's Ray listens on the loopback address only
    ray.init(address=server.gcs, logging_level="WARNING", log_to_driver=False)
    before = _replica_actors()
    assert len(before) == 1, before
    first = threading.Event()
    n = 24

    def one(i):
        with httpx.Client(timeout=TIMEOUT) as c:
            r = post(c, server.url, body(i))
        first.set()
        return i, r

    with cf.ThreadPoolExecutor(8) as ex:
        futures = [ex.submit(one, i) for i in range(n)]
        assert first.wait(120), "no request was answered before the kill"
        victim = ray.get_actor(before[0]["name"], namespace=before[0]["namespace"])
        ray.kill(victim, no_restart=True)
        replies = dict(f.result() for f in futures)
    codes = [r.status_code for r in replies.values()]
    assert set(codes) <= {200, 503}, codes
    assert 503 in codes, "the kill reached no request in flight"
    for i, r in replies.items():
        if r.status_code == 503:
            assert r.json()["error"] and int(r.headers["Retry-After"]) >= 1
        else:
            assert_same_images(r.json(), reference(pipe, i))
    deadline = time.monotonic() + 240
    with httpx.Client(timeout=TIMEOUT) as c:
        while c.get(server.url + "healthz").status_code != 200:
            assert time.monotonic() < deadline, f"no replica came back:\n{server.log()}"
            time.sleep(1)
        after = _replica_actors()
        assert len(after) == 1 and after[0]["name"] != before[0]["name"]
        server.note_pids()
        r = post(c, server.url, body(3))
    assert r.status_code == 200, r.text[:300]
    assert_same_images(r.json(), reference(pipe, 3))
    ray.shutdown()


def _loose_files(root: Path) -> list[str]:
    """Files (sockets included) under `root` that anyone but their owner may read or write."""
    loose = []
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                mode = os.lstat(os.path.join(folder, name)).st_mode
            except FileNotFoundError:  # a log rotated meanwhile
                continue
            if not stat.S_ISLNK(mode) and mode & 0o077:
                loose.append(f"{oct(stat.S_IMODE(mode))} {os.path.join(folder, name)}")
    return loose


def test_every_socket_is_on_loopback_and_ray_files_are_private(server):
    """What listens: every TCP socket of the server's processes (Ray's GCS, raylet, agents, workers, Serve's
    controller, proxy and replicas), read from /proc, is on 127.0.0.1 or ::1; and what Ray writes (its
    temp folder, its token) only its owner can read."""
    server.note_pids()
    pids = alive(server.pids | with_dir(server.tmp) | {server.proc.pid})
    sockets = listening_sockets(pids)
    shown = "\n".join(f"{pid} {addr}:{port} {cmd[:70]}" for pid, cmd, addr, port in sockets)
    print(f"\nlistening sockets of {len(pids)} processes:\n{shown}")
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    assert any(p == port and a == "127.0.0.1" for _, _, a, p in sockets), f"no HTTP proxy on 127.0.0.1:{port}:\n{shown}"
    replicas = [s for s in sockets if "ServeReplica" in s[1]]
    assert {"Ingress", "Model"} <= {d for s in replicas for d in ("Ingress", "Model") if d in s[1]}, \
        f"no replica's gRPC server among them:\n{shown}"
    assert any(server.gcs.endswith(f":{p}") for _, _, _, p in sockets), f"no GCS at {server.gcs}:\n{shown}"
    exposed = [f"{pid} {addr}:{port} {cmd}" for pid, cmd, addr, port in sockets if not is_loopback(addr)]
    assert not exposed, "listening beyond loopback:\n" + "\n".join(exposed)

    root = Path(server.wait_for(r"files under (\S+) owner-only", 1).group(1))
    assert root.parent == Path(server.tmp), root
    st = root.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid(), oct(st.st_mode)
    assert not (loose := _loose_files(root)), "Ray files open to others:\n" + "\n".join(loose[:20])
    token = Path(server.wait_for(r"token in (\S+) \(owner-only\)", 1).group(1))
    assert stat.S_IMODE(token.stat().st_mode) == 0o600, oct(token.stat().st_mode)
    assert token.parent.stat().st_mode & 0o022 == 0  # nobody else can replace it either


def _clients(url: str, n: int, stop: threading.Event) -> tuple[list, list[threading.Thread]]:
    """n clients, each sending its next generate request as soon as the last one is answered, until `stop`;
    every outcome lands in the list: (client, seed, response or exception, when it came back)."""
    outcomes: list = []

    def client(i):
        k = 0
        with httpx.Client(timeout=TIMEOUT) as c:
            while not stop.is_set():
                seed = 100 * i + 2 * k
                try:
                    r = post(c, url, {"text": CAPTIONS[i % 4], "seed": seed, "steps": 20, "batch": 2})
                except httpx.HTTPError as e:  # a dropped connection: what the drain must not do
                    r = e
                outcomes.append((i, seed, r, time.monotonic()))
                if not isinstance(r, httpx.Response) or r.status_code != 200:
                    return
                k += 1

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return outcomes, threads


def _stop_and_check_the_drain(srv: Server, sig: int, n: int = 4):
    """Clients keep requests in flight, then `sig`: every request the ingress had taken is answered with its
    images (one that reached it after the signal gets 503), a request sent after the signal gets 503, the
    server exits 0 and no process of its Ray is left."""
    srv.note_pids()
    assert len(alive(srv.pids)) >= 4  # GCS, raylet, controller, proxy, replicas...
    stop = threading.Event()
    outcomes, threads = _clients(srv.url, n, stop)
    deadline = time.monotonic() + 120
    while sum(isinstance(r, httpx.Response) for _, _, r, _ in outcomes) < n and time.monotonic() < deadline:
        time.sleep(0.2)  # every client had a reply: each has its next request in flight now
    signalled = time.monotonic()
    srv.proc.send_signal(sig)
    stop.set()
    taken = int(srv.wait_for(r"new requests get 503, (\d+) in flight", 60).group(1))
    with httpx.Client(timeout=TIMEOUT) as c:
        try:
            late = post(c, srv.url, {"text": "a face", "steps": 2})
            assert late.status_code == 503 and late.headers["Retry-After"], (late.status_code, late.text[:300])
            assert "shutting down" in late.json()["error"]
        except httpx.ConnectError:
            pass  # every request in flight was answered already and the proxy is gone: nothing to refuse
    assert srv.wait(180) == 0, srv.log()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    answered = 0
    for i, seed, r, when in outcomes:
        assert isinstance(r, httpx.Response), (i, seed, r)  # no connection dropped
        if r.status_code == 503:  # it reached the ingress after the gate closed: refused, not dropped
            assert "shutting down" in r.json()["error"], r.text[:300]
            continue
        assert r.status_code == 200, (i, r.status_code, r.text[:300])
        assert r.json()["seeds"] == [seed, seed + 1] and len(r.json()["images"]) == 2
        answered += when > signalled
    assert answered >= taken >= 1, (taken, answered, [(i, r.status_code) for i, _, r, _ in outcomes])
    assert srv.lines[-1] == "cdx serve: stopped", srv.log()
    assert not any("SIGTERM received" in line or "Traceback" in line for line in srv.lines), srv.log()
    deadline = time.monotonic() + 30
    while (left := ray_left(srv)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left behind: {[(p, _cmdline(p)) for p in sorted(left)]}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:100]
    except OSError:
        return "?"


def test_sigterm_drains_the_requests_in_flight_and_leaves_no_ray_process(server):
    _stop_and_check_the_drain(server, signal.SIGTERM)


def _ignore_sigint():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cdx serve &` in a non-interactive shell starts


def test_sigint_drains_when_started_with_sigint_ignored(pipe):
    srv = Server(free_port(), ["--backend", BACKEND, "--max-batch", "4", "--max-steps", "20"],
                 preexec_fn=_ignore_sigint)
    try:
        srv.wait_for(r"cdx serve: ready at http://", 420)
        _stop_and_check_the_drain(srv, signal.SIGINT)
    finally:
        srv.stop(signal.SIGKILL, 10)


def _run_serve(args: list[str], tmp: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_TMPDIR=str(tmp), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "cdx", "serve", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def busy_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


BAD_OPTIONS = {  # name -> (arguments, words the one line names)
    "port 0": (["--port", "0"], "--port 0"),
    "port 70000": (["--port", "70000"], "--port 70000"),
    "port in use": (["--port", "{busy}"], "in use"),
    "host not of this machine": (["--host", "192.0.2.7"], "not an address of this machine"),
    "checkpoint missing": (["--checkpoint", "/nonexistent"], "/nonexistent"),
    "address malformed": (["--address", "nowhere"], "HOST:PORT"),
}


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_bad_option_is_one_line_before_ray_starts(name, busy_port, tmp_path):
    args, words = BAD_OPTIONS[name]
    args = [a.format(busy=busy_port) for a in args]
    if "--port" not in args:
        args += ["--port", str(free_port())]
    r = _run_serve(args, tmp_path)
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(out) == 1 and out[0].startswith("error: ") and words in out[0], (r.returncode,
                                                                                                     out)
    assert not list(tmp_path.iterdir()), "a Ray instance was started (its temp folder exists)"
    assert not with_dir(str(tmp_path)), "a process of a Ray instance is running"


def test_address_with_nothing_there_gives_up_in_one_line(tmp_path):
    started = time.monotonic()
    r = _run_serve(["--address", "127.0.0.1:1", "--port", str(free_port())], tmp_path)
    took = time.monotonic() - started
    out = (r.stdout + r.stderr).strip().splitlines()
    assert r.returncode == 2 and len(out) == 1 and "--address 127.0.0.1:1" in out[0] and "answers" in out[0], out
    assert took < 60, f"{took:.0f} s"


def test_a_start_that_fails_after_ray_started_is_one_line(tmp_path):
    """A bundle whose manifest reads (so the options pass) but whose weights are missing: the replicas fail
    in Ray; the command says why in one line, exits 2 and leaves no Ray process."""
    import shutil

    from cdx.defaults import default_checkpoint

    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(default_checkpoint() / "bundle.json", half)
    srv = Server(free_port(), ["--checkpoint", str(half), "--backend", BACKEND])
    try:
        assert srv.wait(300) == 2, srv.log()
        errors = [line for line in srv.lines if line.startswith("error: ")]
        assert len(errors) == 1 and "the app did not start" in errors[0] and "safetensors" in errors[0], srv.log()
        assert srv.lines[-1] == errors[0] and not any("Traceback" in line for line in srv.lines), srv.log()
        assert all(OWN_LINES.match(line) for line in srv.lines[:-1]), srv.log()
        deadline = time.monotonic() + 30
        while (left := ray_left(srv)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"processes left behind: {[(p, _cmdline(p)) for p in sorted(left)]}"
    finally:
        srv.stop(signal.SIGKILL, 10)
