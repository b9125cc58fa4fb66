"""The status page (GET / on the client listener) in a real headless Chromium from Debian's packages: the DOM
Chromium built (--dump-dom; the page has no script, and its Content-Security-Policy forbids any) is checked against
what huggingface_hub did through the edge, and a screenshot is kept in target/test-output/status-page.png."""

import json
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

from snippets import DOWNLOAD
from support import Client, http

pytestmark = pytest.mark.edge_only

OUTPUT = Path(__file__).resolve().parents[2] / "target" / "test-output"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
HELD_AFTER = 4 << 20  # bytes of the big model the fake CDN sends before it holds the body
CHROMIUM_TIMEOUT = 60
CLIENTS = ["huggingface_hub", "transformers", "datasets", "git", "hf_transfer", "tei", "vllm", "llama_cpp"]


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess:
    """Debian's Chromium, headless, with no network of its own beyond the page (this machine's is closed)."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: scripts/setup.sh installs Debian's package"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={user_data}"]
    result = subprocess.run([binary, *flags, *args], capture_output=True, timeout=CHROMIUM_TIMEOUT)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result


class Dom(HTMLParser):
    """The elements of a dumped DOM with an id or a data-* attribute: their attributes and text."""

    def __init__(self, html: str):
        super().__init__()
        self.elements: list[dict] = []
        self._open: list[dict] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        if tag not in ("meta", "link", "br", "img", "input"):
            self._open.append(element)
        if any(k == "id" or k.startswith("data-") for k, _ in attrs) or tag == "progress":
            self.elements.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def by_id(self, id_: str) -> dict:
        found = [e for e in self.elements if e["attrs"].get("id") == id_]
        assert len(found) == 1, f"#{id_}: {found}"
        return found[0]

    def with_attr(self, name: str) -> list[dict]:
        return [e for e in self.elements if name in e["attrs"]]


def test_the_status_page_in_chromium(other_fakehub, other_edge, tmp_path):
    hub = other_fakehub()
    edge = other_edge(hub.hub)
    # What the page reports: one file fetched, then fetched again by another client (a hit), and a big one
    # whose fill the fake CDN holds part-way, so the page shows it in progress.
    for n in (1, 2):
        Client(edge.url, tmp_path / f"client-{n}").run(DOWNLOAD, repo_id="gpt2", filenames=["config.json"])
    hub.fault({"mode": "slow", "delay": 0, "server": "cdn", "hold": HELD_AFTER, "times": 1})  # its first body
    big = Client(edge.url, tmp_path / "client-big")
    outcome = {}
    download = threading.Thread(target=lambda: outcome.update(
        big.outcome(DOWNLOAD, repo_id=MINILM, filenames=["model.safetensors"], timeout=120)))
    download.start()
    try:
        def fill_started():
            _, _, body = http("GET", f"{edge.url}/status.json")
            fills = json.loads(body)["fills"]
            return fills and fills[0]["written"] >= HELD_AFTER
        for _ in range(200):
            if fill_started():
                break
            threading.Event().wait(0.1)
        assert fill_started(), "the held fill never showed in /status.json"

        dom_run = chromium("--dump-dom", f"{edge.url}/", user_data=tmp_path / "chromium-dom")
        status = json.loads(http("GET", f"{edge.url}/status.json")[2])
        OUTPUT.mkdir(parents=True, exist_ok=True)
        shot = OUTPUT / "status-page.png"
        shot.unlink(missing_ok=True)
        chromium(f"--screenshot={shot}", "--window-size=1200,2100", "--hide-scrollbars", f"{edge.url}/",
                 user_data=tmp_path / "chromium-shot")
    finally:
        hub._call("POST", "/_fake/release")
        download.join(timeout=120)

    assert "error" not in outcome, outcome
    assert shot.stat().st_size > 10_000, "a screenshot of a rendered page"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = Dom(dom_run.stdout.decode())
    assert dom.by_id("endpoint")["text"] == edge.url
    assert dom.by_id("version")["text"].strip()
    # Every client, each with a snippet carrying this edge's own URL.
    rows = {e["attrs"]["data-client"]: e["text"] for e in dom.with_attr("data-client")}
    assert sorted(rows) == sorted(CLIENTS)
    for name, text in rows.items():
        assert edge.url in text, (name, text)
    hub_row = dom.with_attr("data-upstream")
    assert [e["attrs"]["data-upstream"] for e in hub_row] == ["/"]
    assert hub.hub in hub_row[0]["text"]
    assert dom.by_id("offline")["text"] == "off"
    assert dom.by_id("hit-ratio")["text"] == "50.0 %"  # config.json: a miss, then a hit
    assert dom.by_id("bytes-saved")["text"] != "0 B"
    repos = [e["attrs"]["data-repo"] for e in dom.with_attr("data-repo")]
    assert repos == ["gpt2"], repos
    fills = dom.with_attr("data-blob")
    assert len(fills) == 1 and fills[0]["attrs"]["data-blob"].startswith("sha256/"), fills
    store_bar = float(dom.by_id("store-bar")["attrs"]["value"])
    assert store_bar == round(status["store"]["fill_percent"], 1)
    bars = [e for e in dom.elements if e["tag"] == "progress"]
    fill_bar = float(bars[-1]["attrs"]["value"])
    assert 0 < fill_bar < 100, bars
