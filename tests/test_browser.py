"""The page of `alexnet serve` in a real browser: Debian's chromium (apt), driven by the
Python playwright package pinned in pyproject.toml's `test` extra (never `playwright
install`, which downloads a browser).

The server runs in a subprocess (`alexnet serve RUN --port 0`) on a small trained run; the
page gets a real photo, and the test waits for what a person would look at (the top-5, the
activation grids, an enlarged channel, the neighbours in fc7, the occlusion map, the
training curves), checks that nothing left 127.0.0.1 and that the console stayed clean, and
saves a screenshot (the README's, docs/figures/serve.png, when asked: see SCREENSHOT).

Without /usr/bin/chromium (a laptop), or with one that does not start or run a page, these
tests skip with the reason; CI sets ALEXNET_BROWSER_TESTS=required (.ci/run), where they
fail instead. A chromium whose major version differs from the pinned playwright's is only a
warning (BrowserVersionDrift): the browser tests themselves decide.
"""

import base64
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytestmark = pytest.mark.slow  # a server subprocess and a browser

ROOT = Path(__file__).resolve().parents[1]
# The README's picture, docs/figures/serve.png, is this test's screenshot of a real run:
#   ALEXNET_BROWSER_RUN=runs/fashion-mnist ALEXNET_SCREENSHOT=docs/figures/serve.png \
#       .venv/bin/python -m pytest tests/test_browser.py
# Otherwise the screenshot goes to the test's temporary folder (a test run leaves the
# repository as it was) and the run is the suite's small `fashion_run`.
SCREENSHOT = os.environ.get("ALEXNET_SCREENSHOT")
RUN = os.environ.get("ALEXNET_BROWSER_RUN")
CHROMIUM = Path("/usr/bin/chromium")
# Headless, and none of Chromium's own connections (this machine may have no network at all).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REQUIRED = os.environ.get("ALEXNET_BROWSER_TESTS", "") == "required"
WAIT_MS = 300_000  # safety net for a wait in the page (the fc7 index is built on the first neighbours request)


def _unavailable(reason: str):
    """Skip on a developer's machine; fail where the browser tests are required (CI)."""
    if REQUIRED:
        pytest.fail(f"{reason} (ALEXNET_BROWSER_TESTS=required: the browser tests must run here)")
    pytest.skip(reason)


def _debian_chromium() -> tuple[int, str]:
    """(major, full version line) of /usr/bin/chromium."""
    if not CHROMIUM.is_file():
        _unavailable(f"no {CHROMIUM}: install Debian's chromium (apt-get install -y chromium) to run the browser tests")
    r = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True, timeout=120)
    m = re.search(r"Chromium (\d+)\.[\d.]+", r.stdout)
    assert m, f"`{CHROMIUM} --version` printed no Chromium version:\n{r.stdout}{r.stderr}"
    return int(m.group(1)), m.group(0)


def _playwright_chromium() -> tuple[int, str, Path]:
    """(major, version, browsers.json) of the Chromium the installed playwright release is built for."""
    try:
        import playwright
    except ImportError:
        _unavailable("the playwright package is not installed: pip install -e '.[test]'")
    path = Path(playwright.__file__).parent / "driver" / "package" / "browsers.json"
    assert path.is_file(), f"playwright {metadata.version('playwright')} has no {path}: cannot tell its Chromium"
    browsers = json.loads(path.read_text())["browsers"]
    version = next(b["browserVersion"] for b in browsers if b["name"] == "chromium")
    return int(version.split(".")[0]), version, path


class BrowserVersionDrift(UserWarning):
    """Debian's chromium and the pinned playwright's Chromium have different major versions."""


def _version_drift() -> str | None:
    """A warning when Debian's chromium and the playwright release are of different majors.

    playwright speaks the DevTools protocol of one Chromium release, but the protocol moves
    slowly: playwright 1.64.1 (Chromium 156) drove Debian's chromium 150 through every
    browser test here. Debian's security suite ships a new major about every four weeks, so
    a drift is reported, not failed on; the browser tests themselves decide."""
    debian, line = _debian_chromium()
    pinned, version, path = _playwright_chromium()
    if debian == pinned:
        return None
    return (
        f"Debian's chromium and the pinned playwright drifted apart: {CHROMIUM} is {line}, "
        f"playwright {metadata.version('playwright')} is built for Chromium {version} ({path}). "
        "The browser tests still decide; if they fail, pin the playwright release whose Chromium "
        f"is {debian}.x in pyproject.toml's `test` extra (its release notes name each release's Chromium)."
    )


