#!/usr/bin/env python3
"""What hf-edge's store costs as it grows: boot time and RSS against the number of blobs.

For each store size it generates a store synthetically into target/bench/scale/ (small blobs
named by the sha256 of their content, one refs.jsonl line each, as serving them would have
written; or sparse files standing in for big blobs), then times three boots of
target/release/hf-edge on it, each until /healthz answers and /metrics counts every blob:

  * scan:   no index yet (what every boot cost before the persisted index); stopped with
            SIGTERM, which writes the index,
  * index:  after that clean stop: the index is trusted,
  * killed: after a SIGKILL of the previous process: the index is loaded, serving starts, and
            a scan reconciles it in the background (the time it took is read from the log).

RSS (VmRSS) is read once the process is ready and has settled for a second. Each store is
deleted once measured (--keep keeps them). Loopback only; every wait has a timeout; every
process started is stopped on exit. See benches/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BENCH = ROOT / "target" / "bench" / "scale"
EDGE_BIN = ROOT / "target" / "release" / "hf-edge"
sys.path.insert(0, str(HERE.parent))
from plot import line_chart  # noqa: E402

_spec = importlib.util.spec_from_file_location("load_run", HERE.parent / "load" / "run.py")
L = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(L)

COMMIT = hashlib.sha1(b"hf-edge scale bench").hexdigest()
SPARSE_BLOB = 4 << 30  # 2,560 of them: 10 TiB
IDLE = 10_000
HOT = "/gpt2/resolve/main/config.json"  # a small file of the fake Hub's


def gen_small(store: Path, n: int) -> int:
    """`n` small blobs (20-30 bytes each, named by their sha256) and their refs.jsonl lines."""
    blobs = store / "blobs" / "sha256"
    for i in range(256):
        (blobs / f"{i:02x}").mkdir(parents=True, exist_ok=True)
    now = int(time.time())
    total = 0
    with open(store / "refs.jsonl", "w") as refs:
        for i in range(n):
            body = f"hf-edge scale blob {i}\n".encode()
            hexd = hashlib.sha256(body).hexdigest()
            fd = os.open(blobs / hexd[:2] / hexd, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, body)
            os.close(fd)
            total += len(body)
            refs.write(json.dumps({"repo": f"scale/repo-{i // 1000}", "revision": "main",
                                   "commit": COMMIT, "path": f"file-{i}.json",
                                   "blob": f"sha256/{hexd}", "size": len(body), "time": now}) + "\n")
    return total


def gen_sparse(store: Path, n: int) -> int:
    """`n` sparse files of 4 GiB (no block allocated) named like LFS blobs. Their content does
    not match their name: a boot reads names and sizes, never content."""
    blobs = store / "blobs" / "sha256"
    for i in range(n):
        hexd = hashlib.sha256(f"hf-edge scale sparse {i}".encode()).hexdigest()
        (blobs / hexd[:2]).mkdir(parents=True, exist_ok=True)
        with open(blobs / hexd[:2] / hexd, "wb") as f:
            f.truncate(SPARSE_BLOB)
    return n * SPARSE_BLOB


def write_config(run: Path, store: Path, ports: dict, meta_entries: int = 100_000,
                 max_size: str = "16TiB", hub: str | None = None) -> Path:
    cfg = run / "hf-edge.yaml"
    endpoint = hub or f"http://127.0.0.1:{ports['hub']}"
    cfg.write_text(
        f'listen: "127.0.0.1:{ports["edge"]}"\n'
        f"threads: 2\n"
        f"upstream:\n"
        f'  endpoint: "{endpoint}"\n'
        f'  cdn_hosts: ["127.0.0.2"]\n'
        f"cache:\n"
        f'  dir: "{store}"\n'
        f'  max_size: "{max_size}"\n'
        f"  meta_max_entries: {meta_entries}\n"
        f"metrics:\n"
        f'  listen: "127.0.0.1:{ports["metrics"]}"\n'
        f"limits:\n"
        f"  max_connections: {IDLE + 2000}\n"
        f"log:\n"
        f'  access: "off"\n')
    return cfg


def metric(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


def boot(cfg: Path, log: Path, ports: dict, blobs: int, timeout: float) -> dict:
    """Starts hf-edge; returns seconds until /healthz answers and /metrics counts `blobs`."""
    t0 = time.monotonic()
    p = L.PROCS.start("hf-edge", [str(EDGE_BIN), "serve", "--config", str(cfg)], log,
                      env=dict(os.environ, RUST_LOG="info"), stop_signal=signal.SIGTERM)
    L.wait_http(f"http://127.0.0.1:{ports['metrics']}/healthz", timeout, p)
    ready = time.monotonic() - t0
    counted = metric(ports["metrics"], "hf_edge_store_objects")
    if counted != blobs:
        raise RuntimeError(f"hf-edge counts {counted} blobs, the store has {blobs}")
    time.sleep(1.0)
    return {"ready_s": round(ready, 3), "rss_mib": round(L.status_kib(p.pid, "VmRSS") / 1024, 1)}


def stop(signum: int, timeout: float) -> None:
    p = L.PROCS.procs["hf-edge"]
    p.send_signal(signum)
    p.wait(timeout=timeout)
    L.PROCS.procs.pop("hf-edge")


def wait_log(log: Path, pattern: str, timeout: float) -> re.Match:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(pattern, log.read_text(errors="replace"))
        if m:
            return m
        time.sleep(0.2)
    raise RuntimeError(f"{log}: no line matching {pattern!r} after {timeout}s")


def measure(kind: str, n: int, args) -> dict:
    store = BENCH / f"store-{kind}-{n}"
    run = BENCH / f"run-{kind}-{n}"
    for d in (store, run):
        shutil.rmtree(d, ignore_errors=True)
    run.mkdir(parents=True)
    t = time.monotonic()
    size = gen_small(store, n) if kind == "small" else gen_sparse(store, n)
    gen_s = time.monotonic() - t
    du = sum(f.stat().st_blocks * 512 for f in store.rglob("*") if f.is_file()) if n <= 100_000 else None
    ports = {k: L.free_port("127.0.0.1") for k in ("edge", "metrics", "hub")}
    cfg = write_config(run, store, ports)
    log = run / "hf-edge.log"
    timeout = max(60.0, n / 2000)
    out = {"kind": kind, "blobs": n, "bytes": size, "generate_s": round(gen_s, 1)}
    try:
        out["scan"] = boot(cfg, log, ports, n, timeout)
        stop(signal.SIGTERM, timeout)
        out["index"] = boot(cfg, log, ports, n, timeout)
        stop(signal.SIGKILL, 30)
        out["killed"] = boot(cfg, log, ports, n, timeout)
        m = wait_log(log, r"reconciled with a scan in ([0-9.]+)s", timeout)
        out["killed"]["reconcile_s"] = float(m.group(1))
        stop(signal.SIGTERM, timeout)
        snap = store / "index.snap"
        out["index_file_mib"] = round(snap.stat().st_size / (1 << 20), 1)
        if du is not None:
            out["store_disk_mib"] = round(du / (1 << 20), 1)
    finally:
        L.PROCS.stop_all()
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


def gen_meta(store: Path, n: int) -> None:
    """`n` resolved files in meta.jsonl, as the resolver journals them: anonymous, 1,000 files
    per repo, one commit, regular files (git oid ETags)."""
    store.mkdir(parents=True, exist_ok=True)
    who = hashlib.sha256(b"anonymous").hexdigest()[:32]
    now = int(time.time())
    with open(store / "meta.jsonl", "w") as f:
        for i in range(n):
            oid = hashlib.sha1(f"scale file {i}".encode()).hexdigest()
            f.write(json.dumps({"who": who, "repo": f"scale/repo-{i // 1000}", "revision": "main",
                                "commit": COMMIT, "path": f"dir/file-{i}.json", "etag": oid,
                                "size": 1000 + i % 1000, "lfs": False, "time": now}) + "\n")


def measure_meta(n: int, args) -> dict:
    """RSS once ready with `n` resolved files reloaded from meta.jsonl, against none: what the
    resolver's maps cost per file."""
    out = {"files": n}
    for label, count in (("empty", 0), ("loaded", n)):
        store = BENCH / f"store-meta-{count}"
        run = BENCH / f"run-meta-{count}"
        for d in (store, run):
            shutil.rmtree(d, ignore_errors=True)
        run.mkdir(parents=True)
        gen_meta(store, count)
        ports = {k: L.free_port("127.0.0.1") for k in ("edge", "metrics", "hub")}
        cfg = write_config(run, store, ports, meta_entries=max(count, 1))
        try:
            out[label] = boot(cfg, run / "hf-edge.log", ports, 0, max(60.0, n / 5000))
            stop(signal.SIGTERM, 60)
        finally:
            L.PROCS.stop_all()
            if not args.keep:
                shutil.rmtree(store, ignore_errors=True)
    delta = (out["loaded"]["rss_mib"] - out["empty"]["rss_mib"]) * (1 << 20)
    out["bytes_per_file"] = round(delta / n)
    print(json.dumps(out), flush=True)
    return out


