"""Two fake Hubs behind one hf-edge: one at `/`, the other under `/internal` (`mounts:`), each with a token of its
own. The real huggingface_hub client works against either with nothing but HF_ENDPOINT, and a file both Hubs hold
is fetched and stored once."""

import pytest

from snippets import DOWNLOAD, SNAPSHOT
from support import Client

pytestmark = pytest.mark.edge_only

PUBLIC_TOKEN, INTERNAL_TOKEN = "hf_edge_site", "hf_approved"
REPO, PRIVATE = "gpt2", "fake-org/private-model"
SHARED = "pytorch_model.bin"

LIST_FILES = """
from huggingface_hub import list_repo_files
result = sorted(list_repo_files(args["repo_id"]))
"""


def authorizations(hub, server: str = "hub") -> set:
    """The Authorization values one of a fake's listeners received."""
    return {value for entry in hub.log() if entry["server"] == server
            for name, value in entry["headers"].items() if name.lower() == "authorization"}


def test_each_mount_serves_its_own_hub_with_its_own_token(other_fakehub, other_edge, tmp_path):
    public, internal = other_fakehub(), other_fakehub()
    public.push(REPO, {"only-public.txt": "public side"})
    internal.push(REPO, {"only-internal.txt": "internal side"})
    edge = other_edge(public.hub, upstream={"token": PUBLIC_TOKEN}, mounts=[{
        "prefix": "/internal",
        "upstream": {"endpoint": internal.hub, "cdn_hosts": ["127.0.0.2"], "token": INTERNAL_TOKEN},
    }])
    public.clear_log()
    internal.clear_log()
    at_root = Client(edge.url, tmp_path / "root")
    inside = Client(edge.url + "/internal", tmp_path / "internal")

    for client, hub in ((at_root, public), (inside, internal)):
        want = hub.expected(REPO)
        assert client.run(SNAPSHOT, repo_id=REPO) == {p: f["sha256"] for p, f in want["files"].items()}
        assert client.run(LIST_FILES, repo_id=REPO) == sorted(want["files"])
        got = client.run(DOWNLOAD, repo_id=PRIVATE, filenames=["config.json"])["config.json"]
        assert got == {"sha256": hub.expected(PRIVATE)["files"]["config.json"]["sha256"],
                       "commit": hub.expected(PRIVATE)["commit"]}
    # Pagination through the mount: the next-page links carry the prefix.
    many = inside.run(LIST_FILES, repo_id="fake-org/many-files")
    assert len(many) == len(internal.expected("fake-org/many-files")["files"]) >= 2500

    assert authorizations(public) == {f"Bearer {PUBLIC_TOKEN}"}
    assert authorizations(internal) == {f"Bearer {INTERNAL_TOKEN}"}
    assert authorizations(public, "cdn") == authorizations(internal, "cdn") == set()

    # The weights both Hubs hold: fetched from the first Hub's CDN only, one blob in the store.
    sha = public.expected(REPO)["files"][SHARED]["sha256"]
    assert internal.expected(REPO)["files"][SHARED]["sha256"] == sha
    fetched = lambda hub: [e for e in hub.log() if e["server"] == "cdn" and e["method"] == "GET"
                           and e["path"] == f"/blobs/{sha}"]
    assert len(fetched(public)) == 1 and fetched(internal) == []
    cache = edge.stderr.parent / "cache"
    assert [p.name for p in (cache / "blobs").rglob(sha)] == [sha]
