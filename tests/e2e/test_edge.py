"""What only a proxy can get right or wrong: Xet stays off the path, the cache serves repeat downloads, no
Authorization reaches a CDN, and /resolve is answered by hf-edge itself. One hub_only test checks that the fake
Hub's Xet hints do send a bare client to Xet, so that the edge tests of Xet mean something."""

import json
import uuid

import pytest

from snippets import DOWNLOAD, SNAPSHOT
from support import decoded, get_following, http, sha256, sha256_file

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
XET_REPO = "fake-org/xet-model"


def is_xet_request(entry: dict) -> bool:
    return "/xet-read-token/" in entry["path"] or entry["path"].startswith("/_fake/cas")


@pytest.mark.hub_only
def test_bare_client_follows_xet_hints(client, fakehub):
    fakehub.clear_log()

    outcome = client.outcome(DOWNLOAD, repo_id=XET_REPO, filenames=["model.safetensors"], timeout=60)

    assert "error" in outcome, "the fake CAS answers 500, so a client on the Xet path cannot succeed"
    paths = [e["path"] for e in fakehub.log()]
    assert any("/xet-read-token/" in p for p in paths), paths
    assert any(p.startswith("/_fake/cas/") for p in paths), paths


@pytest.mark.edge_only
def test_xet_repo_downloads_over_plain_http(client, fakehub):
    main, v1 = fakehub.expected(XET_REPO), fakehub.expected(XET_REPO, "v1.0")
    fakehub.clear_log()

    snapshot = client.run(SNAPSHOT, repo_id=XET_REPO)
    old = client.run(DOWNLOAD, repo_id=XET_REPO, filenames=["model.safetensors"], revision="v1.0")

    assert snapshot == {path: f["sha256"] for path, f in main["files"].items()}
    assert old["model.safetensors"]["sha256"] == v1["files"]["model.safetensors"]["sha256"]
    assert [e for e in fakehub.log() if is_xet_request(e)] == []


ACCEPT_ENCODINGS = [None, "identity", "gzip", "gzip, deflate, br, zstd"]  # what raw, requests and httpx clients send


@pytest.mark.edge_only
@pytest.mark.parametrize("accept", ACCEPT_ENCODINGS)
def test_xet_hints_are_stripped(endpoint, accept):
    """Also when the client accepts gzip, which the fake Hub then sends: hf-edge asks for identity JSON, which it
    can rewrite, and the client gets valid JSON without xetHash whatever encoding it is sent in."""
    headers = {"Accept-Encoding": accept} if accept else {}
    status, response_headers, _ = http("HEAD", f"{endpoint}/{XET_REPO}/resolve/main/model.safetensors", headers=headers)
    assert status == 200
    assert "X-Xet-Hash" not in response_headers and "X-Xet-Refresh-Route" not in response_headers
    assert "xet" not in response_headers.get("Link", "")

    status, response_headers, body = http("GET", f"{endpoint}/api/models/{XET_REPO}/tree/main?recursive=true",
                                          headers=headers)
    listing = json.loads(decoded(response_headers, body))
    assert status == 200 and listing and all("xetHash" not in e for e in listing)

    form = b"paths=model.safetensors&paths=extra%2Fadapter.bin&expand=false"
    status, response_headers, body = http("POST", f"{endpoint}/api/models/{XET_REPO}/paths-info/main", form,
                                          {"Content-Type": "application/x-www-form-urlencoded", **headers})
    infos = json.loads(decoded(response_headers, body))
    assert status == 200 and len(infos) == 2 and all("xetHash" not in e for e in infos)


@pytest.mark.parametrize("accept", ACCEPT_ENCODINGS)
def test_a_text_file_is_byte_identical_whatever_the_client_accepts(endpoint, fakehub, accept):
    """The Hub gzips text for a client that accepts it; what the client decodes is the file, and the
    Content-Length it was sent is the length of what it was sent."""
    headers = {"Accept-Encoding": accept} if accept else {}
    expected = fakehub.expected("gpt2")["files"]

    for name in ("config.json", "onnx/config.json", "README.md"):
        status, response_headers, body = get_following(f"{endpoint}/gpt2/resolve/main/{name}", headers)
        assert status == 200
        assert int(response_headers["Content-Length"]) == len(body)
        assert sha256(decoded(response_headers, body)) == expected[name]["sha256"], name


@pytest.mark.edge_only
@pytest.mark.parametrize("filename", ["config.json", "pytorch_model.bin"])
def test_resolve_is_answered_by_the_edge(endpoint, fakehub, filename):
    expected = fakehub.expected("gpt2")
    file = expected["files"][filename]
    url = f"{endpoint}/gpt2/resolve/main/{filename}"

    status, headers, _ = http("HEAD", url)

    assert status == 200, "hf-edge answers /resolve itself, never with a redirect"
    assert headers["X-Repo-Commit"] == expected["commit"]
    etag = (headers.get("X-Linked-Etag") or headers["ETag"]).removeprefix("W/").strip('"')
    assert etag == (file["sha256"] if file["lfs"] else file["oid"])
    assert int(headers["Content-Length"]) == file["size"]

    status, headers, body = http("GET", url, headers={"Range": "bytes=10-19"})

    assert status == 206
    assert headers["Content-Range"] == f"bytes 10-19/{file['size']}"
    assert len(body) == 10


@pytest.mark.edge_only
def test_second_client_is_served_from_the_edge_cache(new_client, fakehub, model_dir):
    originals = {p.relative_to(model_dir).as_posix(): sha256_file(p) for p in model_dir.rglob("*") if p.is_file()}
    assert new_client().run(SNAPSHOT, repo_id=MINILM) == originals
    fakehub.clear_log()

    assert new_client().run(SNAPSHOT, repo_id=MINILM) == originals

    log = fakehub.log()
    assert [e for e in log if e["server"] == "cdn" and e["method"] == "GET"] == []
    assert [e for e in log if e["path"].startswith("/api/resolve-cache/") and e["body_bytes"] > 0] == []


@pytest.mark.edge_only
def test_authorization_never_reaches_the_cdn(client, fakehub):
    # A file pushed now cannot be in hf-edge's cache yet, so hf-edge must fetch it from the CDN.
    fresh = f"fresh-{uuid.uuid4().hex}.bin"
    fakehub.push("fake-org/gated-model", {fresh: f"weights {uuid.uuid4()}"})
    expected = fakehub.expected("fake-org/gated-model")
    fakehub.clear_log()

    got = client.run(DOWNLOAD, token="hf_approved", repo_id="fake-org/gated-model",
                     filenames=[fresh, "model.safetensors"])

    assert got[fresh]["sha256"] == expected["files"][fresh]["sha256"]
    log = fakehub.log()
    blob_path = f"/blobs/{expected['files'][fresh]['sha256']}"
    assert any(e["server"] == "cdn" and e["path"] == blob_path and e["status"] in (200, 206) for e in log)
    assert [e for e in log if e["server"] == "cdn" and "authorization" in e["headers"]] == []