def start_fakehub(run: Path) -> str:
    """The e2e suite's fake Hub (stdlib only): its Hub URL."""
    log = open(run / "fakehub.log", "ab")
    p = L.PROCS.start("fakehub", [sys.executable, str(ROOT / "tests" / "fakehub" / "fakehub.py")],
                      run / "fakehub.stdout")
    log.close()
    end = time.monotonic() + 30
    out = run / "fakehub.stdout"
    while time.monotonic() < end:
        line = out.read_text().splitlines()[:1]
        if line:
            return json.loads(line[0])["hub"]
        if p.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the fake Hub did not start: {out.read_text()}")


def get_hit(ports: dict) -> None:
    url = f"http://127.0.0.1:{ports['edge']}{HOT}"
    for _ in range(2):  # the first may fill; the second must be a hit
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            cache = r.headers.get("X-Cache") or r.headers.get("x-cache")
    if cache is not None and "hit" not in cache.lower():
        raise RuntimeError(f"{HOT} is not a hit: {cache}")


def measure_eviction(n: int, keep: int, args) -> dict:
    """Hit latency on a hot small file (wrk, 64 connections) while the boot evicts `n - keep`
    blobs over cache.max_size in the background, against the same store not evicting."""
    run = BENCH / "run-evict"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    store = BENCH / "store-evict"
    out = {"blobs": n}
    try:
        hub = start_fakehub(run)
        for label, evict in (("steady", False), ("evicting", True)):
            shutil.rmtree(store, ignore_errors=True)
            gen_small(store, n)
            ports = {k: L.free_port("127.0.0.1") for k in ("edge", "metrics", "hub")}
            # The hot file is fetched into the store first, so it is the most recently used.
            cfg = write_config(run, store, ports, hub=hub)
            boot(cfg, run / "hf-edge.log", ports, n, 120)
            get_hit(ports)
            stop(signal.SIGTERM, 60)
            if evict:
                cfg = write_config(run, store, ports, hub=hub, max_size=str(keep * 24))
            t0 = time.monotonic()
            p = L.PROCS.start("hf-edge", [str(EDGE_BIN), "serve", "--config", str(cfg)],
                              run / "hf-edge.log", env=dict(os.environ, RUST_LOG="info"))
            L.wait_http(f"http://127.0.0.1:{ports['metrics']}/healthz", 120, p)
            get_hit(ports)
            out[label] = L.wrk(f"http://127.0.0.1:{ports['edge']}{HOT}", 64, args.wrk_secs)
            evicted = metric(ports["metrics"], "hf_edge_store_evictions_total") or 0
            out[label]["evicted"] = int(evicted)
            if evict:
                # How long the eviction took, to tell whether wrk ran through all of it.
                while (metric(ports["metrics"], "hf_edge_store_evictions_total") or 0) < n - keep - 2 * keep \
                        and time.monotonic() - t0 < 300:
                    time.sleep(0.2)
                out[label]["evictions_after_s"] = round(time.monotonic() - t0, 1)
                out[label]["evicted_total"] = int(metric(ports["metrics"], "hf_edge_store_evictions_total") or 0)
            stop(signal.SIGTERM, 60)
    finally:
        L.PROCS.stop_all()
        shutil.rmtree(store, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


def measure_idle(args) -> dict:
    """RSS with IDLE idle keep-alive connections (each made one request), and hit req/s and
    p99 on the hot file (wrk, 64 connections) before, with and after them."""
    import resource
    import socket
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, IDLE * 2 + 1000), hard))
    run = BENCH / "run-idle"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    store = BENCH / "store-idle"
    shutil.rmtree(store, ignore_errors=True)
    out = {"connections": IDLE}
    socks = []
    try:
        hub = start_fakehub(run)
        ports = {k: L.free_port("127.0.0.1") for k in ("edge", "metrics", "hub")}
        cfg = write_config(run, store, ports, hub=hub)
        boot(cfg, run / "hf-edge.log", ports, 0, 60)
        get_hit(ports)
        pid = L.PROCS.procs["hf-edge"].pid
        url = f"http://127.0.0.1:{ports['edge']}{HOT}"
        out["rss_before_mib"] = round(L.status_kib(pid, "VmRSS") / 1024, 1)
        out["without"] = L.wrk(url, 64, args.wrk_secs)
        req = f"GET {HOT} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        t0 = time.monotonic()
        for _ in range(IDLE):
            s = socket.create_connection(("127.0.0.1", ports["edge"]), timeout=10)
            s.sendall(req)
            got = b""
            while b"\r\n\r\n" not in got:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("hf-edge closed an idle-to-be connection")
                got += chunk
            socks.append(s)
        out["open_s"] = round(time.monotonic() - t0, 1)
        time.sleep(1)
        out["rss_idle_mib"] = round(L.status_kib(pid, "VmRSS") / 1024, 1)
        out["with"] = L.wrk(url, 64, args.wrk_secs)
        # Still open (keep-alive lasts 60 s without a request): count the ones hf-edge kept.
        out["still_open"] = int(metric(ports["metrics"], "hf_edge_client_connections") or -1)
        for s in socks:
            s.close()
        socks.clear()
        time.sleep(2)
        out["rss_after_mib"] = round(L.status_kib(pid, "VmRSS") / 1024, 1)
        out["after"] = L.wrk(url, 64, args.wrk_secs)
    finally:
        for s in socks:
            s.close()
        L.PROCS.stop_all()
        shutil.rmtree(store, ignore_errors=True)
    print(json.dumps(out), flush=True)
    return out


