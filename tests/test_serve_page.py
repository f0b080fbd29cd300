"""The page at / (cdx/serve/static): without a server, what it asks the server for (readable class names,
the backend without the server's folders, example masks with fitting captions, the reply's warnings); then
in a real headless Chromium against its own `cdx serve`: paint, generate, and the face inside a 1280 x 800
window beside the canvas, scrolled into view in a 700 x 800 one; no folder of the server anywhere in the
page; the favicon; the vocabulary warning; the server's one-line errors.

The browser tests skip (saying why) without the serve extra or Debian's chromium and chromium-driver, except
where CDX_REQUIRE_SERVE=1 (.ci/run's full suite, which installs both), where they fail instead."""
from __future__ import annotations

import importlib.util
import os
import re
import signal

import pytest

from golden import REPO_ROOT
from serve_process import Server, free_port

REQUIRED = os.environ.get("CDX_REQUIRE_SERVE") == "1"
if importlib.util.find_spec("pydantic") is None:  # installed with the serve extra
    if REQUIRED:
        pytest.fail("CDX_REQUIRE_SERVE=1 but the serve extra is not installed (pydantic)", pytrace=False)
    pytest.skip("the serve extra is not installed (pip install -e '.[serve]')", allow_module_level=True)

from cdx.api import config_of  # noqa: E402
from cdx.models.modalities import kind_of  # noqa: E402
from cdx.serve.options import ServeOptions  # noqa: E402
from cdx.serve.page import DEFAULT_EXAMPLE, backend_label, examples_payload, model_payload  # noqa: E402
from cdx.serve.schema import parse_body, prepare  # noqa: E402

EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.png"))
BACKEND = "onnxruntime"
UNKNOWN = "This woman has zorblaxian hair."  # one word the shipped model never saw
ABSOLUTE = re.compile(r"(?<![\w.:])(?:~|[A-Za-z]:)?[/\\](?:[\w.-]+[/\\])+[\w.-]*")  # /a/b, ~/a/, C:\a\b


def served(test):  # starts a real `cdx serve` (and drives Chromium): over 20 s on 2 cores
    return pytest.mark.serve(pytest.mark.slow(test))


def test_backend_label_hides_the_servers_folders():
    for line, want in [
        ("backend: onnxruntime (CPUExecutionProvider) on /home/u/.cache/cdx/onnx/ab12; auto: why",
         "onnxruntime (CPUExecutionProvider)"),
        ("backend: openvino 2025.1 (CPU, fp32, 2 threads) on /srv/my models/x", "openvino 2025.1 (CPU, fp32, 2 threads)"),
        ("backend: torch (cpu, fp32)", "torch (cpu, fp32)"),
        ("backend: tensorrt (fp16/bf16) engines ~/e and C:\\x\\y", "tensorrt (fp16/bf16) engines (a folder) and (a folder)"),
    ]:
        assert backend_label(line) == want


def test_model_and_examples_payloads_speak_words():
    cfg = config_of()
    m = model_payload(cfg, ServeOptions(), "backend: onnxruntime (CPU) on /home/u/.cache/cdx/x; auto")
    assert m["backend_label"] == "onnxruntime (CPU)" and "/" not in m["backend_label"]
    names = {c["name"]: c["label"] for c in m["classes"]}
    assert len(names) == 19 and names["eye_g"] == "eyeglasses" and names["ear_r"] == "earring"
    assert names["neck_l"] == "necklace" and names["l_lip"] == "lower lip" and names["hair"] == "hair"
    assert not any("_" in label for label in names.values())
    examples = examples_payload()
    assert [e["name"] for e in examples] == [p.stem for p in EXAMPLES]
    assert [e["name"] for e in examples if e["default"]] == [DEFAULT_EXAMPLE]
    text = next(mod for mod in cfg.modalities if mod.kind == "text")
    for e in examples:  # each caption fits its mask and uses only words the shipped model knows
        assert e["caption"] and kind_of("text").unseen_words(e["caption"], text) == [], e


def test_prepare_returns_the_warnings_cdx_run_prints():
    cfg = config_of()
    req, guidance, said = prepare(parse_body(b'{"text": "This woman has zorblaxian hair.", "steps": 2}'), cfg,
                                  ServeOptions())
    assert req.batch == 1 and guidance is None
    assert len(said) == 1 and "'zorblaxian'" in said[0] and "never saw" in said[0] and "\n" not in said[0]
    assert prepare(parse_body(b'{"text": "This woman has long blond hair.", "steps": 2}'), cfg, ServeOptions())[2] == []


# -- a real server and a real browser


def _need_serve():
    for mod in ("ray", "fastapi", "httpx"):
        if importlib.util.find_spec(mod) is None:
            if REQUIRED:
                pytest.fail(f"CDX_REQUIRE_SERVE=1 but the serve extra is not installed ({mod})", pytrace=False)
            pytest.skip(f"the serve extra is not installed ({mod}): pip install -e '.[serve]'")


