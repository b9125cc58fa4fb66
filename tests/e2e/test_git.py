"""git and git-lfs (Debian's packages) cloning through hf-edge: smart HTTP passes through with the client's own
credentials, and LFS objects come from hf-edge's store, named by the batch answers it rewrites."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from support import http, sha256, sha256_file

pytestmark = pytest.mark.client("git + git-lfs")

GIT_TIMEOUT = 120
GATED, PRIVATE = "fake-org/gated-model", "fake-org/private-model"


class Git:
    """A git user with a HOME of its own (git-lfs's filters installed there), talking to `endpoint`."""

    def __init__(self, endpoint: str, home: Path, token: str | None = None):
        self.endpoint, self.home, self.token = endpoint, home, token
        home.mkdir(parents=True)
        self.run("lfs", "install", "--skip-repo")

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = {"HOME": str(self.home), "PATH": os.environ["PATH"], "GIT_TERMINAL_PROMPT": "0",
               "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C.UTF-8"}
        # The token only for the endpoint (git-lfs applies http.<url>.extraHeader too), never for the CDN the
        # fake Hub's batch answers point at, which refuses Authorization.
        auth = ["-c", f"http.{self.endpoint}/.extraHeader=Authorization: Bearer {self.token}"] if self.token else []
        return subprocess.run(["git", *auth, *args], cwd=cwd, env=env, capture_output=True, timeout=GIT_TIMEOUT)

    def clone(self, repo: str, into: Path) -> Path:
        done = self.run("clone", "--quiet", f"{self.endpoint}/{repo}", str(into))
        assert done.returncode == 0, f"git clone {repo} failed:\n{done.stderr.decode()[-3000:]}"
        return into


def assert_checkout_matches(fakehub, repo: str, checkout: Path) -> None:
    """Every file of main as the Hub holds it, LFS files smudged to their content (.gitattributes aside: the
    fake's git view lists its LFS-by-size files there)."""
    expected = fakehub.expected(repo)["files"]
    for path, want in expected.items():
        if path == ".gitattributes":
            continue
        assert sha256_file(checkout / path) == want["sha256"], path
    assert any(f["lfs"] for f in expected.values())


def cdn_requests(fakehub) -> list[dict]:
    return [e for e in fakehub.log() if e["server"] == "cdn"]


def test_git_clone_with_lfs(fakehub, endpoint, tmp_path):
    fakehub.clear_log()
    checkout = Git(endpoint, tmp_path / "home").clone("gpt2", tmp_path / "gpt2")
    assert_checkout_matches(fakehub, "gpt2", checkout)
    hub_paths = [e["path"] for e in fakehub.log() if e["server"] == "hub"]
    assert "/gpt2.git/info/lfs/objects/batch" in hub_paths


@pytest.mark.edge_only
def test_second_clone_costs_no_cdn_bytes(fakehub, endpoint, tmp_path):
    Git(endpoint, tmp_path / "home-1").clone("gpt2", tmp_path / "first")
    fakehub.clear_log()
    checkout = Git(endpoint, tmp_path / "home-2").clone("gpt2", tmp_path / "second")
    assert_checkout_matches(fakehub, "gpt2", checkout)
    assert cdn_requests(fakehub) == []


def test_private_repo_clones_only_with_a_token(fakehub, endpoint, tmp_path):
    checkout = Git(endpoint, tmp_path / "approved", token="hf_approved").clone(PRIVATE, tmp_path / "private")
    assert_checkout_matches(fakehub, PRIVATE, checkout)
    anonymous = Git(endpoint, tmp_path / "anonymous").run("clone", f"{endpoint}/{PRIVATE}", str(tmp_path / "no"))
    assert anonymous.returncode != 0


def batch(endpoint: str, repo: str, objects: list[dict], operation: str = "download", token: str | None = None):
    headers = {"Content-Type": "application/vnd.git-lfs+json", "Accept": "application/vnd.git-lfs+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"operation": operation, "transfers": ["basic"], "objects": objects}).encode()
    status, _, answer = http("POST", f"{endpoint}/{repo}.git/info/lfs/objects/batch", body, headers)
    return status, answer


def lfs_objects(fakehub, repo: str) -> list[dict]:
    return [{"oid": f["sha256"], "size": f["size"]} for f in fakehub.expected(repo)["files"].values() if f["lfs"]]


@pytest.mark.edge_only
def test_batch_answers_point_at_the_edge_and_keep_the_cdn_auth(fakehub, edge, tmp_path):
    objects = lfs_objects(fakehub, GATED)[:1]
    status, answer = batch(edge.url, GATED, objects, token="hf_approved")
    assert status == 200, answer
    assert b"X-Fake-Lfs-Token" not in answer and fakehub.cdn.encode() not in answer
    (obj,) = json.loads(answer)["objects"]
    download = obj["actions"]["download"]
    assert download["href"] == f"{edge.url}/{GATED}.git/info/lfs/objects/{obj['oid']}"
    assert download["header"] == {"Authorization": "Bearer hf_approved"}
    assert 0 < download["expires_in"] <= 60
    status, _, body = http("GET", download["href"], headers=download["header"])
    assert status == 200 and sha256(body) == obj["oid"]
    # The object URL serves only the identity the Hub answered, for the repo it answered for.
    for headers in ({}, {"Authorization": "Bearer hf_valid"}):
        status, _, body = http("GET", download["href"], headers=headers)
        assert status == 404 and "error" in json.loads(body)
    other_repo = download["href"].replace(GATED, PRIVATE)
    assert http("GET", other_repo, headers=download["header"])[0] == 404
    # A client the Hub refuses gets the Hub's refusal, and nothing kept.
    assert batch(edge.url, GATED, objects, token="hf_valid")[0] == 403


@pytest.mark.edge_only
def test_upload_batches_pass_through_untouched(fakehub, edge):
    objects = [{"oid": "ab" * 32, "size": 3}]
    status, answer = batch(edge.url, "gpt2", objects, operation="upload", token="hf_approved")
    assert status == 200, answer
    upload = json.loads(answer)["objects"][0]["actions"]["upload"]
    assert upload["href"] == f"{fakehub.hub}/_fake-lfs-upload/{'ab' * 32}"
    assert upload["header"] == {"X-Upload": "1"}
