"""Issue 7 with the real client: what huggingface_hub sees through hf-edge when the Hub fails, and how soon
it sees a push.
Each test runs its own hf-edge (other_edge) so the shared instance's cache stays as other tests
expect, and clears the fake Hub's faults afterwards."""

import json
import time
from http.client import HTTPConnection
from urllib.parse import urlsplit

import pytest

from snippets import DOWNLOAD, SNAPSHOT_AT
from support import Client

pytestmark = pytest.mark.edge_only


@pytest.fixture
def hub(fakehub):
    yield fakehub
    fakehub.clear_faults()


@pytest.mark.parametrize("outage", ["down", "blackhole"])
def test_a_cold_client_snapshots_a_cached_revision_while_the_hub_is_gone(other_fakehub, other_edge, tmp_path, outage):
    """The Hub and its CDN close every connection (down) or drop every connection attempt (blackhole): a client
    with an empty cache still gets the snapshot of main hf-edge saw last, at that exact commit, from hf-edge's
    last good API answers and its store. A blackholed Hub costs it no more than a metadata_timeout (1 s here)
    per request hf-edge must try, not connect_timeout (10 s) each."""
    hub = other_fakehub()
    edge = other_edge(hub.hub, upstream={"metadata_timeout": "1s", "connect_timeout": "10s"})
    want = hub.expected("gpt2")
    expected = {p: f["sha256"] for p, f in want["files"].items()}
    assert Client(edge.url, tmp_path / "warm").run(SNAPSHOT_AT, repo_id="gpt2") == \
        {"commit": want["commit"], "files": expected}
    pushed = hub.push("gpt2", {"config.json": '{"pushed while the edge was looking away": true}'})
    assert pushed != want["commit"]

    hub.fault({"mode": outage})
    # The first request to find the Hub gone gets the last good answer after a failed upstream attempt, and hf-edge
    # closes that connection then (Pingora does): the answer says so, or a client sending its next request on it
    # would meet a reset.
    connection = HTTPConnection(urlsplit(edge.url).netloc, timeout=10)  # HTTP/1.1, keep-alive asked for
    connection.request("GET", "/api/models/gpt2/revision/main")
    answer = connection.getresponse()
    assert answer.status == 200 and json.loads(answer.read())["sha"] == want["commit"]
    assert answer.getheader("Connection") == "close"
    connection.close()
    cold = Client(edge.url, tmp_path / "cold")
    started = time.monotonic()
    got = cold.run(SNAPSHOT_AT, repo_id="gpt2")
    elapsed = time.monotonic() - started
    files = cold.run(DOWNLOAD, repo_id="gpt2", filenames=["config.json"])

    assert got == {"commit": want["commit"], "files": expected}, "the last commit hf-edge saw, not the pushed one"
    assert files["config.json"] == {"sha256": expected["config.json"], "commit": want["commit"]}
    assert elapsed < 12, f"{elapsed:.1f} s: the revision, tree and file requests each waited connect_timeout (10 s)"


def test_a_body_cut_mid_stream_is_resumed_by_hf_edge(hub, other_edge, tmp_path):
    """The CDN drops the connection 500 kB into the file: hf-edge asks it for the rest with a
    Range request and the client's one download completes, with the right bytes."""
    edge = other_edge(hub.hub)
    want = hub.expected("fake-org/tiny-ds", repo_type="dataset")["files"]["data/train.parquet"]
    hub.fault({"mode": "drop_after", "server": "cdn", "bytes": 500_000, "times": 1, "body_delay": 0.2})
    hub.clear_log()

    got = Client(edge.url, tmp_path / "c").run(
        DOWNLOAD, repo_id="fake-org/tiny-ds", repo_type="dataset", filenames=["data/train.parquet"]
    )

    assert got["data/train.parquet"]["sha256"] == want["sha256"]
    cdn = [e for e in hub.log() if e["server"] == "cdn" and e["method"] == "GET"]
    assert [e["fault"] for e in cdn] == ["drop_after", None]
    resumed_from = int(cdn[1]["headers"]["range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= 500_000
    access = [json.loads(line) for line in edge.stderr.read_text().splitlines() if line.startswith("{")]
    gets = [(a["status"], a.get("error")) for a in access if a["method"] == "GET" and a["path"].endswith("train.parquet")]
    assert gets == [(200, None)], "one request, answered whole: the client did not have to resume"


def test_a_push_to_main_reaches_clients_within_revision_ttl(other_fakehub, other_edge, tmp_path):
    """hf-edge trusts a branch's commit for cache.revision_ttl (2 s here): after a push to main, clients may get
    the old commit for that long after hf-edge last asked the Hub, and get the new one, with its content, after.
    Timed by the test's own clock, not by how fast a request goes: hf-edge asked the Hub during the first
    download, so it must know the push at the latest revision_ttl after that download ended, and it cannot know
    it before revision_ttl after that download started."""
    ttl = 2.0
    hub = other_fakehub()
    edge = other_edge(hub.hub, cache={"revision_ttl": f"{int(ttl)}s"})
    client = Client(edge.url, tmp_path)
    started = time.monotonic()
    before = client.run(DOWNLOAD, repo_id="gpt2", filenames=["config.json"])["config.json"]
    ended = time.monotonic()
    assert before["commit"] == hub.expected("gpt2")["commit"]
    pushed = hub.push("gpt2", {"config.json": '{"pushed": true}'})
    assert pushed != before["commit"]

    soon = client.run(DOWNLOAD, repo_id="gpt2", filenames=["config.json"])["config.json"]
    if time.monotonic() < started + ttl:  # a machine so slow that revision_ttl went by proves nothing here
        assert soon == before, "within revision_ttl hf-edge answers from what it knows"
    time.sleep(max(0.0, ended + ttl - time.monotonic()))
    after = client.run(DOWNLOAD, repo_id="gpt2", filenames=["config.json"])["config.json"]

    assert after["commit"] == pushed
    assert after["sha256"] == hub.expected("gpt2")["files"]["config.json"]["sha256"]
