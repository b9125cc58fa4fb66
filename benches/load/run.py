#!/usr/bin/env python3
"""Load comparison: hf-edge vs nginx proxy_cache vs nginx serving the files (the ceiling).

One command (`benches/load/run.sh`) builds hf-edge in release, generates the test files once,
starts on loopback

  * the "CDN": nginx serving the files from disk (127.0.0.2, Range, sendfile, access log),
  * a minimal Hub (benches/load/hub.py) answering /resolve like huggingface.co,
  * hf-edge (target/release/hf-edge, threads 2) in front of that Hub,
  * nginx (worker_processes 2) as a proxy_cache in front of the CDN, and a second server
    block of the same nginx serving the files statically,

measures each with external tools (curl, wrk), prints a table and writes JSON. Every process
it starts is stopped on exit, including on errors, Ctrl-C and the global deadline.
See benches/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BENCH = ROOT / "target" / "bench"
FILES = BENCH / "files"
EDGE_BIN = ROOT / "target" / "release" / "hf-edge"

GiB = 1 << 30
MiB = 1 << 20
REPO = "bench/model"
COMMIT = hashlib.sha1(b"hf-edge bench commit 1").hexdigest()
BIG, MID, SMALL = "model-1g.safetensors", "model-256m.safetensors", "config.json"
SPECS = {BIG: ("hf-edge-bench-1g", GiB), MID: ("hf-edge-bench-256m", 256 * MiB)}
MANIFEST_VERSION = 1
CDN_HOST = "127.0.0.2"
SERVERS = ("hf-edge", "nginx", "static")
LABEL = {"hf-edge": "hf-edge", "nginx": "nginx proxy_cache", "static": "nginx static"}

T0 = time.monotonic()
DEADLINE = [T0 + 900.0]


class Deadline(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def remaining() -> float:
    left = DEADLINE[0] - time.monotonic()
    if left <= 0:
        raise Deadline("global deadline reached")
    return left


def bounded(t: float) -> float:
    """A step timeout that never runs past the global deadline."""
    return max(1.0, min(t, remaining()))


# ---------------------------------------------------------------- processes

class Procs:
    """Every process this script starts, in its own session; stopped by pid on exit."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen] = {}
        self.stop_signal: dict[str, int] = {}

    def start(self, name: str, argv: list[str], log_path: Path, stop_signal: int = signal.SIGTERM,
              **kw) -> subprocess.Popen:
        self.stop_signal[name] = stop_signal
        out = open(log_path, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, **kw)
        out.close()
        self.procs[name] = p
        return p

    def stop(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is None:
            return
        sig = self.stop_signal.get(name, signal.SIGTERM)
        try:
            if p.poll() is None:
                p.send_signal(sig)
            p.wait(timeout=10)  # nginx's master waits for its workers before it exits
            # Orphans of a leader that died early still carry its group id (never reused
            # while they live): stop them by pid.
            for pid in all_pids():
                if pgrp(pid) == p.pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            return
        except subprocess.TimeoutExpired:
            pass
        # Still running (so its process group id is still its own): kill the group it leads.
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            p.kill()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


PROCS = Procs()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + bounded(timeout)
    last = None
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                r.read()
                return
        except urllib.error.HTTPError as e:  # any HTTP answer means it is up
            if e.code < 500:
                return
            last = e
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


# ---------------------------------------------------------------- machine and setup

def run(argv: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, timeout=bounded(timeout), check=check, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def ensure_tools() -> None:
    missing = [t for t in ("nginx", "wrk", "curl") if shutil.which(t) is None
               and not Path(f"/usr/sbin/{t}").exists()]
    if not missing:
        return
    pkgs = {"nginx": "nginx", "wrk": "wrk", "curl": "curl"}
    log(f"installing {' '.join(missing)} with apt-get")
    had_pid = Path("/run/nginx.pid").exists()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    argv = ["apt-get", "install", "-y", "--no-install-recommends"] + [pkgs[m] for m in missing]
    if run(argv, timeout=300, check=False, env=env).returncode != 0:
        run(["apt-get", "update"], timeout=300, env=env)
        run(argv, timeout=300, env=env)
    if "nginx" in missing and not had_pid and Path("/run/nginx.pid").exists():
        # The package started the system nginx: this script started it, so it stops it.
        run(["nginx", "-s", "stop"], timeout=30, check=False)


def nginx_bin() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


def rustc_count() -> int:
    n = 0
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == "rustc":
                    n += 1
            except OSError:
                pass
    return n


def machine() -> dict:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
    mem_gib = int(mem.split()[1]) / (1 << 20)

    def version(argv):
        try:
            return run(argv, timeout=10, check=False).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "unknown"

    return {
        "nproc": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "cpu": cpu,
        "nginx": version([nginx_bin(), "-v"]),
        "wrk": version(["wrk", "--version"]).split(" Copyright")[0],
        "curl": version(["curl", "--version"]).split(" (")[0],
    }


def git_state() -> dict:
    try:
        head = run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], timeout=10).stdout.strip()
        dirty = run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src", "Cargo.toml",
                     "Cargo.lock"], timeout=10).stdout.strip()
        return {"head": head, "src_dirty": bool(dirty)}
    except Exception:  # noqa: BLE001
        return {"head": "unknown", "src_dirty": None}


