"""Issue 7 with the real client: what huggingface_hub sees through hf-edge when the Hub fails, and how soon
it sees a push.
Each test runs its own hf-edge (other_edge) so the shared instance's cache stays as other tests
expect, and clears the fake Hub's faults afterwards."""

import json

import pytest

from snippets import DOWNLOAD, SNAPSHOT
from support import Client

pytestmark = pytest.mark.edge_only


@pytest.fixture
def hub(fakehub):
    yield fakehub
    fakehub.clear_faults()


def test_a_cold_client_snapshots_a_cached_revision_while_the_hub_is_gone(hub, other_edge, tmp_path):
    edge = other_edge(hub.hub)
    expected = {p: f["sha256"] for p, f in hub.expected("gpt2")["files"].items()}
    assert Client(edge.url, tmp_path / "warm").run(SNAPSHOT, repo_id="gpt2") == expected

    hub.fault({"mode": "down"})  # the Hub and its CDN stop answering at all

    cold = Client(edge.url, tmp_path / "cold")
    assert cold.run(SNAPSHOT, repo_id="gpt2") == expected
    files = cold.run(DOWNLOAD, repo_id="gpt2", filenames=["config.json"])
    assert files["config.json"]["sha256"] == expected["config.json"]


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


# Downloads args["filename"] at main every 100 ms until it comes from args["commit"]; result: seconds from the
# start until then (None if not within args["within"] + 2 s) and the file's text.
POLL_FOR_COMMIT = """
import re, time
from huggingface_hub import hf_hub_download
start = time.monotonic()
result = {"seconds": None}
while time.monotonic() - start < args["within"] + 2:
    path = hf_hub_download(args["repo_id"], args["filename"])
    if re.search(r"snapshots/([0-9a-f]{40})/", path)[1] == args["commit"]:
        result = {"seconds": time.monotonic() - start, "text": open(path).read()}
        break
    time.sleep(0.1)
"""


def test_a_push_to_main_reaches_clients_within_revision_ttl(other_fakehub, other_edge, tmp_path):
    """hf-edge trusts a branch's commit for cache.revision_ttl (here 1 s): after a push to main the client
    still gets the old commit for at most that long, then the new one, with the new content."""
    hub = other_fakehub()
    edge = other_edge(hub.hub, cache={"revision_ttl": "1s"})
    client = Client(edge.url, tmp_path)
    before = client.run(DOWNLOAD, repo_id="gpt2", filenames=["config.json"])["config.json"]["commit"]
    pushed = hub.push("gpt2", {"config.json": '{"pushed": true}'})
    assert pushed != before

    seen = client.run(POLL_FOR_COMMIT, repo_id="gpt2", filename="config.json", commit=pushed, within=1.0)

    assert seen["seconds"] is not None and seen["seconds"] <= 1.0 + 0.5, seen
    assert seen["text"] == '{"pushed": true}'
