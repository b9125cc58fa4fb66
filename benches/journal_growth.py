#!/usr/bin/env python3
"""Journal growth: what hf-edge writes to its cache dir for requests that differ only in spelling.

Against the fake Hub (tests/fakehub/fakehub.py), on a fresh hf-edge and an empty cache:

  case variants   200 GETs of gpt2's config.json at one commit, the commit spelled in 200 letter cases
                  (the first in lower case): refs.jsonl and meta.jsonl lines and bytes.
  junk queries    100 tree listings of one revision, each with a junk `&z=N` query parameter: files and
                  bytes of kept API answers (cache.dir/api).

Counts, not timings; loopback only, ports picked by the OS, every wait bounded. Run it against two binaries to
compare (e.g. main's and this branch's):

    .venv/bin/python benches/journal_growth.py [--edge-bin PATH] [--out FILE]
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from support import FakeHub, http, start_edge, start_fakehub, stop  # noqa: E402

VARIANTS = 200
JUNK_QUERIES = 100
SETTLE = 2.0  # seconds for the last appends and background writes to land


def case_variant(commit: str, i: int) -> str:
    """`commit` with the letters chosen by the bits of `i` in upper case."""
    out, letter = [], 0
    for c in commit:
        if c.isalpha():
            out.append(c.upper() if (i >> letter) & 1 else c)
            letter += 1
        else:
            out.append(c)
    return "".join(out)


def size_of(path: Path) -> tuple[int, int]:
    """(lines, bytes) of a file; (0, 0) when missing."""
    if not path.is_file():
        return 0, 0
    data = path.read_bytes()
    return data.count(b"\n"), len(data)


def files_in(directory: Path) -> tuple[int, int]:
    """(files, bytes) in a directory (temp files of writes in flight excluded)."""
    found = [p for p in directory.glob("*.json")] if directory.is_dir() else []
    return len(found), sum(p.stat().st_size for p in found)


def run(binary: Path, hub: FakeHub, workdir: Path) -> dict:
    cache = workdir / "cache"
    process, addr, _ = start_edge(binary, hub.hub, workdir)
    try:
        edge = f"http://{addr}"
        status, headers, _ = http("HEAD", f"{edge}/gpt2/resolve/main/config.json", timeout=10)
        assert status == 200, status
        commit = headers["X-Repo-Commit"]
        statuses = [http("GET", f"{edge}/gpt2/resolve/{case_variant(commit, i)}/config.json", timeout=10)[0]
                    for i in range(VARIANTS)]
        listings = [http("GET", f"{edge}/api/models/gpt2/tree/main?recursive=true&z={n}", timeout=10)[0]
                    for n in range(JUNK_QUERIES)]
        time.sleep(SETTLE)
        refs, meta, api = size_of(cache / "refs.jsonl"), size_of(cache / "meta.jsonl"), files_in(cache / "api")
    finally:
        stop(process, signal.SIGINT)
    return {
        "edge_bin": str(binary), "commit": commit,
        "variant_statuses": sorted(set(statuses)), "listing_statuses": sorted(set(listings)),
        "refs_lines": refs[0], "refs_bytes": refs[1], "meta_lines": meta[0], "meta_bytes": meta[1],
        "api_files": api[0], "api_bytes": api[1],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edge-bin", type=Path, action="append",
                        help="hf-edge binary; repeat to compare (default: target/debug/hf-edge)")
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "bench" / "journal_growth.json")
    parser.add_argument("--budget", type=int, default=300, help="seconds the whole run may take")
    args = parser.parse_args()
    binaries = args.edge_bin or [Path(os.environ.get("HF_EDGE_BIN", ROOT / "target" / "debug" / "hf-edge"))]

    def out_of_time(_signum, _frame):
        raise TimeoutError(f"the run took over --budget {args.budget} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.budget)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="journal-growth-", dir=args.out.parent) as tmp:
        try:
            fake, hub = start_fakehub(Path(tmp) / "fakehub.log")
        except RuntimeError as e:
            sys.exit(str(e))
        try:
            for n, binary in enumerate(binaries):
                workdir = Path(tmp) / str(n)
                workdir.mkdir()
                rows.append(run(binary, hub, workdir))
        finally:
            stop(fake)

    print(f"| binary | {VARIANTS} case variants: refs.jsonl | meta.jsonl | {JUNK_QUERIES} junk queries: api/ |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['edge_bin']} | {r['refs_lines']} lines, {r['refs_bytes']:,} B "
              f"| {r['meta_lines']} lines, {r['meta_bytes']:,} B | {r['api_files']} files, {r['api_bytes']:,} B |")
    for r in rows:
        print(f"{r['edge_bin']}: variant statuses {r['variant_statuses']}, listing statuses {r['listing_statuses']}")
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
