"""Issue 7 with the real client: what huggingface_hub sees through hf-edge when the Hub fails.
Each test runs its own hf-edge (other_edge) so the shared instance's cache stays as other tests
expect, and clears the fake Hub's faults afterwards."""

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


def test_a_body_cut_mid_stream_never_yields_a_corrupt_file(hub, other_edge, tmp_path):
    """hf-edge does not yet resume the upstream fetch itself (issue 7), so the client either
    resumes on its own (cut after the header went out) or gets a retryable 5xx (cut before it);
    either way it never gets wrong bytes, and the next attempt is whole."""
    edge = other_edge(hub.hub)
    want = hub.expected("fake-org/tiny-ds", repo_type="dataset")["files"]["data/train.parquet"]
    hub.fault({"mode": "drop_after", "server": "cdn", "bytes": 500_000, "times": 1})
    args = dict(repo_id="fake-org/tiny-ds", repo_type="dataset", filenames=["data/train.parquet"])

    first = Client(edge.url, tmp_path / "first").outcome(DOWNLOAD, **args)

    if "error" in first:
        assert "HfHubHTTPError" in first["classes"] and "50" in first["message"], first["message"]
        first = Client(edge.url, tmp_path / "again").outcome(DOWNLOAD, **args)
    assert first["result"]["data/train.parquet"]["sha256"] == want["sha256"]
