#!/usr/bin/env python3
"""Resume benchmark: a download whose CDN body is cut mid-way still completes, in one client request.

When the CDN connection drops mid-body, hf-edge asks the CDN for the rest itself (`Range: bytes=N-`) and keeps
streaming to the client. This measures what that costs on the biggest file of the fake Hub
(tests/fakehub/fakehub.py): all-MiniLM-L6-v2's model.safetensors (90.9 MB, LFS, served by the fake CDN on
127.0.0.2). Each trial starts a fresh hf-edge on an empty cache, makes one plain GET through it (sha256 computed
while streaming, checked against X-Linked-Etag) and reads the fake Hub's request log and hf-edge's /metrics:

  uncut         the cold miss as it is: 1 CDN GET carrying the whole body;
  cut at 10/50/90 %  the fake CDN drops the connection after that many bytes (`drop_after`, with
                `body_delay` 0.05 s before each 1 MiB chunk so that the client has the headers before the cut).
                Checked: the client's one request got every byte right; the CDN saw 2 GETs, the second with
                `Range: bytes=N-`; the CDN sent the file size in total (every byte crossed the "WAN" once);
                hf_edge_upstream_resumes_total is 1.

Figures: wall time of the client's GET (the cut trials include the injected delay, shown apart); what resuming
costs the client: the time from its holding the cut offset's bytes to its last byte, against the same bytes in the
uncut trials; CDN body bytes; hf-edge's idle RSS and peak RSS (VmHWM at the end of the trial, one process per
trial), to show memory stays flat while a fill is resumed. Medians of --trials trials (default 3), the cases
interleaved. Loopback only, ports picked by the OS, every wait bounded. See benches/README.md.

    .venv/bin/python benches/resume.py [--edge-bin PATH] [--trials N] [--out FILE]
"""

import argparse
import hashlib
from http.client import HTTPConnection
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from support import FakeHub, http, start_edge, start_fakehub, stop  # noqa: E402

REPO, FILE = "sentence-transformers/all-MiniLM-L6-v2", "model.safetensors"
CASES = {"uncut": None, "cut at 10%": 0.1, "cut at 50%": 0.5, "cut at 90%": 0.9}
BODY_DELAY = 0.05  # seconds before each chunk of the cut response
FAKE_CHUNK = 1 << 20  # fakehub.CHUNK_SIZE: the delay is paid once per chunk sent before the cut
REQUEST_TIMEOUT = 60.0  # one download, start to end
MiB = 1 << 20


def download(edge: str) -> dict:
    """One GET of the file through hf-edge, streamed and hashed; raises if the body is short."""
    conn = HTTPConnection(edge, timeout=10)  # per socket operation; the whole GET is bounded below
    try:
        start = time.monotonic()
        conn.request("GET", f"/{REPO}/resolve/main/{FILE}")
        response = conn.getresponse()
        digest, received, timeline = hashlib.sha256(), 0, []
        while chunk := response.read(MiB):  # IncompleteRead if the body ends before Content-Length
            digest.update(chunk)
            received += len(chunk)
            timeline.append((received, time.monotonic() - start))
            if timeline[-1][1] > REQUEST_TIMEOUT:
                raise TimeoutError(f"download took over {REQUEST_TIMEOUT} s")
        return {"status": response.status, "wall_s": time.monotonic() - start, "bytes": received,
                "timeline": timeline, "sha256": digest.hexdigest(),
                "x_linked_etag": (response.getheader("X-Linked-Etag") or "").strip('"')}
    finally:
        conn.close()


def rest_after(got: dict, offset: int) -> float:
    """Seconds from the client holding `offset` bytes (to 1 MiB) to its last byte."""
    return got["wall_s"] - next(t for received, t in got["timeline"] if received >= offset)


def counter(metrics_url: str, name: str) -> float:
    status, _, body = http("GET", f"{metrics_url}/metrics", timeout=10)
    match = re.search(rf"^{name} (\S+)$", body.decode(), re.M)
    if status != 200 or not match:
        raise RuntimeError(f"{name} not in {metrics_url}/metrics (status {status})")
    return float(match[1])


def rss_kib(pid: int, field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)[1])