@pytest.fixture(scope="module")
def server():
    _need_serve()
    import cdx

    cdx.Pipeline.load(backend=BACKEND)  # the ONNX export exists before the server starts
    srv = Server(free_port(), ["--backend", BACKEND, "--max-steps", "20"])
    try:
        srv.wait_for(r"cdx serve: ready at http://", 420)
        srv.note_pids()
        yield srv
    finally:
        srv.stop(signal.SIGINT, 90)  # and KILL what it left: only what this server started


@pytest.fixture(scope="module")
def browser(server):
    chromium, driver = "/usr/bin/chromium", "/usr/bin/chromedriver"
    try:
        from selenium import webdriver
    except ImportError:
        if REQUIRED:
            raise
        pytest.skip("selenium is not installed (the serve extra)")
    if not (os.path.exists(chromium) and os.path.exists(driver)):
        if REQUIRED:
            pytest.fail("CDX_REQUIRE_SERVE=1 but Debian's chromium and chromium-driver are not installed")
        pytest.skip("Debian's chromium / chromium-driver are not installed (apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,800"):
        opts.add_argument(a)
    b = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=opts)
    b.set_script_timeout(60)
    yield b
    b.quit()


def _wait(browser, condition, timeout=180):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(condition)


def _open(browser, url, width, height):
    """The page in a window whose viewport is width x height CSS pixels, ready (model and examples loaded)."""
    from selenium.webdriver.common.by import By

    browser.set_window_size(width, height)
    w, h, outer_w, outer_h = browser.execute_script("return [innerWidth, innerHeight, outerWidth, outerHeight]")
    if (w, h) != (width, height):  # a window with a frame: the viewport is what counts
        browser.set_window_size(outer_w + width - w, outer_h + height - h)
    browser.get(url)
    _wait(browser, lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", 60)
    assert browser.execute_script("return [innerWidth, innerHeight]") == [width, height]


def _rect(browser, element) -> dict:
    return browser.execute_script(
        "const r = arguments[0].getBoundingClientRect(), d = document.documentElement;"
        "return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: d.clientWidth,"
        " height: d.clientHeight, scroll: scrollY}", element)


def _generate(browser, steps: int, caption: str | None = None):
    """Press generate; the first face once it has been decoded."""
    from selenium.webdriver.common.by import By

    if caption is not None:
        browser.find_element(By.ID, "text").clear()
        browser.find_element(By.ID, "text").send_keys(caption)
    browser.find_element(By.ID, "steps").clear()
    browser.find_element(By.ID, "steps").send_keys(str(steps))
    browser.execute_script("document.getElementById('results').replaceChildren()")
    browser.find_element(By.ID, "generate").click()
    img = _wait(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#results img"))[0]
    _wait(browser, lambda b: b.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), 30)
    return img


def _assert_inside(browser, img) -> dict:
    r = _rect(browser, img)
    assert 0 <= r["top"] and r["bottom"] <= r["height"] and 0 <= r["left"] and r["right"] <= r["width"], r
    assert r["bottom"] - r["top"] >= 64, r  # shown, not collapsed
    return r


def _assert_no_server_path(browser, server):
    import httpx

    html = re.sub(r"data:[^\"')\s]+", "", browser.execute_script("return document.documentElement.outerHTML"))
    shown = browser.execute_script("return document.body.innerText + ' ' + "
                                   "[...document.querySelectorAll('[title]')].map(e => e.title).join(' ')")
    assert not ABSOLUTE.search(shown), ABSOLUTE.search(shown).group(0)
    folders = ABSOLUTE.findall(httpx.get(server.url + "v1/model").json()["backend"])
    assert folders, "the backend line names its export folder (what the page must not show)"
    for text in [*folders, "/.cache", os.path.expanduser("~"), str(REPO_ROOT)]:
        assert text not in html, text


@served
def test_page_at_1280x800_paints_generates_and_shows_the_face_beside_the_canvas(server, browser, tmp_path):
    import httpx
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    _open(browser, server.url, 1280, 800)
    _assert_no_server_path(browser, server)
    assert browser.find_element(By.ID, "backend").text.startswith(BACKEND)
    icon = browser.find_element(By.CSS_SELECTOR, "link[rel=icon]").get_attribute("href")
    r = httpx.get(icon)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content
    for cls, label, code in [(3, "eyeglasses", "eye_g"), (12, "lower lip", "l_lip"), (15, "earring", "ear_r"),
                             (16, "necklace", "neck_l"), (14, "hat", "hat")]:
        b = browser.find_element(By.CSS_SELECTOR, f"#palette button[data-cls='{cls}']")
        assert b.text == label and code in b.get_attribute("title") and str(cls) in b.get_attribute("title")
    assert all("_" not in b.text for b in browser.find_elements(By.CSS_SELECTOR, "#palette button"))
    default = next(e for e in httpx.get(server.url + "v1/examples").json() if e["default"])
    assert browser.find_element(By.ID, "examples").get_attribute("value") == default["name"] == DEFAULT_EXAMPLE
    assert browser.find_element(By.ID, "text").get_attribute("value") == default["caption"]
    count = "return window.cdxPage.ids.filter(v => v === arguments[0]).length"
    assert browser.execute_script(count, 13) > 5000  # the default mask: long hair, as its caption says
    browser.find_element(By.ID, "clear").click()
    assert browser.execute_script(count, 0) == 256 * 256
    browser.find_element(By.CSS_SELECTOR, "#palette button[data-cls='14']").click()  # hat
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

    img = _generate(browser, 4)
    face = _assert_inside(browser, img)
    assert face["scroll"] == 0 and face["left"] >= _rect(browser, canvas)["right"], face  # beside the canvas
    assert browser.execute_script("return arguments[0].naturalWidth", img) == 64
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None
    assert not browser.find_element(By.ID, "warnings").is_displayed()  # the caption's words are all known
    grid = browser.find_element(By.ID, "influence-img")
    _wait(browser, lambda b: b.execute_script("return arguments[0].naturalWidth", grid) > 0, 30)
    natural = browser.execute_script("return arguments[0].naturalWidth", grid)
    assert grid.size["width"] == natural  # never shrunk: its t labels stay readable (it scrolls sideways)
    browser.find_element(By.ID, "zoom").click()
    assert grid.size["width"] == 2 * natural
    _assert_no_server_path(browser, server)
    browser.save_screenshot(str(tmp_path / "page-1280x800.png"))

    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("0")  # a bad input: the server's one-line message is shown
    browser.find_element(By.ID, "generate").click()
    err = browser.find_element(By.ID, "error")
    _wait(browser, lambda b: err.is_displayed() and "steps 0" in err.text, 60)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(EXAMPLES[0].read_bytes()[:-40])
    browser.find_element(By.ID, "file").send_keys(str(bad))
    _wait(browser, lambda b: "truncated" in err.text, 60)
    browser.find_element(By.ID, "file").send_keys(str(EXAMPLES[-1]))  # a good one replaces the painting
    _wait(browser, lambda b: b.execute_script(count, 13) > 0, 60)


@served
def test_page_shows_the_vocabulary_warning(server, browser):
    from selenium.webdriver.common.by import By

    _open(browser, server.url, 1280, 800)
    img = _generate(browser, 2, UNKNOWN)
    warnings = browser.find_element(By.ID, "warnings")
    _wait(browser, lambda b: warnings.is_displayed(), 10)
    assert "'zorblaxian'" in warnings.text and "never saw" in warnings.text, warnings.text
    _assert_inside(browser, img)
    r = _rect(browser, warnings)
    assert r["bottom"] <= r["height"], r  # in sight with the face
    _generate(browser, 2, "This woman has long blond hair.")
    assert not warnings.is_displayed()


@served
def test_page_in_a_narrow_window_scrolls_the_face_into_view(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _open(browser, server.url, 700, 800)
    try:
        wide = browser.execute_script("return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert wide <= 0, f"the page is {wide} px wider than the window"
        palette = _rect(browser, browser.find_element(By.ID, "palette"))
        assert palette["right"] <= palette["width"], palette  # the palette is not cut
        last = browser.find_element(By.CSS_SELECTOR, "#palette button[data-cls='18']")
        assert _rect(browser, last)["right"] <= palette["width"]
        img = _generate(browser, 2)
        face = _assert_inside(browser, img)
        assert face["scroll"] > 0, face  # below the palette in one column: scrolled to
        status = _rect(browser, browser.find_element(By.ID, "status"))  # and the line under it
        assert status["bottom"] <= status["height"] and "1 image(s)" in browser.find_element(By.ID, "status").text
        browser.save_screenshot(str(tmp_path / "page-700x800.png"))
    finally:
        browser.set_window_size(1280, 800)


@served
def test_generate_reply_lists_the_warnings(server):
    import httpx

    with httpx.Client(timeout=httpx.Timeout(300.0, connect=10.0)) as c:
        r = c.post(server.url + "v1/generate", json={"text": UNKNOWN, "steps": 2})
        assert r.status_code == 200, r.text[:300]
        said = r.json()["warnings"]
        assert len(said) == 1 and "'zorblaxian'" in said[0] and "never saw" in said[0], said
        r = c.post(server.url + "v1/generate", json={"text": "This woman has long blond hair.", "steps": 2})
        assert r.status_code == 200 and r.json()["warnings"] == []
