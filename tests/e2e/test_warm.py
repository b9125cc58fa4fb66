"""`hf-edge warm`, then the real client: a warmed revision is served without one upstream body request."""

import json
import subprocess
import time

import pytest

from snippets import SNAPSHOT
from support import Client, edge_binary, sha256_file

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ADMIN_TOKEN = "e2e-warm-admin"


def body_fetches(log: list[dict]) -> list[dict]:
    """Upstream requests that carry a file body: the CDN's, and /api/resolve-cache on the Hub."""
    return [e for e in log if e["method"] == "GET"
            and (e["server"] == "cdn" or e["path"].startswith("/api/resolve-cache/"))]


def warm(edge, *args: str) -> tuple[dict, float]:
    """Runs `hf-edge warm ARGS` against `edge`; its last status line and how long it took."""
    started = time.monotonic()
    done = subprocess.run([str(edge_binary()), "warm", *args, "--config", str(edge.config)],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"hf-edge warm exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1]), seconds


@pytest.mark.edge_only
def test_after_a_warm_snapshot_download_fetches_no_body_upstream(other_edge, fakehub, model_dir, tmp_path):
    edge = other_edge(fakehub.hub, ops={"admin_token": ADMIN_TOKEN})
    fakehub.clear_log()

    first, first_seconds = warm(edge, MINILM)
    first_fetches = body_fetches(fakehub.log())
    fakehub.clear_log()
    second, second_seconds = warm(edge, MINILM)
    second_fetches = body_fetches(fakehub.log())
    print(f"warm {MINILM}: {first['files_total']} files, {first['bytes_total']} bytes in {first_seconds:.2f} s "
          f"(the job: {first['seconds']:.2f} s), {sum(e['body_bytes'] for e in first_fetches)} upstream body bytes "
          f"in {len(first_fetches)} requests; second warm: {second_seconds:.2f} s (the job: {second['seconds']:.2f} s), "
          f"{sum(e['body_bytes'] for e in second_fetches)} upstream body bytes")

    assert first["state"] == "done" and first["files_done"] == first["files_total"]
    assert len(first_fetches) == first["files_total"], "one upstream body per file"
    assert second["files_skipped"] == second["files_total"] == first["files_total"]
    assert second_fetches == [], "a second warm fetches nothing"

    fakehub.clear_log()
    got = Client(edge.url, tmp_path / "client").run(SNAPSHOT, repo_id=MINILM)
    originals = {p.relative_to(model_dir).as_posix(): sha256_file(p) for p in model_dir.rglob("*") if p.is_file()}
    assert got == originals
    assert body_fetches(fakehub.log()) == [], "after a warm, the client's snapshot costs no upstream body"
