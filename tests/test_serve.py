"""`cdx serve` end to end: a real `cdx serve` process (its own local Ray instance, loopback only, private
temp folder), a real HTTP client, the Python API as the reference, a replica killed with ray.kill, the page
in a real headless Chromium, and Ctrl-C leaving no Ray process behind. Small steps keep it to minutes.

Skipped (saying why) without the serve extra or Chromium, except where CDX_REQUIRE_SERVE=1 (.ci/run's full
suite, which installs both), where they fail instead."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import importlib.util
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from golden import REPO_ROOT
from serve_process import Server, alive, free_port, is_loopback, listening_sockets, with_dir

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
        srv.wait_for(r"serving http://", 420)
        srv.note_pids()
        yield srv
    finally:
        import ray

        ray.shutdown()  # the kill test's driver connection, if any
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGINT)
            try:
                srv.proc.wait(90)
            except subprocess.TimeoutExpired:
                srv.proc.kill()
        for p in alive(srv.pids | with_dir(srv.tmp)):  # only what this server started
            os.kill(p, signal.SIGKILL)


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
    assert any("first start exports" in line for line in server.lines)  # warmed before it said 'serving'


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


@pytest.fixture(scope="module")
def browser():
    chromium, driver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip("selenium is not installed (the serve extra)")
    if not (chromium.exists() and driver.exists()):
        if REQUIRED:
            pytest.fail("CDX_REQUIRE_SERVE=1 but Debian's chromium and chromium-driver are not installed")
        pytest.skip("Debian's chromium / chromium-driver are not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(chromium)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        opts.add_argument(a)
    b = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(driver)), options=opts)
    b.set_script_timeout(60)
    yield b
    b.quit()


def _wait(browser, condition, timeout=180):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def test_page_paints_generates_and_shows_errors(server, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(server.url)
    _wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", 60)
    hat = browser.find_element(By.CSS_SELECTOR, "#palette button[data-cls='14']")
    assert "hat" in hat.text
    count = "return window.cdxPage.ids.filter(v => v === arguments[0]).length"
    assert browser.execute_script(count, 13) > 0  # an example mask is loaded: it has hair
    browser.find_element(By.ID, "clear").click()
    assert browser.execute_script(count, 0) == 256 * 256
    hat.click()
    canvas = browser.find_element(By.ID, "canvas")

    def paint():
        strokes = ActionChains(browser).move_to_element_with_offset(canvas, -150, -220).click_and_hold()
        strokes.move_by_offset(300, 0).move_by_offset(0, 40).move_by_offset(-300, 0).release().perform()

    paint()
    painted = browser.execute_script(count, 14)
    assert painted > 1000, painted  # strokes 300 px long on a 512 px view of 256 cells, brush 16
    browser.find_element(By.ID, "undo").click()
    assert browser.execute_script(count, 14) == 0
    paint()
    assert browser.execute_script(count, 14) == painted
    browser.find_element(By.CSS_SELECTOR, "#palette button[data-cls='1']").click()  # skin
    browser.find_element(By.CSS_SELECTOR, "input[name=tool][value=fill]").click()
    ActionChains(browser).move_to_element_with_offset(canvas, 0, 100).click().perform()
    assert browser.execute_script(count, 1) == 256 * 256 - painted  # the background region, all of it
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("4")
    browser.find_element(By.ID, "generate").click()
    img = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#results img"))[0]
    _wait(browser, lambda b: b.execute_script("return arguments[0].naturalWidth", img) > 0, 30)
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 64
    assert browser.find_element(By.ID, "influence-img").get_attribute("src").startswith("data:image/png")
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    browser.save_screenshot(str(tmp_path / "page.png"))

    steps.clear()
    steps.send_keys("0")  # a bad input: the server's one-line message is shown
    browser.find_element(By.ID, "generate").click()
    err = browser.find_element(By.ID, "error")
    _wait(browser, lambda b: err.is_displayed() and "steps 0" in err.text, 60)

    bad = tmp_path / "truncated.png"
    bad.write_bytes(EXAMPLES[0].read_bytes()[:-40])
    browser.find_element(By.ID, "file").send_keys(str(bad))
    _wait(browser, lambda b: "truncated" in err.text, 60)
    good = EXAMPLES[-1]
    browser.find_element(By.ID, "file").send_keys(str(good))  # a good one replaces the painting
    _wait(browser, lambda b: b.execute_script(count, 13) > 0, 60)


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


def test_ctrl_c_stops_cleanly_and_leaves_no_ray_process(server):
    server.note_pids()
    assert len(alive(server.pids)) >= 4  # GCS, raylet, controller, proxy, replicas...
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(120) == 0, server.log()
    assert any("stopped" in line for line in server.lines)
    deadline = time.monotonic() + 30
    while (left := alive(server.pids | with_dir(server.tmp))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"Ray processes left behind: {sorted(left)}"