def build(skip: bool, edge_bin: Path | None) -> None:
    global EDGE_BIN
    if edge_bin:
        EDGE_BIN = edge_bin.resolve()
        log(f"using {EDGE_BIN} (--edge-bin), no build")
        return
    if skip:
        if not EDGE_BIN.exists():
            sys.exit(f"--no-build but {EDGE_BIN} does not exist")
        log("skipping the build (--no-build)")
        return
    log("cargo build --release --locked")
    r = subprocess.run(["cargo", "build", "--release", "--locked"], cwd=ROOT, timeout=bounded(600))
    if r.returncode != 0:
        sys.exit("the release build failed")


def gen_files() -> dict:
    """The test files, generated once (deterministic content) into target/bench/files."""
    mpath = FILES / "manifest.json"
    if mpath.exists():
        m = json.loads(mpath.read_text())
        ok = m.get("version") == MANIFEST_VERSION and all(
            (FILES / f["disk"]).is_file() and (FILES / f["disk"]).stat().st_size == f["size"]
            for f in m["files"].values())
        if ok:
            return m
    log("generating the test files (once) into target/bench/files")
    (FILES / "blobs").mkdir(parents=True, exist_ok=True)
    files = {}
    for name, (seed, size) in SPECS.items():
        rng = random.Random(seed)
        sha, oid = hashlib.sha256(), hashlib.sha1(f"blob {size}\0".encode())
        tmp = FILES / f"{name}.tmp"
        with open(tmp, "wb") as out:
            left = size
            while left:
                chunk = rng.randbytes(min(left, 16 * MiB))
                sha.update(chunk)
                oid.update(chunk)
                out.write(chunk)
                left -= len(chunk)
        digest = sha.hexdigest()
        os.replace(tmp, FILES / "blobs" / digest)
        files[name] = {"lfs": True, "size": size, "sha256": digest, "oid": oid.hexdigest(),
                       "disk": f"blobs/{digest}", "cdn_path": f"/blobs/{digest}"}
    cfg = json.dumps({
        "architectures": ["BenchModel"], "model_type": "bench", "hidden_size": 1024,
        "num_attention_heads": 16, "num_hidden_layers": 24, "vocab_size": 50257,
        "torch_dtype": "bfloat16", "transformers_version": "4.44.0",
        "_comment": "hf-edge load benchmark " + "x" * 400,
    }, indent=2).encode() + b"\n"
    (FILES / SMALL).write_bytes(cfg)
    files[SMALL] = {"lfs": False, "size": len(cfg), "sha256": hashlib.sha256(cfg).hexdigest(),
                    "oid": hashlib.sha1(f"blob {len(cfg)}\0".encode() + cfg).hexdigest(),
                    "disk": SMALL, "cdn_path": f"/{SMALL}"}
    m = {"version": MANIFEST_VERSION, "repo": REPO, "commit": COMMIT, "root": str(FILES),
         "files": files}
    mpath.write_text(json.dumps(m, indent=2))
    return m


# ---------------------------------------------------------------- the servers

NGINX_COMMON = """
worker_processes {workers};
{user}
pid {run}/{name}.pid;
error_log {run}/{name}-error.log warn;
daemon off;
worker_rlimit_nofile 16384;
events {{ worker_connections 4096; }}
http {{
    types {{ application/json json; }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {run}/{name}-tmp/body;
    proxy_temp_path {run}/{name}-tmp/proxy;
    fastcgi_temp_path {run}/{name}-tmp/fastcgi;
    uwsgi_temp_path {run}/{name}-tmp/uwsgi;
    scgi_temp_path {run}/{name}-tmp/scgi;
{body}
}}
"""

CDN_BODY = """
    log_format cdn '$request_method $uri $status $body_bytes_sent "$http_range"';
    access_log {run}/cdn-access.log cdn;
    server {{
        listen {host}:{port};
        root {files};
        location / {{ }}
    }}
"""

SUBJECT_BODY = """
    access_log off;
    proxy_cache_path {cache} levels=1:2 keys_zone=hf:16m max_size=20g inactive=365d use_temp_path=off;
    upstream cdn {{
        server {cdn_host}:{cdn_port};
        keepalive 32;
    }}
    # nginx as an operator would deploy it: a proxy_cache in front of the CDN.
    server {{
        listen 127.0.0.1:{proxy_port};
        location / {{
            proxy_pass http://cdn;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache hf;
            proxy_cache_key $uri;            # without the query string (signed URLs)
            proxy_cache_lock on;
            proxy_cache_lock_timeout 120s;
            proxy_cache_lock_age 120s;
            proxy_cache_valid 200 1y;
            add_header X-Cache-Status $upstream_cache_status;
        }}
    }}
    # The ceiling: the same files served from disk.
    server {{
        listen 127.0.0.1:{static_port};
        root {files};
        location / {{ }}
    }}
"""


def nginx_user() -> str:
    # As root, nginx would run its workers as `nobody`; keep them as the invoking user.
    if os.geteuid() == 0:
        return "user root root;"
    return ""


