"""The client side of hf-edge at a site's gateway: a TLS listener (tls.*) with a certificate from a CA made for
the run, HTTP/2 for clients that offer it, and trusted_proxies: who the client is when a load balancer stands in
front (the PROXY protocol, sent by a real HAProxy from Debian's packages, and X-Forwarded-For / -Proto), believed
from those addresses only."""

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import time
from http.client import HTTPSConnection
from pathlib import Path

import pytest

from snippets import SNAPSHOT_AT
from support import Client, free_port, http, running_edge, sha256, stop

pytestmark = pytest.mark.edge_only

REPO, LFS = "gpt2", "pytorch_model.bin"
PAGED = "fake-org/many-files"
LIST_FILES = """
from huggingface_hub import list_repo_files
result = list_repo_files(args["repo_id"])
"""
# A loopback address of its own for "the real client", so that it can be told from the proxy in front (127.0.0.1).
CLIENT_IP = "127.0.0.5"


def access_lines(edge) -> list[dict]:
    return [json.loads(line) for line in edge.stderr.read_text().splitlines() if line.startswith("{")]


def last_client(edge, count: int) -> str:
    """The `client` of the access log's `count`th line, once it is written (after the answer is sent)."""
    deadline = time.monotonic() + 10
    while len(lines := access_lines(edge)) < count:
        assert time.monotonic() < deadline, f"no access line {count} in {edge.stderr}"
        time.sleep(0.05)
    return lines[count - 1]["client"]


@contextlib.contextmanager
def tls_edge(hub, workdir: Path, pki, **top):
    port = free_port()
    tls = {"listen": f"127.0.0.1:{port}", "cert_file": str(pki.good.cert), "key_file": str(pki.good.key)}
    workdir.mkdir()
    with running_edge(hub.hub, workdir, top={"tls": tls, **top}) as edge:
        yield edge, f"https://127.0.0.1:{port}"


def test_the_real_client_over_https(fakehub, pki, tmp_path):
    """huggingface_hub with HF_ENDPOINT=https://...: snapshot_download (right bytes), and a paginated listing
    whose next-page links hf-edge rewrites to https, its own scheme on that listener."""
    with tls_edge(fakehub, tmp_path / "edge", pki) as (edge, https_url):
        client = Client(https_url, tmp_path / "client", env={"SSL_CERT_FILE": str(pki.ca.cert)})
        want = fakehub.expected(REPO)

        got = client.run(SNAPSHOT_AT, repo_id=REPO)
        files = client.run(LIST_FILES, repo_id=PAGED)

        assert got == {"commit": want["commit"], "files": {p: f["sha256"] for p, f in want["files"].items()}}
        assert sorted(files) == sorted(fakehub.expected(PAGED)["files"])
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        _, headers, _ = http("GET", f"{https_url}/api/models/{PAGED}/tree/main?recursive=true", context=context)
        assert headers["Link"].startswith(f"<{https_url}/api/models/{PAGED}/tree/"), headers["Link"]
        # The plain listener goes on serving, with http links.
        _, headers, _ = http("GET", f"{edge.url}/api/models/{PAGED}/tree/main?recursive=true")
        assert headers["Link"].startswith(f"<{edge.url}/"), headers["Link"]


