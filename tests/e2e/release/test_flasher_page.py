"""The flasher page of a real release, in headless Chromium, served from 127.0.0.1 by workshop.serve.

ESP Web Tools is the real npm package (fetched by workshop.release into the cache); the images
are labelled placeholders since ESP builds cannot run here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "host" / "release"))

from chromium import Browser, find_chromium  # noqa: E402
from placeholders import ESP_BOARDS, clean_tree, never_stale, write_placeholder_build  # noqa: E402
from workshop import release as rel  # noqa: E402
from workshop import serve  # noqa: E402


@pytest.fixture(scope="module")
def web_tools() -> Path:
    if not shutil.which("npm"):
        pytest.fail("npm not found: the release fetches ESP Web Tools from the npm registry (apt-get install npm)")
    return rel.ensure_web_tools()


@pytest.fixture
def served_release(tmp_path, web_tools):
    dist = tmp_path / "dist"
    for board in ESP_BOARDS:
        write_placeholder_build(dist, board, size=64 * 1024)
    made = rel.make_release("v0.1.0", dist=dist, out=tmp_path / "release" / "v0.1.0", web_tools=web_tools,
                            boards=ESP_BOARDS, stale=never_stale, tree_dirty=clean_tree)
    server = serve.make_server(made.directory, "127.0.0.1", 0)
    serve.start_in_thread(server)
    yield made, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser(tmp_path):
    binary = find_chromium()
    if not binary:
        pytest.fail("chromium not found: apt-get install chromium (the flasher page is tested in a real browser)")
    b = Browser(binary, tmp_path / "profile", tmp_path / "chromium.log")
    yield b
    b.close()


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_release_bundles_the_real_esp_web_tools(web_tools, served_release):
    made, _ = served_release
    assert (web_tools / "VERSION").read_text().strip() == rel.ESP_WEB_TOOLS_VERSION
    copied = made.directory / rel.WEB_TOOLS_DIR
    assert (copied / "install-button.js").is_file() and (copied / "LICENSE").is_file()
    # Self-contained: no module is imported from another origin.
    for js in copied.glob("*.js"):
        text = js.read_text()
        assert "unpkg.com" not in text and "jsdelivr" not in text and 'from"http' not in text.replace(" ", "")


def test_a_damaged_esp_web_tools_cache_is_replaced(tmp_path):
    """A cached ESP Web Tools folder missing its files (deleted by hand) made every release fetch
    the package again, throw it away, and fail with "no install-button.js"."""
    if shutil.which("npm") is None:
        pytest.skip("npm not installed (apt-get install npm): ESP Web Tools is fetched from the npm registry")
    web = tmp_path / "esp-web-tools" / rel.ESP_WEB_TOOLS_VERSION / "web"
    web.mkdir(parents=True)
    (web / "styles.js").write_text("// what was left\n")
    assert rel.ensure_web_tools(cache=tmp_path) == web
    assert (web / "install-button.js").is_file() and (web / "VERSION").read_text().strip() == rel.ESP_WEB_TOOLS_VERSION


def test_flasher_page_in_headless_chromium(served_release, browser, tmp_path):
    made, base = served_release
    browser.goto(base, "!!document.body && ['true', 'error'].includes(document.body.dataset.loaded)")
    browser.pump(1.5)   # let ESP Web Tools finish loading its chunks and render

    assert browser.evaluate("document.body.dataset.loaded") == "true", browser.evaluate("document.querySelector('#status').textContent")
    index = json.loads((made.directory / "index.json").read_text())
    rendered = browser.evaluate("[...document.querySelectorAll('#boards li.board')].map(li => li.dataset.board)")
    assert rendered == [b["board"] for b in index["boards"]] == list(ESP_BOARDS)
    families = browser.evaluate("[...document.querySelectorAll('#boards li.board')].map(li => li.dataset.chipFamily)")
    assert families == ["ESP32", "ESP32-C3", "ESP32-S2", "ESP32-S3", "ESP8266"]
    # The S2 stays in its bootloader after a flash (boards/*.toml manual_reset_after_flash): its
    # attendees are told to press RESET, the others are not.
    told = browser.evaluate("[...document.querySelectorAll('#boards li.board')].filter(li => li.querySelector('.reset-note')).map(li => li.dataset.board)")
    assert told == ["ESP32_GENERIC_S2"]
    assert browser.evaluate("document.title") == "MicroPython workshop firmware v0.1.0"
    # 127.0.0.1 is a secure context and Chromium has WebSerial: no "cannot flash" notice.
    assert browser.evaluate("window.isSecureContext && 'serial' in navigator && document.querySelector('#no-serial').hidden")
    # ESP Web Tools itself loaded from this origin and upgraded the buttons.
    assert browser.evaluate("customElements.get('esp-web-install-button') !== undefined")
    assert browser.evaluate("[...document.querySelectorAll('esp-web-install-button')].every(b => b.shadowRoot)")

    manifests = browser.evaluate("[...document.querySelectorAll('esp-web-install-button')].map(b => new URL(b.getAttribute('manifest'), location.href).href)")
    links = browser.evaluate("[...document.querySelectorAll('a[href]')].map(a => a.href)")
    assert len(manifests) == len(ESP_BOARDS)
    referenced = set(manifests) | set(links)
    for manifest_url in manifests:
        status, body = get(manifest_url)
        assert status == 200
        manifest = json.loads(body)
        for build in manifest["builds"]:
            for part in build["parts"]:
                referenced.add(urllib.parse.urljoin(manifest_url, part["path"]))
    sums = rel.parse_sums((made.directory / "SHA256SUMS").read_text())
    for url in sorted(referenced):
        assert url.startswith(base), f"{url} is not served from the page's origin"
        status, body = get(url)
        assert status == 200, url
        name = urllib.parse.unquote(url[len(base):])
        if name in sums:
            assert hashlib.sha256(body).hexdigest() == sums[name], f"{url} does not match SHA256SUMS"
    images = {f"{b}-20261121-v1.28.0-v0.1.0.bin" for b in ESP_BOARDS}
    assert {urllib.parse.unquote(u[len(base):]) for u in referenced} >= images | {"SHA256SUMS", "index.json"}

    # Everything the browser itself loaded came from the same origin and answered 200.
    loaded = {u: s for u, s in browser.log.responses.items() if not u.startswith("data:")}
    assert f"{base}esp-web-tools/install-button.js" in loaded and f"{base}index.json" in loaded
    assert {u: s for u, s in loaded.items() if s != 200 or not u.startswith(base)} == {}
    assert browser.log.errors == []

    shot = browser.screenshot(tmp_path / "flasher.png")
    keep = os.environ.get("WORKSHOP_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "flasher.png")
    assert shot.stat().st_size > 10_000, "a rendered page, not a blank one"


def test_page_reports_a_missing_index(tmp_path, browser, web_tools):
    """A half-uploaded site says so on the page instead of showing an empty list."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(rel.flasher_page())
    shutil.copytree(web_tools, site / rel.WEB_TOOLS_DIR)
    (site / "index.json").write_text("{}")  # make_server wants one; then remove it
    server = serve.make_server(site, "127.0.0.1", 0)
    (site / "index.json").unlink()
    serve.start_in_thread(server)
    try:
        browser.goto(f"http://127.0.0.1:{server.server_address[1]}/", "!!document.body && document.body.dataset.loaded === 'error'")
        assert "Could not load the board list: index.json: HTTP 404" in browser.evaluate("document.querySelector('#status').textContent")
    finally:
        server.shutdown()
        server.server_close()
