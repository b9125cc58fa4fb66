"""Egress through the site's HTTP proxy (upstream.proxy): a real tinyproxy, from Debian's packages, between
hf-edge and the fake Hub. https upstreams go through CONNECT tunnels (TLS end to end: the proxy sees no request,
no token), http upstreams as absolute-form requests; upstream.no_proxy hosts go direct. Whether a request went
through the proxy is read from the proxy's own log and from the `Via` header it adds to what it forwards."""

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from snippets import SNAPSHOT_AT
from support import Client, free_port, http, sha256, stop

pytestmark = pytest.mark.edge_only

REPO = "gpt2"
REGULAR = "config.json"


class Tinyproxy:
    def __init__(self, url: str, log: Path):
        self.url = url
        self.log_path = log

    def lines(self) -> list[str]:
        """What the proxy logged it was asked: `GET http://host:port/path HTTP/1.1`, `CONNECT host:port HTTP/1.1`."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return re.findall(r"Request \(file descriptor \d+\): (.*)", text)


@pytest.fixture
def tinyproxy(tmp_path):
    """Starts tinyproxy on a free loopback port: tinyproxy(connect_ports=[...], basic_auth=("user", "pw"))."""
    binary = shutil.which("tinyproxy")
    assert binary, "tinyproxy is missing (scripts/setup.sh installs Debian's tinyproxy-bin)"
    with contextlib.ExitStack() as stack:
        def start(connect_ports=(), basic_auth=None) -> Tinyproxy:
            port = free_port()
            workdir = tmp_path / f"tinyproxy-{port}"
            workdir.mkdir()
            log = workdir / "tinyproxy.log"
            conf = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", f'LogFile "{log}"', "LogLevel Connect",
                    "MaxClients 64", "Allow 127.0.0.1"]
            # Without ConnectPort lines tinyproxy tunnels to any port; with them, to those only.
            conf += [f"ConnectPort {p}" for p in connect_ports]
            if basic_auth:
                conf.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
            (workdir / "tinyproxy.conf").write_text("\n".join(conf) + "\n")
            process = subprocess.Popen([binary, "-d", "-c", str(workdir / "tinyproxy.conf")],
                                       stdout=subprocess.DEVNULL, stderr=open(workdir / "stderr.log", "wb"))
            stack.callback(stop, process)
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                assert process.poll() is None and time.monotonic() < deadline, (workdir / "stderr.log").read_text()
                time.sleep(0.05)
            return Tinyproxy(f"http://127.0.0.1:{port}", log)
        yield start


def port_of(url: str) -> int:
    return urlsplit(url).port


def error_of(status_headers_body) -> str:
    status, headers, body = status_headers_body
    assert status == 502 and headers["Content-Type"].startswith("application/json"), (status, body)
    return json.loads(body)["error"]


def test_http_upstream_requests_all_go_through_the_proxy(other_fakehub, other_edge, tinyproxy, tmp_path):
    """The real client's snapshot_download: every request the fake Hub and its CDN received came through the
    proxy (tinyproxy's Via header on each), and the proxy's own log holds each of them, absolute-form."""
    hub = other_fakehub()
    proxy = tinyproxy()
    edge = other_edge(hub.hub, upstream={"proxy": proxy.url})
    want = hub.expected(REPO)

    got = Client(edge.url, tmp_path).run(SNAPSHOT_AT, repo_id=REPO)

    assert got == {"commit": want["commit"], "files": {p: f["sha256"] for p, f in want["files"].items()}}
    log = hub.log()
    assert {e["server"] for e in log} == {"hub", "cdn"}
    assert all("tinyproxy" in e["headers"].get("via", "") for e in log), [e["path"] for e in log]
    origins = {"hub": hub.hub, "cdn": hub.cdn}
    seen_by_hub = sorted(f"{e['method']} {origins[e['server']]}{e['path']}" for e in log)
    seen_by_proxy = sorted(re.sub(r"\?.*? HTTP", " HTTP", line).removesuffix(" HTTP/1.1")
                           for line in proxy.lines())
    assert seen_by_proxy == seen_by_hub


def test_https_upstreams_are_tunnelled_with_connect(other_fakehub, other_edge, tinyproxy, pki, tmp_path):
    """A TLS Hub and CDN: hf-edge opens CONNECT tunnels to each (and sends no request in the clear), verifies
    their certificates through them (upstream.ca_file), and the real client gets the right bytes."""
    hub = other_fakehub("--tls-cert", str(pki.good.cert), "--tls-key", str(pki.good.key))
    proxy = tinyproxy(connect_ports=[port_of(hub.hub), port_of(hub.cdn)])
    edge = other_edge(hub.hub, upstream={"proxy": proxy.url, "ca_file": str(pki.ca.cert)})
    want = hub.expected(REPO)

    got = Client(edge.url, tmp_path).run(SNAPSHOT_AT, repo_id=REPO)

    assert got == {"commit": want["commit"], "files": {p: f["sha256"] for p, f in want["files"].items()}}
    lines = proxy.lines()
    assert lines and all(line.startswith("CONNECT ") for line in lines), lines
    tunnels = {line.split()[1] for line in lines}
    assert tunnels == {urlsplit(hub.hub).netloc, urlsplit(hub.cdn).netloc}
    assert {(e["server"], e["tls"]) for e in hub.log()} == {("hub", True), ("cdn", True)}


def test_no_proxy_hosts_are_reached_directly(other_fakehub, other_edge, tinyproxy, tmp_path):
    """upstream.no_proxy names the CDN's address: the Hub is asked through the proxy, the CDN directly."""
    hub = other_fakehub()
    proxy = tinyproxy()
    cdn_host = urlsplit(hub.cdn).hostname
    edge = other_edge(hub.hub, upstream={"proxy": proxy.url, "no_proxy": [cdn_host]})

    Client(edge.url, tmp_path).run(SNAPSHOT_AT, repo_id=REPO)

    log = hub.log()
    via = {(e["server"], "tinyproxy" in e["headers"].get("via", "")) for e in log}
    assert via == {("hub", True), ("cdn", False)}
    assert not any(cdn_host in line for line in proxy.lines())


def test_proxy_credentials_are_sent_and_a_refusal_is_a_clear_502(other_fakehub, other_edge, tinyproxy, pki,
                                                                  tmp_path):
    """A proxy that wants credentials: with upstream.proxy_credentials_file they are sent (to the proxy only: the
    fake Hub never sees them); without them, with wrong ones, to a tunnel the proxy will not open, or with no
    proxy listening, every request gets a 502 whose JSON error says the proxy refused and how, and nothing
    reaches the Hub."""
    hub = other_fakehub()
    tls_hub = other_fakehub("--tls-cert", str(pki.good.cert), "--tls-key", str(pki.good.key))
    proxy = tinyproxy(basic_auth=("edge", "s3cret"), connect_ports=[port_of(tls_hub.hub), port_of(tls_hub.cdn)])
    good, wrong = tmp_path / "good-credentials", tmp_path / "wrong-credentials"
    good.write_text("edge:s3cret\n")
    wrong.write_text("edge:guess\n")
    path = f"/{REPO}/resolve/main/{REGULAR}"
    paths = (path, f"/api/models/{REPO}/revision/main")

    for upstream_hub in (hub, tls_hub):
        edge = other_edge(upstream_hub.hub, upstream={"proxy": proxy.url, "proxy_credentials_file": str(good),
                                                      "ca_file": str(pki.ca.cert)})
        status, _, body = http("GET", edge.url + path)
        assert status == 200 and sha256(body) == upstream_hub.expected(REPO)["files"][REGULAR]["sha256"]
        assert not any("proxy-authorization" in e["headers"] for e in upstream_hub.log())
    hub.clear_log()
    tls_hub.clear_log()

    # Without credentials: a 407 to the absolute-form request (http) and to the CONNECT (https).
    for upstream_hub in (hub, tls_hub):
        edge = other_edge(upstream_hub.hub, upstream={"proxy": proxy.url, "ca_file": str(pki.ca.cert)})
        for p in paths:
            error = error_of(http("GET", edge.url + p))
            assert "upstream proxy 127.0.0.1:" in error and "407" in error, (upstream_hub.hub, p, error)
    # Wrong credentials, through a tunnel (tinyproxy refuses them with a 401 instead of a 407, which on an http
    # request could not be told from the Hub's own 401; at CONNECT it can).
    edge = other_edge(tls_hub.hub, upstream={"proxy": proxy.url, "proxy_credentials_file": str(wrong),
                                             "ca_file": str(pki.ca.cert)})
    for p in paths:
        error = error_of(http("GET", edge.url + p))
        assert f"refused CONNECT to {urlsplit(tls_hub.hub).netloc}" in error and "401" in error, (p, error)

    strict = tinyproxy(connect_ports=[443])  # will not tunnel to the fake's ports
    edge = other_edge(tls_hub.hub, upstream={"proxy": strict.url, "ca_file": str(pki.ca.cert)})
    error = error_of(http("GET", edge.url + path))
    assert f"refused CONNECT to {urlsplit(tls_hub.hub).netloc}" in error and "403" in error, error

    nowhere = other_edge(hub.hub, upstream={"proxy": f"http://127.0.0.1:{free_port()}"})
    error = error_of(http("GET", nowhere.url + path))
    assert "upstream proxy 127.0.0.1:" in error, error
    assert hub.log() == [] and tls_hub.log() == []