def trial(hub: FakeHub, binary: Path, want: dict, cut: int | None, cuts: list[int], workdir: Path) -> dict:
    """One download on a fresh hf-edge, the CDN body cut after `cut` bytes if given. `rest_s`: the time from each
    cut offset (`cuts` for an uncut trial, the baseline) to the last byte."""
    hub.clear_faults()
    hub.clear_log()
    if cut is not None:
        hub.fault({"mode": "drop_after", "server": "cdn", "bytes": cut, "times": 1, "body_delay": BODY_DELAY})
    process, edge, metrics = start_edge(binary, hub.hub, workdir)
    try:
        idle_rss = rss_kib(process.pid, "VmRSS")
        got = download(edge)
        resumes = counter(metrics, "hf_edge_upstream_resumes_total")
        peak_rss = rss_kib(process.pid, "VmHWM")
    finally:
        stop(process, signal.SIGINT)
        shutil.rmtree(workdir / "cache", ignore_errors=True)
    cdn = [e for e in hub.log() if e["server"] == "cdn"]
    gets = [e for e in cdn if e["method"] == "GET"]
    row = {
        "wall_s": got["wall_s"],
        "injected_delay_s": 0.0 if cut is None else math.ceil(cut / FAKE_CHUNK) * BODY_DELAY,
        "rest_s": {str(offset): rest_after(got, offset) for offset in (cuts if cut is None else [cut])},
        "cdn_gets": [{"range": e["headers"].get("range"), "body_bytes": e["body_bytes"], "fault": e["fault"]}
                     for e in gets],
        "cdn_body_bytes": sum(e["body_bytes"] for e in cdn),
        "resumes_metric": resumes,
        "idle_rss_mib": idle_rss / 1024,
        "peak_rss_mib": peak_rss / 1024,
    }
    second = gets[1]["headers"].get("range", "") if len(gets) > 1 else ""
    resumed_from = int(second[6:-1]) if re.fullmatch(r"bytes=\d+-", second) else None
    checks = {
        "one request, 200, whole body": got["status"] == 200 and got["bytes"] == want["size"],
        "sha256 == X-Linked-Etag == file": got["sha256"] == got["x_linked_etag"] == want["sha256"],
        "CDN body bytes == file size": row["cdn_body_bytes"] == want["size"],
    }
    if cut is None:
        checks["1 CDN GET, no Range"] = len(gets) == 1 and "range" not in gets[0]["headers"]
        checks["resumes_total == 0"] = resumes == 0
    else:
        checks["2 CDN GETs, 2nd Range: bytes=N-"] = len(gets) == 2 and resumed_from is not None
        checks["resumed from the cut"] = resumed_from == cut
        checks["resumes_total == 1"] = resumes == 1
    row["resumed_from"] = resumed_from
    row["failed_checks"] = [name for name, ok in checks.items() if not ok]
    return row


def summarize(case: str, cut: int | None, rows: list[dict], uncut: list[dict]) -> dict:
    median = lambda key, rows=rows: statistics.median(r[key] for r in rows)  # noqa: E731
    return {
        "case": case, "cut_bytes": cut, "trials": rows,
        "wall_s": median("wall_s"), "injected_delay_s": median("injected_delay_s"),
        "rest_s": cut and statistics.median(r["rest_s"][str(cut)] for r in rows),
        "rest_uncut_s": cut and statistics.median(r["rest_s"][str(cut)] for r in uncut),
        "cdn_gets": statistics.median(len(r["cdn_gets"]) for r in rows),
        "cdn_body_bytes": median("cdn_body_bytes"), "resumes_metric": median("resumes_metric"),
        "idle_rss_mib": median("idle_rss_mib"), "peak_rss_mib": median("peak_rss_mib"),
        "max_peak_rss_mib": max(r["peak_rss_mib"] for r in rows),
        "resumed_from": sorted({r["resumed_from"] for r in rows if r["resumed_from"] is not None}),
        "failed_checks": sorted({c for r in rows for c in r["failed_checks"]}),
    }


