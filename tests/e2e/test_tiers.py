"""Tiers: a site's hf-edge whose upstream is a region's hf-edge, in front of the fake Hub. The real huggingface_hub
client, with nothing but HF_ENDPOINT pointed at the site, gets what it gets from the Hub: the same files and commits,
the same exceptions for gated and missing files, and Xet-backed repos over plain HTTP; the region fetches each blob
from the CDN once for all its sites."""

import pytest

from snippets import DOWNLOAD, SNAPSHOT
from support import Client

pytestmark = pytest.mark.edge_only

ATTEMPT = """
from huggingface_hub import hf_hub_download
try:
    hf_hub_download(args["repo_id"], args["filename"])
except Exception as error:
    response = getattr(error, "response", None)
    result = {"error": type(error).__name__, "status": getattr(response, "status_code", None),
              "error_code": response.headers.get("X-Error-Code") if response is not None else None}
else:
    result = {"error": None}
"""


def cdn_gets(hub) -> list:
    return [e for e in hub.log() if e["server"] == "cdn" and e["method"] == "GET"]


def test_a_site_edge_in_front_of_a_region_edge_serves_the_real_client_as_the_hub(other_fakehub, other_edge, tmp_path):
    hub = other_fakehub()
    region = other_edge(hub.hub)
    sites = [other_edge(region.url), other_edge(region.url)]
    want = hub.expected("gpt2")
    for n, site in enumerate(sites):
        client = Client(site.url, tmp_path / f"client-{n}")
        assert client.run(SNAPSHOT, repo_id="gpt2") == {p: f["sha256"] for p, f in want["files"].items()}
    # Both sites' clients got every LFS file; the CDN sent each once, to the region.
    blobs = {f"/blobs/{f['sha256']}" for f in want["files"].values() if f["lfs"]}
    assert blobs and sorted(e["path"] for e in cdn_gets(hub)) == sorted(blobs)

    client = Client(sites[0].url, tmp_path / "gated")
    gated = "fake-org/gated-model"
    got = client.run(DOWNLOAD, token="hf_approved", repo_id=gated, filenames=["model.safetensors"])
    assert got["model.safetensors"]["sha256"] == hub.expected(gated)["files"]["model.safetensors"]["sha256"]
    assert got["model.safetensors"]["commit"] == hub.expected(gated)["commit"]
    # Stored at both tiers now, and still refused to whom the Hub refuses it.
    for token, status in ((None, 401), ("hf_valid", 403)):
        outcome = Client(sites[0].url, tmp_path / f"refused-{status}").run(
            ATTEMPT, token=token, repo_id=gated, filename="model.safetensors")
        assert outcome == {"error": "GatedRepoError", "status": status, "error_code": "GatedRepo"}, outcome
    missing = client.run(ATTEMPT, repo_id="gpt2", filename="no-such-file.json")
    assert missing == {"error": "RemoteEntryNotFoundError", "status": 404, "error_code": "EntryNotFound"}, missing

    # A Xet-backed repo downloads over HTTP through both tiers.
    xet = "fake-org/xet-model"
    got = client.run(DOWNLOAD, repo_id=xet, filenames=["model.safetensors"])
    assert got["model.safetensors"]["sha256"] == hub.expected(xet)["files"]["model.safetensors"]["sha256"]
    assert not [e for e in hub.log() if "xet-read-token" in e["path"] or e["path"].startswith("/_fake/cas")]