@contextlib.contextmanager
def _launched_browser():
    """Debian's chromium under the pinned playwright, checked to run a page; a version drift
    is a warning (BrowserVersionDrift). A browser that does not start or run a page skips the
    tests, or fails them where they are required (CI), with the drift named as a suspect."""
    drift = _version_drift()
    if drift:
        warnings.warn(drift, BrowserVersionDrift, stacklevel=2)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    suspect = f" ({drift})" if drift else ""
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        except PlaywrightError as e:
            _unavailable(f"{CHROMIUM} does not start under playwright: {str(e).splitlines()[0]}{suspect}")
        try:
            page = b.new_page()
            page.set_content("<p id=p>ok</p><script>document.title = String(6 * 7)</script>")
            if page.title() != "42" or page.inner_text("#p") != "ok":
                _unavailable(f"{CHROMIUM} started but did not run a page{suspect}")
            page.close()
            yield b
        finally:
            b.close()


def test_a_version_drift_is_a_warning_when_the_browser_works(monkeypatch):
    """The guard: a chromium of another major than the pinned playwright's (simulated here)
    is a BrowserVersionDrift warning, and the browser still has to work."""
    pinned = _playwright_chromium()[0]
    monkeypatch.setattr(sys.modules[__name__], "_debian_chromium", lambda: (pinned - 6, f"Chromium {pinned - 6}.0"))
    with pytest.warns(BrowserVersionDrift, match=f"Chromium {pinned - 6}.0"):
        with _launched_browser() as b:
            page = b.new_page()
            page.set_content("<b>drift</b>")
            assert page.inner_text("b") == "drift"


# ------------------------------------------------------------------ the server


class Server:
    """`alexnet serve TARGET --port 0` in a subprocess; its output is drained by a thread."""

    def __init__(self, target: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alexnet", "serve", str(target), "--port", "0", "--device", "cpu"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.url_found = threading.Event()
        self.url = None
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"https?://[\w.:\[\]-]+/?", line)
            if m and self.url is None:
                self.url = m.group(0).rstrip("/") + "/"
                self.url_found.set()
        self.url_found.set()  # the server ended: no URL will come

    def output(self) -> str:
        return "".join(self.lines)[-4000:]

    def wait_for_url(self, deadline: float = 300) -> str:
        self.url_found.wait(deadline)
        assert self.url, f"`alexnet serve` printed no URL (exit status {self.proc.poll()}):\n{self.output()}"
        return self.url

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(request):
    srv = Server(Path(RUN) if RUN else request.getfixturevalue("fashion_run"))
    try:
        srv.wait_for_url()
        yield srv
    finally:
        srv.stop()
    assert srv.proc.returncode is not None


@pytest.fixture(scope="module")
def browser():
    with _launched_browser() as b:
        yield b


class Recorder:
    """Every request the page makes, and every console error and uncaught exception."""

    def __init__(self, page):
        self.urls: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def foreign(self) -> list[str]:
        """Requests that went anywhere but 127.0.0.1 (data: and blob: URLs stay in the page)."""
        out = []
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob"):
                continue
            if parts.scheme not in ("http", "https") or parts.hostname != "127.0.0.1":
                out.append(url)
        return out


def _tile_centre(tower: dict, grid_size: tuple[int, int], box: dict, channel: int) -> dict:
    """Where to click (in the displayed image's coordinates) for `channel` of `tower`: the
    spec's layout, tile (r, c) at (c * (tile_w + pad), r * (tile_h + pad)), filled row by row."""
    h, w = tower["tile"]
    pad = tower.get("pad", 0)
    r, c = divmod(channel - tower["channels"][0], tower["cols"])
    x = c * (w + pad) + w / 2
    y = r * (h + pad) + h / 2
    return {"x": x * box["width"] / grid_size[0], "y": y * box["height"] / grid_size[1]}


def _until(page, expression: str) -> None:
    """Wait until a JavaScript expression is true in the page. (Not page.wait_for_function:
    its polling evaluates strings inside the page, which the page's CSP rightly forbids.)"""
    end = time.monotonic() + WAIT_MS / 1000
    while not page.evaluate(expression):
        assert time.monotonic() < end, f"safety net: still false after {WAIT_MS / 1000:.0f} s: {expression}"
        time.sleep(0.1)


def _post(url: str, body: bytes) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=WAIT_MS / 1000) as r:
        return json.loads(r.read())


def _png_size(data_url: str) -> tuple[int, int]:
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).size