def table(size: int, cases: list[dict]) -> str:
    lines = [
        f"model.safetensors, {size:,} B; medians of {len(cases[0]['trials'])} trials, a fresh hf-edge and cache "
        "each; *cut → end*: from the client holding the cut offset's bytes to its last byte, against the same "
        "bytes in the uncut trials.",
        "",
        "| case | wall (s) | of which injected delay (s) | cut → end (s) | same bytes uncut (s) | CDN GETs "
        "| resumed from (B) | CDN body bytes | resumes | RSS idle → peak (MiB) | checks |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in cases:
        cut = c["cut_bytes"] is not None
        cells = [
            c["case"], f"{c['wall_s']:.2f}", f"{c['injected_delay_s']:.2f}",
            f"{c['rest_s']:.2f}" if cut else "–", f"{c['rest_uncut_s']:.2f}" if cut else "–", f"{c['cdn_gets']:g}",
            ", ".join(f"{r:,}" for r in c["resumed_from"]) or "–", f"{c['cdn_body_bytes']:,.0f}",
            f"{c['resumes_metric']:g}", f"{c['idle_rss_mib']:.1f} → {c['peak_rss_mib']:.1f}",
            "all passed" if not c["failed_checks"] else "FAILED: " + "; ".join(c["failed_checks"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rustc_running() -> int:
    """Concurrent Rust builds on the machine disturb the timings: counted and recorded."""
    count = 0
    for stat in Path("/proc").glob("[0-9]*/comm"):
        try:
            count += stat.read_text().strip() == "rustc"
        except OSError:
            pass  # exited meanwhile
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge-bin", type=Path,
                        default=Path(os.environ.get("HF_EDGE_BIN", ROOT / "target" / "release" / "hf-edge")),
                        help="hf-edge binary (default: $HF_EDGE_BIN, else target/release/hf-edge)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "resume.json")
    parser.add_argument("--budget", type=int, default=300, help="hard deadline for the whole run, seconds")
    args = parser.parse_args()
    if not args.edge_bin.is_file():
        sys.exit(f"no hf-edge binary at {args.edge_bin}: build it or pass --edge-bin")

    def out_of_time(_signum, _frame):
        raise TimeoutError(f"the run took over --budget {args.budget} s")

    signal.signal(signal.SIGALRM, out_of_time)  # the backstop; the finally blocks stop what the run started
    signal.alarm(args.budget)

    started = time.monotonic()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, timeout=10).stdout.strip()
    src_dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="resume-", dir=args.out.parent))
    try:
        fake, hub = start_fakehub(workdir / "fakehub.log")
    except RuntimeError as e:
        sys.exit(str(e))
    try:
        want = hub.expected(REPO)["files"][FILE]
        cuts = {case: fraction and int(want["size"] * fraction) for case, fraction in CASES.items()}
        rows: dict[str, list[dict]] = {case: [] for case in CASES}
        rustc_seen = 0
        for n in range(args.trials):
            for case, cut in cuts.items():
                trial_dir = workdir / f"{n}-{case.replace(' ', '-').replace('%', '')}"
                trial_dir.mkdir()
                rustc_seen = max(rustc_seen, rustc_running())
                row = trial(hub, args.edge_bin, want, cut, [c for c in cuts.values() if c], trial_dir)
                rows[case].append(row)
                print(f"trial {n + 1} {case:>11}: {row['wall_s']:6.2f} s, CDN GETs "
                      f"{[g['range'] for g in row['cdn_gets']]}, {row['cdn_body_bytes']:,} B, "
                      f"RSS {row['idle_rss_mib']:.1f} → {row['peak_rss_mib']:.1f} MiB"
                      f"{'' if not row['failed_checks'] else ', FAILED: ' + '; '.join(row['failed_checks'])}",
                      flush=True)
    except BaseException:
        print(f"logs kept in {workdir}", file=sys.stderr)
        raise
    finally:
        stop(fake)

    cases = [summarize(case, cut, rows[case], rows["uncut"]) for case, cut in cuts.items()]
    text = table(want["size"], cases)
    print("\n" + text)
    results = {
        "file": {"repo": REPO, "path": FILE, **want}, "edge_bin": str(args.edge_bin),
        "git": {"head": head, "src_dirty": src_dirty}, "nproc": os.cpu_count(), "rustc_seen": rustc_seen,
        "body_delay_s": BODY_DELAY, "cases": cases, "elapsed_s": time.monotonic() - started, "table_md": text,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(workdir)
    print(f"\nwrote {args.out} ({results['elapsed_s']:.0f} s, rustc processes seen: {rustc_seen})")
    return 1 if any(c["failed_checks"] for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
