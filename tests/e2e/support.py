"""Helpers for the end-to-end tests: plain HTTP, the fake Hub's control API, and client processes."""

import contextlib
import gzip
import hashlib
import json
import os
import selectors
import signal
import socket
import subprocess
import time
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET = os.environ.get("E2E_TARGET", "edge")  # what clients talk to: "edge" (hf-edge) or "hub" (the fake itself)
CLIENT_RUNNER = Path(__file__).with_name("client_runner.py")
CLIENT_TIMEOUT = 180.0



class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # tests look at redirects themselves


# No proxy from the environment may stand between the tests and the loopback servers.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30,
         context=None):
    """(status, headers, body) of one request, without following redirects or raising on HTTP errors; `context`:
    the ssl.SSLContext of an https URL (for a CA of the run's)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    opener = _HTTP if context is None else urllib.request.build_opener(
        urllib.request.ProxyHandler({}), _NoRedirects(), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def get_following(url: str, headers: dict | None = None, hops: int = 5):
    """(status, headers, body) of a GET that follows redirects (relative or absolute), as a client does."""
    for _ in range(hops):
        status, response_headers, body = http("GET", url, headers=headers)
        if status not in (301, 302, 303, 307, 308):
            break
        url = urllib.parse.urljoin(url, response_headers["Location"])
    return status, response_headers, body


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decoded(headers, body: bytes) -> bytes:
    """A response body with its Content-Encoding (gzip or none: what the fake Hub sends) undone."""
    encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
    assert encoding in ("gzip", "identity"), f"unexpected Content-Encoding {encoding!r}"
    return gzip.decompress(body) if encoding == "gzip" else body


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class FakeHub:
    hub: str
    cdn: str
    control: str  # the fake's test control API (/_fake/*), on a listener of its own that faults never touch
    third: str  # a host that is neither the Hub nor a CDN host: where the `redirect` fault points

    def _call(self, method: str, path: str, payload=None):
        body = json.dumps(payload).encode() if payload is not None else None
        status, _, data = http(method, self.control + path, body, {"Content-Type": "application/json"})
        assert status == 200, f"{method} {path}: {status} {data[:500]!r}"
        return json.loads(data)

    def log(self) -> list[dict]:
        return self._call("GET", "/_fake/log")

    def clear_log(self) -> None:
        self._call("POST", "/_fake/log/clear")

    def push(self, repo: str, files: dict[str, str], repo_type: str = "model") -> str:
        return self._call("POST", "/_fake/push", {"repo": repo, "type": repo_type, "files": files})["commit"]

    def expected(self, repo: str, revision: str = "main", repo_type: str = "model") -> dict:
        """{"commit": sha, "files": {path: {"sha256", "size", "lfs", "oid"}}} as the fake Hub holds them."""
        query = urllib.parse.urlencode({"repo": repo, "rev": revision, "type": repo_type})
        return self._call("GET", f"/_fake/files?{query}")

    def fault(self, spec: dict) -> None:
        """Makes the fake Hub or CDN misbehave: see Fault in fakehub.py for `spec`."""
        self._call("POST", "/_fake/faults", spec)

    def clear_faults(self) -> None:
        self._call("POST", "/_fake/faults/clear")


def venv_python(venv: Path, requirements: Path, install_timeout: float = 900) -> Path:
    """The python of `venv`, (re)created with `requirements` when they changed (pip's cache makes a rebuild a
    matter of seconds); the install may take `install_timeout` seconds."""
    python, stamp = venv / "bin" / "python", venv / ".requirements.sha256"
    want = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if not python.exists() or not stamp.exists() or stamp.read_text() != want:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r",
                        str(requirements)], check=True, timeout=install_timeout)
        stamp.write_text(want)
    return python


@dataclass
class Edge:
    url: str  # what clients use as HF_ENDPOINT
    metrics_addr: str  # host:port of metrics.listen
    stderr: Path  # where the access log goes
    config: Path | None = None  # its config file (for the `hf-edge` commands that read it)


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The first stdout line of a process, or '' if none came in time or it exited."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if selector.select(timeout):
            return process.stdout.readline().decode()
    return ""


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    process.send_signal(sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


STARTUP_TIMEOUT = 30.0


def wait_healthy(process: subprocess.Popen, url: str, stderr_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"hf-edge exited with {process.returncode}:\n{stderr_path.read_text()}")
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"hf-edge not healthy at {url} after {STARTUP_TIMEOUT}s:\n{stderr_path.read_text()}")


class ClientError(AssertionError):
    pass


class Client:
    """A huggingface_hub user with an empty cache of their own, talking to `endpoint`."""

    def __init__(self, endpoint: str, home: Path, env: dict[str, str] | None = None, python: Path | None = None):
        self.endpoint = endpoint
        self.home = home
        self.python = python or Path(sys.executable)  # another venv's python runs other client versions
        self.cache = home / "hub"
        self.extra_env = env or {}  # e.g. SSL_CERT_FILE, for a client that talks to a TLS fake Hub itself

    def env(self, token: str | None = None) -> dict[str, str]:
        # Nothing from the outer environment: no token, no cache, no proxy between the client and loopback.
        env = {k: v for k, v in os.environ.items()
               if not k.upper().startswith(("HF_", "HUGGINGFACE_", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                                            "SSL_CERT_"))}
        env.update(self.extra_env)
        env.update(
            HF_ENDPOINT=self.endpoint,
            HF_HOME=str(self.home),
            HF_HUB_CACHE=str(self.cache),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_HUB_DISABLE_UPDATE_CHECK="1",
            HF_XET_TELEMETRY_ENABLED="false",
            # A client that strays onto Xet fails fast against the fake CAS instead of retrying for minutes.
            HF_XET_CLIENT_RETRY_MAX_ATTEMPTS="1",
        )
        if token:
            env["HF_TOKEN"] = token
        return env

    def outcome(self, code: str, token: str | None = None, timeout: float = CLIENT_TIMEOUT, **args) -> dict:
        process = subprocess.run(
            [str(self.python), str(CLIENT_RUNNER)],
            input=json.dumps({"code": code, "args": args}).encode(),
            env=self.env(token), capture_output=True, timeout=timeout,
        )
        lines = [l for l in process.stdout.decode().splitlines() if l.startswith("E2E-RESULT ")]
        if not lines:
            raise ClientError(f"client crashed ({process.returncode}):\n{process.stderr.decode()[-4000:]}")
        return json.loads(lines[-1].removeprefix("E2E-RESULT "))

    def run(self, code: str, token: str | None = None, **args):
        """The snippet's `result`; fails the test with the client's traceback if it raised."""
        outcome = self.outcome(code, token, **args)
        if "error" in outcome:
            raise ClientError(f"client raised {outcome['error']}:\n{outcome['traceback']}")
        return outcome["result"]

    def error(self, code: str, token: str | None = None, **args) -> dict:
        """The error the snippet raised; fails the test if it succeeded."""
        outcome = self.outcome(code, token, **args)
        if "error" not in outcome:
            raise ClientError(f"expected an error, client returned {outcome['result']!r}")
        return outcome

    def cli(self, *argv: str, token: str | None = None, timeout: float = CLIENT_TIMEOUT):
        hf = Path(sys.executable).with_name("hf")
        return subprocess.run([str(hf), *argv], env=self.env(token), capture_output=True, timeout=timeout)


def edge_config(hub_url: str, workdir: Path, port: int, metrics_port: int,
                upstream: dict | None = None, cache: dict | None = None, ops: dict | None = None,
                mounts: list | None = None, top: dict | None = None) -> str:
    """The config of a test hf-edge; `upstream`, `cache` and `ops` add or override keys of those sections;
    `mounts` is the `mounts:` list, as is; `top` adds top-level keys (tls, trusted_proxies...)."""
    config = (top or {}) | {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"endpoint": hub_url, "cdn_hosts": ["127.0.0.2"], **(upstream or {})},
        "cache": {"dir": f"{workdir}/cache", "max_size": "10GiB", **(cache or {})},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
    }
    if ops:
        config["ops"] = ops
    if mounts:
        config["mounts"] = mounts
    return json.dumps(config, indent=2) + "\n"  # JSON is YAML


def edge_binary() -> Path:
    binary = Path(os.environ.get("HF_EDGE_BIN", REPO_ROOT / "target" / "debug" / "hf-edge"))
    if not binary.is_file():
        pytest.fail(f"hf-edge binary not found at {binary}: build it, set HF_EDGE_BIN, or run with E2E_TARGET=hub")
    return binary


@contextlib.contextmanager
def running_edge(hub_url: str, workdir: Path, env: dict[str, str] | None = None, **sections):
    """hf-edge in front of `hub_url`, stopped on exit; `sections` as for edge_config, `env` added to its
    environment."""
    binary = edge_binary()
    # No HF_TOKEN from the outer environment: it would become the upstream token of an instance meant to have none.
    # Nor SSL_CERT_FILE / SSL_CERT_DIR: what hf-edge trusts upstream is for each test to say.
    env = {k: v for k, v in os.environ.items()
           if not k.upper().startswith(("HF_", "HUGGINGFACE_", "SSL_CERT_"))} | (env or {})
    port, metrics_port = free_port(), free_port()
    config = workdir / "config.yaml"
    config.write_text(edge_config(hub_url, workdir, port, metrics_port, **sections))
    stderr_path = workdir / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen([str(binary), "serve", "--config", str(config)],
                                   stdout=subprocess.DEVNULL, stderr=stderr, env=env)
    try:
        wait_healthy(process, f"http://127.0.0.1:{metrics_port}/healthz", stderr_path)
        yield Edge(f"http://127.0.0.1:{port}", f"127.0.0.1:{metrics_port}", stderr_path, config)
    finally:
        stop(process, signal.SIGINT)  # Pingora's fast shutdown; SIGTERM's graceful one waits out a grace period


def start_fakehub(log: Path, *options: str, timeout: float = STARTUP_TIMEOUT) -> tuple[subprocess.Popen, FakeHub]:
    """A fake Hub started with command-line `options` (see fakehub.py --help), its stderr in `log`: (process, its
    URLs); the caller stops it. RuntimeError, with the log, when it does not start within `timeout`."""
    with open(log, "wb") as stderr:
        process = subprocess.Popen([sys.executable, str(REPO_ROOT / "tests" / "fakehub" / "fakehub.py"), *options],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    line = read_line(process, timeout)
    if not line:
        stop(process)
        raise RuntimeError(f"the fake Hub did not start within {timeout} s:\n{log.read_text()}")
    urls = json.loads(line)
    return process, FakeHub(urls["hub"], urls["cdn"], urls["control"], urls["third"])


def start_edge(binary: Path, hub_url: str, workdir: Path, port: int | None = None,
               extra: dict | None = None) -> tuple[subprocess.Popen, str, str]:
    """A fresh hf-edge (the benchmarks' config, plus `extra` top-level keys) on an empty cache in
    `workdir`, listening on `port` (a free one by default): (process, its address host:port, its
    metrics URL); the caller stops it."""
    port, metrics_port = port or free_port(), free_port()
    config = {
        "listen": f"127.0.0.1:{port}",
        "upstream": {"endpoint": hub_url, "cdn_hosts": ["127.0.0.2"]},
        "cache": {"dir": str(workdir / "cache"), "max_size": "10GiB"},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "log": {"access": "off"},
        **(extra or {}),
    }
    (workdir / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
    stderr_path = workdir / "stderr.log"
    with open(stderr_path, "wb") as stderr:
        process = subprocess.Popen([str(binary), "serve", "--config", str(workdir / "config.yaml")],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr)
    metrics = f"http://127.0.0.1:{metrics_port}"
    try:
        wait_healthy(process, f"{metrics}/healthz", stderr_path)
    except BaseException:
        stop(process, signal.SIGINT)
        raise
    return process, f"127.0.0.1:{port}", metrics