def test_the_page_in_a_real_browser(browser, server, photos, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(WAIT_MS)
    rec = Recorder(page)
    try:
        _look_inside(page, rec, server, photos, tmp_path)
    except Exception:
        print(f"server output:\n{server.output()}\nrequests: {rec.urls}\nconsole: {rec.errors}")
        raise
    finally:
        page.close()


def _look_inside(page, rec, server, photos, tmp_path):
    response = page.goto(server.url)
    assert response.status == 200
    csp = response.headers.get("content-security-policy", "")
    for rule in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"):
        assert rule in csp, f"the page's Content-Security-Policy lacks {rule!r}: {csp!r}"
    assert response.headers.get("x-content-type-options") == "nosniff"
    page.wait_for_selector("body[data-ready='1']")
    info = page.evaluate("fetch('/api/info').then(r => r.json())")

    # a test image of the run, then a real photo, uploaded through the file input
    page.click("#samples .sample >> nth=0")
    page.wait_for_selector("#top5 li")
    page.set_input_files("#file", photos["astronaut.jpg"])
    # the same request from here, for the geometry of the grids the page shows
    activations = _post(server.url + "api/activations", photos["astronaut.jpg"].read_bytes())

    # the top-5, with probabilities (the results of the image before are marked stale until replaced)
    page.wait_for_selector("#prediction:not([hidden]):not(.stale)")
    assert page.locator("#top5 li").count() == 5
    names = page.locator("#top5 .name").all_text_contents()
    assert all(n in info["classes"] for n in names), names
    probs = [float(t.rstrip("%").lstrip("<")) / 100 for t in page.locator("#top5 .pct").all_text_contents()]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-3, probs
    assert page.locator("#original").get_attribute("src").startswith("blob:")
    assert page.locator("#input").get_attribute("src").startswith("data:image/png")

    # every layer's activations: a grid per tower for conv1..conv5, a strip for fc6/fc7
    page.wait_for_selector("#activations-body:not([hidden]):not(.stale)")
    convs = [layer for layer in activations["layers"] if "towers" in layer]
    assert [layer["name"] for layer in convs] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    for layer in activations["layers"]:
        block = page.locator(f".layer[data-layer='{layer['name']}']")
        assert block.locator(".shape").text_content() == "×".join(map(str, layer["shape"]))
        assert block.locator("img.grid" if "towers" in layer else "img.strip").count() == len(layer.get("towers", [1]))
    _until(page, "[...document.querySelectorAll('#layers img')].every(i => i.complete && i.naturalWidth > 0)")
    if info["towers"] == 2:
        assert any(len(layer["towers"]) == 2 for layer in convs), "a grouped model shows two towers"

    # clicking a tile enlarges that channel: the last tower of conv2, its channel 3
    layer = convs[1]
    t = len(layer["towers"]) - 1
    tower = layer["towers"][t]
    channel = tower["channels"][0] + min(3, tower["channels"][1] - tower["channels"][0] - 1)
    grid = page.locator(".layer[data-layer='conv2'] img.grid").nth(t)
    grid.scroll_into_view_if_needed()
    grid.click(position=_tile_centre(tower, _png_size(tower["grid"]), grid.bounding_box(), channel))
    page.wait_for_selector("#zoom:not([hidden])")
    caption = page.text_content("#zoom-caption")
    assert caption.startswith(f"conv2 · channel {channel} of {layer['shape'][0]}"), caption
    size = page.evaluate(
        "[document.getElementById('zoom-canvas').width, document.getElementById('zoom-canvas').height]"
    )
    assert size == [tower["tile"][1], tower["tile"][0]], (size, tower["tile"])

    # Figure 3 and Figure 4
    assert page.locator("#filters img").count() == info["towers"]
    if info["has_index"]:
        page.wait_for_selector("#neighbors:not(.stale) figure")
        assert page.locator("#neighbors figure").count() == 6
        assert "training images" in page.text_content("#neighbors-meta")
    else:
        assert page.locator("#neighbors-unavailable").is_visible()

    # occlusion for the top class: the map, its window and stride, how long it took
    page.wait_for_selector("#occlusion-body:not([hidden]):not(.stale)")
    meta = page.text_content("#occ-meta")
    assert re.search(r"window \d+×\d+ pixels, stride \d+, \d+ positions, [\d.]+ s", meta), meta
    assert meta.startswith(f"For {names[0]} "), (meta, names)

    # the run: three charts drawn from metrics.csv, the finished run's status, its config
    _until(page, "document.querySelectorAll('#charts svg path.series').length >= 3")
    assert page.text_content("#run-status").startswith("The run ended: done")
    assert page.locator("#config-box").is_visible()
    page.click("#config-box summary")
    assert json.loads(page.text_content("#config"))["model"]["name"] == "small"
    page.click("#config-box summary")  # closed again for the screenshot

    assert page.locator("#message").is_hidden(), page.text_content("#message-text")
    assert not rec.errors, rec.errors
    screenshot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "serve.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000  # a page, not a blank

    # the paper's 10-patch average
    page.check("#ten-crop")
    _until(page, "document.getElementById('predict-meta').textContent.startsWith('10 patches')")

    # a file that is not an image: the server's one-line error, shown in the page
    page.set_input_files(
        "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image, just words\n" * 20}]
    )
    page.wait_for_selector("#message:not([hidden])")
    assert page.text_content("#message-text").startswith("Predict: ")
    assert page.locator("#prediction").is_hidden()
    # Chromium logs the refused request (400) as a console error; nothing else may appear
    assert all(re.search(r"status of 4\d\d", e) for e in rec.errors), rec.errors

    # the page is still usable: a test image again
    page.click("#samples .sample >> nth=1")
    page.wait_for_selector("#prediction:not([hidden])")
    assert page.locator("#message").is_hidden()

    assert rec.urls and not rec.foreign(), f"requests that left 127.0.0.1: {rec.foreign()}"