def write_nginx_conf(run_dir: Path, name: str, body: str, workers: int) -> Path:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (run_dir / f"{name}-tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = NGINX_COMMON.format(workers=workers, user=nginx_user(), run=run_dir, name=name, body=body)
    path = run_dir / f"{name}.conf"
    path.write_text(conf)
    return path


def start_nginx(run_dir: Path, name: str, conf: Path) -> subprocess.Popen:
    argv = [nginx_bin(), "-p", str(run_dir), "-e", str(run_dir / f"{name}-error.log"), "-c", str(conf)]
    r = run(argv + ["-t"], timeout=30, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"nginx -t failed for {name}:\n{r.stdout}")
    return PROCS.start(name, argv, run_dir / f"{name}.out")


class Bench:
    def __init__(self, args, manifest: dict, run_dir: Path):
        self.args = args
        self.m = manifest
        self.run = run_dir
        self.ports = {
            "cdn": free_port(CDN_HOST), "hub": free_port("127.0.0.1"), "edge": free_port("127.0.0.1"),
            "metrics": free_port("127.0.0.1"), "nginx": free_port("127.0.0.1"),
            "static": free_port("127.0.0.1"),
        }
        self.generation = 0
        self.edge_proc: subprocess.Popen | None = None
        self.nginx_proc: subprocess.Popen | None = None

    # ---- URLs

    def url(self, server: str, name: str) -> str:
        f = self.m["files"][name]
        if server == "hf-edge":
            return f"http://127.0.0.1:{self.ports['edge']}/{REPO}/resolve/main/{name}"
        if server == "nginx":
            return f"http://127.0.0.1:{self.ports['nginx']}{f['cdn_path']}"
        if server == "static":
            return f"http://127.0.0.1:{self.ports['static']}{f['cdn_path']}"
        if server == "cdn":
            return f"http://{CDN_HOST}:{self.ports['cdn']}{f['cdn_path']}"
        raise ValueError(server)

    # ---- lifecycle

    def start_origin(self) -> None:
        body = CDN_BODY.format(run=self.run, host=CDN_HOST, port=self.ports["cdn"], files=FILES)
        conf = write_nginx_conf(self.run, "cdn", body, workers=2)
        p = start_nginx(self.run, "cdn", conf)
        wait_http(f"http://{CDN_HOST}:{self.ports['cdn']}/{SMALL}", 15, p)
        mpath = self.run / "manifest.json"
        mpath.write_text(json.dumps(self.m))
        hub = PROCS.start("hub", [sys.executable, str(HERE / "hub.py"),
                                  "--listen", f"127.0.0.1:{self.ports['hub']}",
                                  "--cdn", f"http://{CDN_HOST}:{self.ports['cdn']}",
                                  "--manifest", str(mpath), "--log", str(self.run / "hub.log")],
                          self.run / "hub.out")
        wait_http(f"http://127.0.0.1:{self.ports['hub']}/{REPO}/resolve/main/{SMALL}", 15, hub)

    def start_edge(self) -> None:
        """(Re)starts hf-edge on a fresh, empty cache directory."""
        PROCS.stop("hf-edge")
        self.generation += 1
        for old in self.run.glob("edge-cache-*"):
            shutil.rmtree(old, ignore_errors=True)
        cache = self.run / f"edge-cache-{self.generation}"
        cfg = self.run / "hf-edge.yaml"
        cfg.write_text(
            f'listen: "127.0.0.1:{self.ports["edge"]}"\n'
            f"threads: 2\n"
            f"upstream:\n"
            f'  endpoint: "http://127.0.0.1:{self.ports["hub"]}"\n'
            f'  cdn_hosts: ["{CDN_HOST}"]\n'
            f"cache:\n"
            f'  dir: "{cache}"\n'
            f'  max_size: "20GiB"\n'
            f"metrics:\n"
            f'  listen: "127.0.0.1:{self.ports["metrics"]}"\n'
            f"log:\n"
            f'  access: "off"\n')
        chk = run([str(EDGE_BIN), "check-config", str(cfg)], timeout=30, check=False)
        if chk.returncode != 0:
            raise RuntimeError(f"hf-edge check-config failed: {chk.stdout}")
        self.edge_proc = PROCS.start("hf-edge", [str(EDGE_BIN), "serve", "--config", str(cfg)],
                                     self.run / "hf-edge.log", env=dict(os.environ, RUST_LOG="warn"),
                                     stop_signal=signal.SIGINT)  # SIGTERM is Pingora's graceful stop
        wait_http(f"http://127.0.0.1:{self.ports['metrics']}/healthz", 30, self.edge_proc)

    def start_subject_nginx(self) -> None:
        """(Re)starts the compared nginx (proxy_cache + static) on a fresh cache directory."""
        PROCS.stop("nginx")
        self.generation += 1
        for old in self.run.glob("nginx-cache-*"):
            shutil.rmtree(old, ignore_errors=True)
        cache = self.run / f"nginx-cache-{self.generation}"
        body = SUBJECT_BODY.format(cache=cache, cdn_host=CDN_HOST, cdn_port=self.ports["cdn"],
                                   proxy_port=self.ports["nginx"], static_port=self.ports["static"],
                                   files=FILES)
        conf = write_nginx_conf(self.run, "nginx", body, workers=2)
        self.nginx_proc = start_nginx(self.run, "nginx", conf)
        wait_http(f"http://127.0.0.1:{self.ports['static']}/{SMALL}", 15, self.nginx_proc)

    def restart_fresh(self, server: str) -> None:
        if server == "hf-edge":
            self.start_edge()
        elif server == "nginx":
            self.start_subject_nginx()

    def server_pids(self, server: str) -> list[int]:
        if server == "hf-edge":
            return [self.edge_proc.pid]
        master = self.nginx_proc.pid
        return [pid for pid in all_pids() if ppid(pid) == master]

    def cdn_requests(self, path: str) -> int:
        p = self.run / "cdn-access.log"
        if not p.exists():
            return 0
        return sum(1 for line in p.read_text().splitlines()
                   if line.split(" ")[:2] in (["GET", path], ["HEAD", path]))


# ---------------------------------------------------------------- /proc sampling

def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def pgrp(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return -1


def status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


def reset_hwm(pids: list[int]) -> None:
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


class RssSampler:
    """Samples the summed VmRSS of some processes every `period` seconds."""

    def __init__(self, pids: list[int], period: float = 0.02):
        self.pids, self.period = pids, period
        self.samples: list[tuple[float, int]] = []
        self.stop_evt = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        while not self.stop_evt.is_set():
            self.samples.append((time.monotonic(), sum(status_kib(p, "VmRSS") for p in self.pids)))
            self.stop_evt.wait(self.period)

    def __enter__(self):
        reset_hwm(self.pids)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_evt.set()
        self.thread.join(timeout=2)
        self.hwm_kib = sum(status_kib(p, "VmHWM") for p in self.pids)

    @property
    def peak_kib(self) -> int:
        return max((s for _, s in self.samples), default=0)

    def steady_kib(self) -> int:
        """Median VmRSS over the middle half of the run."""
        n = len(self.samples)
        mid = [s for _, s in self.samples[n // 4: n - n // 4]] or [s for _, s in self.samples]
        return int(statistics.median(mid)) if mid else 0


# ---------------------------------------------------------------- load tools

CURL_FMT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}\\n"


def curls(url: str, n: int, timeout: float, headers: list[str] = ()) -> dict:
    """n concurrent curl processes fetching url to /dev/null; wall time from first launch."""
    argv = ["curl", "-sS", "-o", "/dev/null", "--max-time", str(int(bounded(timeout))),
            "-w", CURL_FMT.replace("\\n", "\n")]
    for h in headers:
        argv += ["-H", h]
    t0 = time.perf_counter()
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(argv + [url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True))
        results = []
        for p in procs:
            out, err = p.communicate(timeout=bounded(timeout + 10))
            parts = out.split()
            if p.returncode != 0 or len(parts) != 4:
                raise RuntimeError(f"curl {url} failed ({p.returncode}): {err.strip()} {out.strip()}")
            code, size, ttfb, total = int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])
            results.append({"code": code, "bytes": size, "ttfb": ttfb, "total": total})
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {"wall": wall, "clients": results, "bytes": sum(r["bytes"] for r in results)}


UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_latency(v: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", v)
    return float(m[1]) * UNIT[m[2]]


def wrk(url: str, conns: int, seconds: int, script: Path | None = None, env: dict | None = None) -> dict:
    argv = ["wrk", f"-t{min(2, conns)}", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    if script:
        argv += ["-s", str(script)]
    r = subprocess.run(argv + [url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=bounded(seconds + 30), env=dict(os.environ, **(env or {})))
    out = r.stdout
    if r.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed:\n{out}")
    lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", out, re.M))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    reqs = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),
        "p50_ms": parse_latency(lat["50"]),
        "p99_ms": parse_latency(lat["99"]),
        "requests": int(reqs[1]) if reqs else None,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx[1]) if non2xx else 0,
    }


def sha256_of(url: str, headers: list[str] = ()) -> tuple[str, int]:
    argv = ["curl", "-sSf", "--max-time", str(int(bounded(120)))]
    for h in headers:
        argv += ["-H", h]
    h = hashlib.sha256()
    n = 0
    with subprocess.Popen(argv + [url], stdout=subprocess.PIPE, start_new_session=True) as p:
        while chunk := p.stdout.read(4 * MiB):
            h.update(chunk)
            n += len(chunk)
        if p.wait(timeout=bounded(30)) != 0:
            raise RuntimeError(f"GET {url} failed")
    return h.hexdigest(), n


# ---------------------------------------------------------------- the measurements

def med(xs):
    xs = [x for x in list(xs) if x is not None]
    return statistics.median(xs) if xs else None


def measure_cold(b: Bench, runs: int) -> dict:
    """Cold miss of the 256 MiB blob: a fresh cache every run, vs the CDN directly."""
    out = {s: {"ttfb_ms": [], "total_s": []} for s in ("hf-edge", "nginx", "cdn")}
    size = b.m["files"][MID]["size"]
    for i in range(runs):
        for server in ("cdn", "hf-edge", "nginx"):
            b.restart_fresh(server)
            r = curls(b.url(server, MID), 1, 120)["clients"][0]
            if r["code"] != 200 or r["bytes"] != size:
                raise RuntimeError(f"cold {server}: {r}")
            out[server]["ttfb_ms"].append(r["ttfb"] * 1e3)
            out[server]["total_s"].append(r["total"])
        log(f"cold run {i + 1}: " + ", ".join(
            f"{s} ttfb {out[s]['ttfb_ms'][-1]:.1f} ms total {out[s]['total_s'][-1]:.3f} s" for s in out))
    return out


def measure_coalescing(b: Bench, clients: int, trials: int) -> dict:
    """Issue 3 (a, b): N concurrent cold clients of the 256 MiB blob, on a fresh cache each
    trial: body fetches the CDN saw, and each client's time to first byte."""
    res = {}
    f = b.m["files"][MID]
    for server in ("hf-edge", "nginx"):
        per = []
        for _ in range(trials):
            b.restart_fresh(server)
            before = b.cdn_requests(f["cdn_path"])
            r = curls(b.url(server, MID), clients, 180)
            time.sleep(0.3)  # nginx writes its access log line when the response completes
            fetches = b.cdn_requests(f["cdn_path"]) - before
            bad = [c for c in r["clients"] if c["code"] != 200 or c["bytes"] != f["size"]]
            if bad:
                raise RuntimeError(f"coalescing {server}: {bad[:3]}")
            cl = r["clients"]
            per.append({"fetches": fetches, "ttfb_last_ms": cl[-1]["ttfb"] * 1e3,
                        "ttfb_max_ms": max(c["ttfb"] for c in cl) * 1e3,
                        "total_max_s": max(c["total"] for c in cl)})
        res[server] = {
            "clients": clients,
            "trials": trials,
            "upstream_fetches": [p["fetches"] for p in per],
            "ttfb_last_client_ms": med(p["ttfb_last_ms"] for p in per),
            "ttfb_max_ms": med(p["ttfb_max_ms"] for p in per),
            "total_max_s": med(p["total_max_s"] for p in per),
            "per_trial": per,
        }
        log(f"{clients} cold clients via {server}, {trials} trials: CDN fetches {res[server]['upstream_fetches']}, "
            f"{clients}th client TTFB {res[server]['ttfb_last_client_ms']:.1f} ms (median), "
            f"slowest done in {res[server]['total_max_s']:.2f} s")
    return res


def warm_up_and_verify(b: Bench) -> None:
    """Fills both caches with every file, then checks the bytes each server returns."""
    for server in ("hf-edge", "nginx"):
        for name in (BIG, MID, SMALL):
            r = curls(b.url(server, name), 1, 120)["clients"][0]
            if r["code"] != 200 or r["bytes"] != b.m["files"][name]["size"]:
                raise RuntimeError(f"warm-up {server} {name}: {r}")
    for server in SERVERS:
        for name in (BIG, MID, SMALL):
            digest, n = sha256_of(b.url(server, name))
            if digest != b.m["files"][name]["sha256"]:
                raise RuntimeError(f"{server} served wrong bytes for {name} ({n} bytes)")
        a = 123_456_789
        digest, n = sha256_of(b.url(server, MID), [f"Range: bytes={a}-{a + MiB - 1}"])
        with open(FILES / b.m["files"][MID]["disk"], "rb") as fh:
            fh.seek(a)
            want = hashlib.sha256(fh.read(MiB)).hexdigest()
        if digest != want or n != MiB:
            raise RuntimeError(f"{server} served a wrong range ({n} bytes)")
        cache_hdr = "x-hf-edge-cache" if server == "hf-edge" else "x-cache-status"
        if server != "static":
            hdrs = run(["curl", "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "30",
                        b.url(server, SMALL)], timeout=40).stdout.lower()
            if not re.search(rf"^{cache_hdr}: hit", hdrs, re.M):
                raise RuntimeError(f"{server}: config.json is not a cache hit:\n{hdrs}")
    log("all servers return the right bytes (full files and a range), caches warm")


def measure_warm(b: Bench, runs: int, small_secs: int, range_secs: int) -> dict:
    size_big = b.m["files"][BIG]["size"]
    out = {s: {k: [] for k in ("gbps_1", "gbps_8", "rss_peak_mib", "hwm_mib", "cpu_s_per_gib",
                               "small_rps", "small_p50_ms", "small_p99_ms", "small_errors", "small_cpu_us",
                               "range_rps", "range_p50_ms", "range_p99_ms", "range_errors", "range_cpu_us")}
           for s in SERVERS}
    env = {"BENCH_RANGE_SIZE": str(b.m["files"][MID]["size"]), "BENCH_RANGE_LEN": str(MiB)}
    for i in range(runs):
        order = SERVERS[i % 3:] + SERVERS[:i % 3]  # rotate, so no server always goes first
        for s in order:
            o = out[s]
            url = b.url(s, BIG)
            r = curls(url, 1, 120)
            check_full(r, size_big, s)
            o["gbps_1"].append(r["bytes"] / r["wall"] / 1e9)
            pids = b.server_pids(s)
            cpu0 = cpu_seconds(pids)
            with RssSampler(pids) as smp:
                r = curls(url, 8, 180)
            cpu = cpu_seconds(pids) - cpu0
            check_full(r, size_big, s)
            o["gbps_8"].append(r["bytes"] / r["wall"] / 1e9)
            o["rss_peak_mib"].append(smp.peak_kib / 1024)
            o["hwm_mib"].append(smp.hwm_kib / 1024)
            o["cpu_s_per_gib"].append(cpu / (r["bytes"] / GiB))
            cpu0 = cpu_seconds(pids)
            w = wrk(b.url(s, SMALL), 64, small_secs)
            o["small_cpu_us"].append((cpu_seconds(pids) - cpu0) / max(w["requests"] or 1, 1) * 1e6)
            o["small_rps"].append(w["rps"])
            o["small_p50_ms"].append(w["p50_ms"])
            o["small_p99_ms"].append(w["p99_ms"])
            o["small_errors"].append(w["socket_errors"] + w["non_2xx"])
            cpu0 = cpu_seconds(pids)
            w = wrk(b.url(s, MID), 16, range_secs, HERE / "range.lua", env)
            o["range_cpu_us"].append((cpu_seconds(pids) - cpu0) / max(w["requests"] or 1, 1) * 1e6)
            o["range_rps"].append(w["rps"])
            o["range_p50_ms"].append(w["p50_ms"])
            o["range_p99_ms"].append(w["p99_ms"])
            o["range_errors"].append(w["socket_errors"] + w["non_2xx"])
            log(f"run {i + 1} {s:8}: 1 GiB x1 {o['gbps_1'][-1]:.2f} GB/s, x8 {o['gbps_8'][-1]:.2f} GB/s "
                f"(RSS peak {o['rss_peak_mib'][-1]:.1f} MiB, {o['cpu_s_per_gib'][-1]:.2f} CPU-s/GiB), "
                f"config.json {o['small_rps'][-1]:.0f} req/s p50 {o['small_p50_ms'][-1]:.2f} ms "
                f"p99 {o['small_p99_ms'][-1]:.2f} ms, ranges {o['range_rps'][-1]:.0f} req/s")
    return out


def check_full(r: dict, size: int, server: str) -> None:
    bad = [c for c in r["clients"] if c["code"] != 200 or c["bytes"] != size]
    if bad:
        raise RuntimeError(f"{server}: incomplete responses {bad[:3]}")


SWEEP_CONNS = (1, 4, 16, 64, 256)
SWEEP_SERVERS = ("hf-edge", "nginx")


def measure_sweep(b: Bench, secs: int) -> dict:
    """config.json at each connection count of SWEEP_CONNS, one wrk run per server and count,
    the servers' order alternating: requests/s, p50, p99 and server CPU per request."""
    out = {s: [] for s in SWEEP_SERVERS}
    for i, conns in enumerate(SWEEP_CONNS):
        for s in SWEEP_SERVERS[i % 2:] + SWEEP_SERVERS[:i % 2]:
            pids = b.server_pids(s)
            cpu0 = cpu_seconds(pids)
            w = wrk(b.url(s, SMALL), conns, secs)
            cpu_us = (cpu_seconds(pids) - cpu0) / max(w["requests"] or 1, 1) * 1e6
            out[s].append({"conns": conns, "rps": w["rps"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
                           "cpu_us": cpu_us, "errors": w["socket_errors"] + w["non_2xx"]})
            log(f"sweep {conns:3} conns {s:8}: {w['rps']:.0f} req/s p50 {w['p50_ms']:.2f} ms "
                f"p99 {w['p99_ms']:.2f} ms, {cpu_us:.1f} µs CPU/request")
    for s in SWEEP_SERVERS:
        bad = [p for p in out[s] if p["errors"]]
        if bad:
            raise RuntimeError(f"{s}: errors in the concurrency sweep: {bad}")
    return out


def sweep_table(sweep: dict) -> str:
    rows = ["| connections | hf-edge req/s | nginx req/s | hf-edge / nginx | hf-edge p99 (ms) "
            "| nginx p99 (ms) | hf-edge CPU/req (µs) | nginx CPU/req (µs) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for e, n in zip(sweep["hf-edge"], sweep["nginx"]):
        rows.append(f"| {e['conns']} | {fmt(e['rps'], 0)} | {fmt(n['rps'], 0)} | {fmt(ratio(e['rps'], n['rps']))} "
                    f"| {fmt(e['p99_ms'])} | {fmt(n['p99_ms'])} | {fmt(e['cpu_us'], 1)} | {fmt(n['cpu_us'], 1)} |")
    return "\n".join(rows) + "\n"


def sweep_plots(sweep: dict, out_dir: Path) -> list[Path]:
    """req/s and p99 latency against connections, one line per server, as SVG files."""
    sys.path.insert(0, str(HERE.parent))
    from plot import line_chart

    def series(key):
        return {LABEL[s]: [(p["conns"], p[key]) for p in sweep[s]] for s in SWEEP_SERVERS}

    return [
        line_chart(out_dir / "small-file-rps.svg", "config.json hits: throughput", "connections",
                   "requests/s", series("rps"), log_x=True),
        line_chart(out_dir / "small-file-p99.svg", "config.json hits: p99 latency", "connections",
                   "p99 latency (ms)", series("p99_ms"), log_x=True, log_y=True),
    ]


def measure_memory(b: Bench, clients: int) -> dict:
    """Issue 3 (c): hf-edge's RSS while N clients read the 1 GiB blob at once."""
    pid = b.edge_proc.pid
    time.sleep(1.0)
    idle_rss = status_kib(pid, "VmRSS") / 1024
    size = b.m["files"][BIG]["size"]
    with RssSampler([pid], period=0.05) as smp:
        r = curls(b.url("hf-edge", BIG), clients, 240)
    check_full(r, size, "hf-edge")
    res = {
        "clients": clients,
        "idle_rss_mib": idle_rss,
        "peak_hwm_mib": smp.hwm_kib / 1024,
        "peak_sampled_rss_mib": smp.peak_kib / 1024,
        "steady_rss_mib": smp.steady_kib() / 1024,
        "gbps": r["bytes"] / r["wall"] / 1e9,
        "wall_s": r["wall"],
    }
    log(f"{clients} clients x 1 GiB via hf-edge: idle {idle_rss:.1f} MiB, steady {res['steady_rss_mib']:.1f} MiB, "
        f"peak (VmHWM) {res['peak_hwm_mib']:.1f} MiB, {res['gbps']:.2f} GB/s")
    return res


# ---------------------------------------------------------------- report

def ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def fmt(v, digits=2):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


TARGETS = {  # issue 6: (text, test on (hf-edge, nginx, reference))
    "gbps_1": ("≥ 0.9× nginx", lambda e, n, s: e >= 0.9 * n),
    "gbps_8": ("≥ 0.9× nginx", lambda e, n, s: e >= 0.9 * n),
    "small_rps": ("≥ nginx", lambda e, n, s: e >= n),
    "range_rps": ("≥ nginx", lambda e, n, s: e >= n),
    "rss_peak_mib": ("< 64 MiB", lambda e, n, s: e < 64),
    "total_s": ("≤ 1.1× direct", lambda e, n, s: e <= 1.1 * s),
}


def target(key, e, n, s) -> str:
    if key not in TARGETS or None in (e, n, s):
        return ""
    text, ok = TARGETS[key]
    return f"{text}: {'met' if ok(e, n, s) else '**missed**'}"


def table(results: dict) -> str:
    w, c = results.get("warm"), results.get("cold")
    rows = []
    if w:
        def m(s, k):
            return med(w[s][k])
        spec = [
            ("1 GiB warm, 1 client (GB/s) ↑", "gbps_1", 2),
            ("1 GiB warm, 8 clients (GB/s) ↑", "gbps_8", 2),
            ("config.json, 64 conns (req/s) ↑", "small_rps", 0),
            ("config.json p50 latency (ms) ↓", "small_p50_ms", 2),
            ("config.json p99 latency (ms) ↓", "small_p99_ms", 2),
            ("config.json, server CPU per request (µs) ↓", "small_cpu_us", 1),
            ("random 1 MiB ranges of 256 MiB, 16 conns (req/s) ↑", "range_rps", 0),
            ("random 1 MiB ranges, server CPU per request (µs) ↓", "range_cpu_us", 0),
            ("peak RSS during 8-client run (MiB) ↓", "rss_peak_mib", 1),
            ("server CPU during 8-client run (CPU-s/GiB) ↓", "cpu_s_per_gib", 3),
        ]
        for label, k, d in spec:
            e, n, s = m("hf-edge", k), m("nginx", k), m("static", k)
            rows.append((label, fmt(e, d), fmt(n, d), fmt(s, d), fmt(ratio(e, n)), fmt(ratio(e, s)),
                         target(k, e, n, s)))
    if c:
        for label, k, d in (("256 MiB cold miss, time to first byte (ms) ↓", "ttfb_ms", 1),
                            ("256 MiB cold miss, total time (s) ↓", "total_s", 3)):
            e, n, s = med(c["hf-edge"][k]), med(c["nginx"][k]), med(c["cdn"][k])
            rows.append((label + " ¹", fmt(e, d), fmt(n, d), fmt(s, d), fmt(ratio(e, n)), fmt(ratio(e, s)),
                         target(k, e, n, s)))
    head = ("| measure | hf-edge | nginx proxy_cache | nginx static | hf-edge / nginx | hf-edge / static "
            "| target (issue 6) |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |\n")
    body = "".join("| " + " | ".join(r) + " |\n" for r in rows)
    notes = ("\n↑ higher is better, ↓ lower is better. Each figure is the median of "
             f"{results['runs']} run{'s' if results['runs'] != 1 else ''}.\n")
    if c:
        notes += ("¹ fresh cache each run; the *nginx static* column is the CDN fetched directly "
                  "(no proxy); hf-edge's figure includes its metadata request to the Hub.\n")
    return head + body + notes


def store_table(results: dict) -> str:
    s, mem = results.get("coalescing"), results.get("memory")
    lines = []
    if s:
        e, n = s["hf-edge"], s.get("nginx")

        def both(key, digits):
            return f"{fmt(e[key], digits)} | {fmt(n[key], digits) if n else '–'}"

        def fetches(x):
            return ", ".join(str(v) for v in x["upstream_fetches"])

        lines.append("| measure | hf-edge | nginx proxy_cache |\n| --- | ---: | ---: |")
        lines.append(f"| CDN body fetches for {e['clients']} concurrent cold clients of 256 MiB "
                     f"(one per fresh-cache trial) | {fetches(e)} | {fetches(n) if n else '–'} |")
        lines.append(f"| time to first byte of the {e['clients']}th client (ms) | {both('ttfb_last_client_ms', 1)} |")
        lines.append(f"| slowest time to first byte among the {e['clients']} (ms) | {both('ttfb_max_ms', 1)} |")
        lines.append(f"| slowest client done (s) | {both('total_max_s', 2)} |")
        lines.append(f"\nTimes are medians over the {e['trials']} trials.")
    if mem:
        lines.append("")
        lines.append(f"hf-edge while {mem['clients']} clients read the 1 GiB blob at once "
                     f"({fmt(mem['gbps'])} GB/s total): idle RSS {fmt(mem['idle_rss_mib'], 1)} MiB, "
                     f"steady RSS {fmt(mem['steady_rss_mib'], 1)} MiB, peak (VmHWM) "
                     f"{fmt(mem['peak_hwm_mib'], 1)} MiB, i.e. {fmt(mem['peak_hwm_mib'] - mem['idle_rss_mib'], 1)} "
                     f"MiB over idle.")
    return "\n".join(lines) + "\n"


def report(results: dict) -> str:
    mc = results["machine"]
    out = [f"Machine: {mc['nproc']} CPUs ({mc['cpu']}), {mc['mem_gib']} GiB RAM, Linux {mc['kernel']}; "
           f"{mc['nginx']}, {mc['wrk']}, {mc['curl']}.",
           f"hf-edge {results['git']['head']}{' + uncommitted src changes' if results['git']['src_dirty'] else ''}"
           f"{'' if results.get('edge_bin') == str(ROOT / 'target/release/hf-edge') else ' (binary ' + str(results.get('edge_bin')) + ')'}; "
           f"rustc processes seen during the run: {results['rustc_seen']} "
           f"({'quiet machine' if results['rustc_seen'] == 0 else 'DISTURBED by concurrent builds'}); "
           f"run took {results['elapsed_s']:.0f} s.", ""]
    if results.get("warm") or results.get("cold"):
        out.append(table(results))
    if results.get("sweep"):
        out.append(f"config.json hits against concurrency ({results['sweep_secs']} s of wrk per point, one run; "
                   "plots: [req/s](small-file-rps.svg), [p99](small-file-p99.svg)):\n")
        out.append(sweep_table(results["sweep"]))
    if results.get("coalescing") or results.get("memory"):
        out.append("Blob store (issue 3):\n")
        out.append(store_table(results))
    return "\n".join(out)


def update_readme(text: str) -> None:
    path = ROOT / "benches" / "README.md"
    begin, end = "<!-- load-results:begin -->", "<!-- load-results:end -->"
    doc = path.read_text()
    if begin not in doc or end not in doc:
        log(f"{path} has no {begin} ... {end} markers; not updated")
        return
    pre, rest = doc.split(begin, 1)
    _, post = rest.split(end, 1)
    path.write_text(f"{pre}{begin}\n{text}\n{end}{post}")
    log(f"updated {path}")


# ---------------------------------------------------------------- main

class RustcWatch(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.seen = 0
        self.stop_evt = threading.Event()

    def run(self):
        while not self.stop_evt.is_set():
            self.seen = max(self.seen, rustc_count())
            self.stop_evt.wait(2.0)


def main() -> int:
    ap = argparse.ArgumentParser(description="hf-edge vs nginx proxy_cache vs nginx static, on loopback")
    ap.add_argument("--runs", type=int, default=3, help="runs per figure (median); default 3")
    ap.add_argument("--quick", action="store_true", help="1 run, short wrk durations (harness debugging)")
    ap.add_argument("--store", action="store_true", help="only issue 3's blob-store figures")
    ap.add_argument("--trials", type=int, default=5,
                    help="fresh-cache trials of the 16-client coalescing test (default 5)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/hf-edge as it is")
    ap.add_argument("--edge-bin", type=Path, help="benchmark this hf-edge binary instead (A/B of a patch)")
    ap.add_argument("--budget", type=float, default=900, help="global deadline in seconds (default 900)")
    ap.add_argument("--update-readme", action="store_true", help="write the tables into benches/README.md")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, configs)")
    ap.add_argument("--out", type=Path, default=BENCH / "results.json")
    args = ap.parse_args()
    DEADLINE[0] = T0 + args.budget
    runs = 1 if args.quick else args.runs
    small_secs, range_secs = (3, 3) if args.quick else (10, 5)
    sweep_secs = 2 if args.quick else 8

    def on_signal(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    # A hard backstop in case a step blocks somewhere bounded() cannot reach.
    def on_alarm(_signum, _frame):
        raise Deadline("hard deadline")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.budget) + 60)

    watch = RustcWatch()
    BENCH.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH))
    results: dict = {"runs": runs, "quick": args.quick}
    ok = False
    try:
        ensure_tools()
        results["machine"] = machine()
        results["git"] = git_state()
        build(args.no_build, args.edge_bin)
        watch.start()  # after our own build: other people's rustc processes disturb the figures
        results["edge_bin"] = str(EDGE_BIN)
        m = gen_files()
        results["files"] = {k: {kk: v[kk] for kk in ("size", "sha256", "oid")} for k, v in m["files"].items()}
        b = Bench(args, m, run_dir)
        b.start_origin()
        b.start_subject_nginx()
        b.start_edge()
        log(f"servers up: CDN {CDN_HOST}:{b.ports['cdn']}, hub :{b.ports['hub']}, hf-edge :{b.ports['edge']}, "
            f"nginx proxy_cache :{b.ports['nginx']}, nginx static :{b.ports['static']} (run dir {run_dir})")
        if not args.store:
            results["cold"] = measure_cold(b, runs)
        results["coalescing"] = measure_coalescing(b, 16, args.trials)
        warm_up_and_verify(b)
        if not args.store:
            results["warm"] = measure_warm(b, runs, small_secs, range_secs)
            results["sweep"] = measure_sweep(b, sweep_secs)
            results["sweep_secs"] = sweep_secs
        results["memory"] = measure_memory(b, 32)
        ok = True
    except Deadline as e:
        log(f"ABORTED: {e}")
    except KeyboardInterrupt:
        log("interrupted")
    finally:
        PROCS.stop_all()
        watch.stop_evt.set()
        if not args.keep and ok:
            shutil.rmtree(run_dir, ignore_errors=True)
        elif run_dir.exists():
            if not args.keep:  # keep the logs of a failed run, not its GBs of cached blobs
                for d in list(run_dir.glob("edge-cache-*")) + list(run_dir.glob("nginx-cache-*")):
                    shutil.rmtree(d, ignore_errors=True)
            log(f"logs kept in {run_dir}")
    results["rustc_seen"] = watch.seen
    results["elapsed_s"] = time.monotonic() - T0
    if not ok:
        return 1
    text = report(results)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results["table_md"] = text
    args.out.write_text(json.dumps(results, indent=2))
    (args.out.with_suffix(".md")).write_text(text)
    log(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    if results.get("sweep"):
        plots = sweep_plots(results["sweep"], args.out.parent)
        log(f"wrote {', '.join(str(p) for p in plots)}")
        if args.update_readme:
            for p in plots:
                shutil.copy(p, ROOT / "benches" / p.name)
            log("copied the plots into benches/")
    if args.update_readme:
        update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