def plots(results: list[dict]) -> None:
    small = [r for r in results if r["kind"] == "small"]
    series_t = {f"boot: {label}": [(r["blobs"], max(r[k]["ready_s"], 1e-3)) for r in small]
                for k, label in (("scan", "scan (no index)"), ("index", "index, clean stop"),
                                 ("killed", "index, after kill -9"))}
    series_t["background reconcile after kill -9"] = [(r["blobs"], r["killed"]["reconcile_s"]) for r in small]
    line_chart(HERE.parent / "scale-boot.svg", "hf-edge: time until ready vs store size",
               "blobs in the store", "seconds", series_t, log_x=True, log_y=True)
    series_m = {f"RSS: {label}": [(r["blobs"], r[k]["rss_mib"]) for r in small]
                for k, label in (("scan", "after a scan"), ("index", "after loading the index"))}
    line_chart(HERE.parent / "scale-rss.svg", "hf-edge: RSS once ready vs store size",
               "blobs in the store", "MiB", series_m, log_x=True, log_y=True)


def table(results: list[dict]) -> str:
    rows = ["| store | boot, scan (s) | boot, index (s) | boot after kill -9 (s) | reconcile in background (s) | RSS scan / index (MiB) | index file (MiB) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        what = (f"{r['blobs']:,} small blobs" if r["kind"] == "small"
                else f"{r['blobs']:,} sparse × 4 GiB ({r['bytes'] / 1e12:.1f} TB)")
        rows.append(f"| {what} | {r['scan']['ready_s']:.3f} | {r['index']['ready_s']:.3f} | "
                    f"{r['killed']['ready_s']:.3f} | {r['killed']['reconcile_s']:.1f} | "
                    f"{r['scan']['rss_mib']} / {r['index']['rss_mib']} | {r['index_file_mib']} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="small-blob store sizes ('': none)")
    ap.add_argument("--sparse", type=int, default=2560, help="sparse 4 GiB files (0: none)")
    ap.add_argument("--meta", type=int, default=1_000_000,
                    help="resolved files reloaded from meta.jsonl, for the metadata memory (0: skip)")
    ap.add_argument("--evict", type=int, default=110_000,
                    help="blobs in the store of the eviction run, 100k of which are evicted (0: skip)")
    ap.add_argument("--idle", action=argparse.BooleanOptionalAction, default=True,
                    help=f"the {IDLE:,} idle connections run")
    ap.add_argument("--wrk-secs", type=int, default=10)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--edge-bin", type=Path, help="measure this binary (A/B a patched build)")
    ap.add_argument("--keep", action="store_true", help="keep the generated stores")
    ap.add_argument("--budget", type=float, default=2400, help="deadline for the whole run (s)")
    args = ap.parse_args()
    global EDGE_BIN
    if args.edge_bin:
        EDGE_BIN, args.no_build = args.edge_bin.resolve(), True
    L.DEADLINE[0] = time.monotonic() + args.budget
    if not args.no_build:
        L.run(["cargo", "build", "--release", "--locked"], timeout=1800, cwd=ROOT)
    BENCH.mkdir(parents=True, exist_ok=True)
    results = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            results.append(measure("small", n, args))
        if args.sparse:
            results.append(measure("sparse", args.sparse, args))
        meta = measure_meta(args.meta, args) if args.meta else None
        evict = measure_eviction(args.evict, args.evict - 100_000, args) if args.evict else None
        idle = measure_idle(args) if args.idle else None
    finally:
        L.PROCS.stop_all()
    (BENCH / "results.json").write_text(json.dumps({"stores": results, "meta": meta, "evict": evict, "idle": idle}, indent=1))
    if len([r for r in results if r["kind"] == "small"]) > 1:
        plots(results)
    text = table(results)
    if meta:
        text += (f"\n\nResolver metadata: {meta['files']:,} resolved files reloaded from meta.jsonl: "
                 f"RSS {meta['loaded']['rss_mib']} MiB against {meta['empty']['rss_mib']} MiB with none, "
                 f"{meta['bytes_per_file']} bytes per file; ready in {meta['loaded']['ready_s']} s.")
    (BENCH / "results.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