def test_http2_for_clients_that_offer_it(fakehub, pki, tmp_path):
    """curl negotiates HTTP/2 by ALPN and downloads an LFS file, whole and as a range, with the right bytes."""
    curl = shutil.which("curl")
    assert curl, "curl is missing"
    want = fakehub.expected(REPO)["files"][LFS]
    with tls_edge(fakehub, tmp_path / "edge", pki) as (_, https_url):
        url = f"{https_url}/{REPO}/resolve/main/{LFS}"
        for extra, expect in (([], want["sha256"]), (["-r", "0-99"], None)):
            out = tmp_path / "body"
            done = subprocess.run([curl, "-sS", "-L", "--http2", "--cacert", str(pki.ca.cert), "-o", str(out),
                                   "-w", "%{http_version} %{http_code}", *extra, url],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            version, status = done.stdout.split()
            assert version == "2", done.stdout
            if expect:
                assert status == "200" and sha256(out.read_bytes()) == expect
            else:
                assert status == "206" and out.stat().st_size == 100


def test_a_certificate_that_does_not_load_is_a_config_error(fakehub, pki, tmp_path):
    from support import edge_binary, edge_config
    cases = {"missing": (tmp_path / "missing.pem", pki.good.key, "missing.pem"),
             "key of another certificate": (pki.good.cert, pki.untrusted.key, "does not hold the key"),
             "no certificate": (pki.good.key, pki.good.key, "no CERTIFICATE")}
    for name, (cert, key, error) in cases.items():
        config = tmp_path / "config.yaml"
        tls = {"listen": f"127.0.0.1:{free_port()}", "cert_file": str(cert), "key_file": str(key)}
        config.write_text(edge_config(fakehub.hub, tmp_path, free_port(), free_port(), top={"tls": tls}))
        done = subprocess.run([str(edge_binary()), "check-config", str(config)], capture_output=True, timeout=30)
        stderr = done.stderr.decode()
        assert done.returncode == 2 and "tls.cert_file: " in stderr and error in stderr, (name, stderr)


def raw_request(port: int, payload: bytes, source: str = CLIENT_IP) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(payload)
        chunks = []
        while data := s.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_forwarded_headers_are_believed_only_from_trusted_proxies(fakehub, tmp_path):
    """X-Forwarded-For and -Proto from a trusted proxy name the client in the access log and the scheme of the
    links hf-edge writes; from anyone else they change nothing."""
    path = f"/api/models/{PAGED}/tree/main?recursive=true"
    forwarded = {"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https"}
    for trusted, believed in ((["127.0.0.0/24"], True), (["10.0.0.0/8"], False)):
        workdir = tmp_path / f"edge-{believed}"
        workdir.mkdir()
        with running_edge(fakehub.hub, workdir, top={"trusted_proxies": trusted}) as edge:
            _, headers, _ = http("GET", edge.url + path, headers=forwarded)

            scheme = "https" if believed else "http"
            assert headers["Link"].startswith(f"<{scheme}://{edge.url.removeprefix('http://')}/"), headers["Link"]
            client = last_client(edge, 1)
            assert (client == "198.51.100.7") == believed, client


@pytest.fixture
def haproxy(tmp_path):
    """A real HAProxy in TCP mode in front of hf-edge, sending the PROXY protocol: haproxy(backend_port, version,
    tls) -> its port."""
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    assert binary, "haproxy is missing (scripts/setup.sh installs Debian's haproxy)"
    with contextlib.ExitStack() as stack:
        def start(backend: int, version: int) -> int:
            port = free_port()
            send = "send-proxy-v2" if version == 2 else "send-proxy"
            conf = tmp_path / f"haproxy-{port}.cfg"
            conf.write_text(f"""global
    maxconn 64
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend edge
    bind 127.0.0.1:{port}
    default_backend edge
backend edge
    server edge 127.0.0.1:{backend} {send}
""")
            process = subprocess.Popen([binary, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL,
                                       stderr=open(tmp_path / f"haproxy-{port}.log", "wb"))
            stack.callback(stop, process)
            deadline = time.monotonic() + 10
            while True:
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return port
                assert process.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / f"haproxy-{port}.log").read_text()
                time.sleep(0.05)
        yield start


def test_the_proxy_protocol_from_a_trusted_load_balancer(fakehub, haproxy, pki, tmp_path):
    """HAProxy in front, PROXY v1 to the plain listener and v2 to the TLS one: the access log names the real
    client (its own loopback address), and its requests are answered as usual. A client that sends a PROXY
    header itself, from an untrusted address, is refused (400) and named as it is."""
    with tls_edge(fakehub, tmp_path / "edge", pki, trusted_proxies=["127.0.0.1"]) as (edge, https_url):
        plain_port, tls_port = int(edge.url.rsplit(":", 1)[1]), int(https_url.rsplit(":", 1)[1])
        request = f"GET /api/models/{REPO} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n".encode()

        answer = raw_request(haproxy(plain_port, 1), request)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert last_client(edge, 1).startswith(f"{CLIENT_IP}:")

        v2 = haproxy(tls_port, 2)
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        with socket.create_connection(("127.0.0.1", v2), timeout=10, source_address=(CLIENT_IP, 0)) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(request)
                answer = b"".join(iter(lambda: s.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert last_client(edge, 2).startswith(f"{CLIENT_IP}:")

        spoofed = b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 80\r\n" + request
        answer = raw_request(plain_port, spoofed, source=CLIENT_IP)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert not any("198.51.100.7" in line.get("client", "") for line in access_lines(edge))


def served_certificate(port: int, pki) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port), ca_certs=str(pki.ca.cert))


def test_certificates_are_read_again_on_reload(fakehub, pki, tmp_path):
    """A renewed certificate is served after POST /admin/reload, without a restart, while a connection opened
    before goes on; files that do not load refuse the reload (400, JSON error) and the renewed one stays."""
    workdir = tmp_path / "edge"
    workdir.mkdir()
    cert, key = workdir / "tls.pem", workdir / "tls.key"
    cert.write_bytes(pki.good.cert.read_bytes())
    key.write_bytes(pki.good.key.read_bytes())
    port = free_port()
    tls = {"listen": f"127.0.0.1:{port}", "cert_file": str(cert), "key_file": str(key)}
    admin = {"Authorization": "Bearer reload-secret"}
    with running_edge(fakehub.hub, workdir, ops={"admin_token": "reload-secret"}, top={"tls": tls}) as edge:
        reload = f"http://{edge.metrics_addr}/admin/reload"
        first = served_certificate(port, pki)
        assert ssl.PEM_cert_to_DER_cert(first) == ssl.PEM_cert_to_DER_cert(pki.good.cert.read_text())
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        before = HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        before.request("GET", f"/api/models/{REPO}")
        assert before.getresponse().read() and before.sock is not None
        sock = before.sock

        renewed = pki.ca.issue("renewed", ["IP:127.0.0.1"])
        cert.write_bytes(renewed.cert.read_bytes())
        key.write_bytes(renewed.key.read_bytes())
        status, _, body = http("POST", reload, headers=admin)
        assert status == 200, body

        assert ssl.PEM_cert_to_DER_cert(served_certificate(port, pki)) == \
            ssl.PEM_cert_to_DER_cert(renewed.cert.read_text())
        before.request("GET", f"/api/models/{REPO}")  # the connection from before the reload still serves
        answer = before.getresponse()
        assert answer.status == 200 and answer.read() and before.sock is sock
        before.close()

        cert.write_text("not a certificate\n")
        status, headers, body = http("POST", reload, headers=admin)
        assert status == 400 and "tls.cert_file" in json.loads(body)["error"], body
        assert ssl.PEM_cert_to_DER_cert(served_certificate(port, pki)) == \
            ssl.PEM_cert_to_DER_cert(renewed.cert.read_text())
