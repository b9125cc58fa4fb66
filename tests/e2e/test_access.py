"""Access control through a shared cache (issue 4): no identity gets through hf-edge what the Hub would refuse it,
cached or not, and the site's upstream token never leaks.

The matrix: {anonymous, valid-but-unapproved token, approved token, bogus token} x {public, gated, private repo}
x {cold, warm cache}. Every cell downloads one LFS file with the real huggingface_hub client, once straight from
the fake Hub (the reference, computed once per identity and repo) and once through hf-edge, each with an empty
client cache, and wants the same outcome: the same bytes, or the same exception class with the same status and
X-Error-Code. A cold cell gets an hf-edge of its own with an empty store; the warm cells share one hf-edge whose
store was filled with the three files by the approved token before any of them ran.

Every test here needs hf-edge; with E2E_TARGET=hub the matrix would compare the Hub with itself, so all skip.
"""

import contextlib
import json
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import running_fakehub
from snippets import DOWNLOAD
from support import Client, Edge, http, running_edge

pytestmark = pytest.mark.edge_only

CALL_TIMEOUT = 60.0  # one client call; a hung download fails the cell instead of the whole run

SITE_TOKEN = "hf_edge_site"  # approved on the fake Hub; configured as upstream.token in the leak tests

IDENTITIES = {  # test-id label -> the token the client brings (HF_TOKEN), None for anonymous
    "anonymous": None,
    "valid": "hf_valid",  # a real account, not approved for the gated repo, no access to the private one
    "approved": "hf_approved",
    "bogus": "hf_bogus_xyz",  # not a token the Hub knows: 401 Invalid credentials, whatever the repo
}

REPOS = {  # test-id label -> (repo id, an LFS file on main)
    "public": ("gpt2", "pytorch_model.bin"),
    "gated": ("fake-org/gated-model", "model.safetensors"),
    "private": ("fake-org/private-model", "model.safetensors"),
}

TEMPERATURES = ("cold", "warm")

# The cells where the Hub refuses the identity the restricted bytes: hf-edge must refuse them too, warm or not,
# whatever the reference says (so a fake Hub that let them through could not make these cells vacuous).
REFUSED = {(identity, repo) for identity in ("anonymous", "valid", "bogus") for repo in ("gated", "private")}

# One hf_hub_download; never raises: the outcome is the file's sha256, or the exception class with the HTTP status
# and X-Error-Code of the response behind it (if any).
ATTEMPT = """
import hashlib, traceback
from huggingface_hub import hf_hub_download
try:
    path = hf_hub_download(args["repo_id"], args["filename"])
except Exception as error:
    response = getattr(error, "response", None)
    result = {
        "error": type(error).__name__,
        "status": getattr(response, "status_code", None),
        "error_code": response.headers.get("X-Error-Code") if response is not None else None,
        "message": str(error)[:2000],
        "traceback": traceback.format_exc()[-4000:],
    }
else:
    with open(path, "rb") as f:
        result = {"sha256": hashlib.sha256(f.read()).hexdigest()}
"""


# Where the fake CDN stands: on a host of its own, and on the Hub's own IP at another port, as self-hosted Hubs put
# their S3 storage beside the Hub (S3, like the fake CDN, refuses a presigned URL that also carries Authorization):
# credentials must go to the Hub's exact origin only, so the whole matrix runs against both.
CDN_PLACES = {"cdn-apart": "127.0.0.2", "cdn-beside-hub": "127.0.0.1"}


@pytest.fixture(scope="module", params=list(CDN_PLACES))
def fakehub(request, model_dir, hash_cache, tmp_path_factory):
    """This module's fake Hub, once per CDN placement (overrides the session's)."""
    workdir = tmp_path_factory.mktemp(f"fakehub-{request.param}")
    with running_fakehub(model_dir, hash_cache, workdir, "--cdn-host", CDN_PLACES[request.param]) as hub:
        yield hub


# --------------------------------------------------------------------------------------------------- hf-edge factory


class EdgeFactory:
    """Starts hf-edge instances in front of one Hub, each with a fresh store and its own config; close() stops all."""

    def __init__(self, hub_url: str, root: Path):
        self.hub_url, self.root = hub_url, root
        self.count = 0
        self.stack = contextlib.ExitStack()

    def start(self, token: str | None = None) -> Edge:
        """A new hf-edge; `token` becomes its upstream.token (the identity of clients that bring none)."""
        self.count += 1
        workdir = self.root / f"edge-{self.count}"
        workdir.mkdir(parents=True)
        upstream = {} if token is None else {"token": token}
        return self.stack.enter_context(running_edge(self.hub_url, workdir, upstream=upstream, cache={"max_size": "1GiB"}))

    def close(self) -> None:
        self.stack.close()


@pytest.fixture(scope="module")
def module_edges(fakehub, tmp_path_factory):
    factory = EdgeFactory(fakehub.hub, tmp_path_factory.mktemp("access-edges"))
    yield factory
    factory.close()


@pytest.fixture
def fresh_edges(fakehub, tmp_path):
    factory = EdgeFactory(fakehub.hub, tmp_path / "edges")
    yield factory
    factory.close()


# --------------------------------------------------------------------------------------------------- the matrix


@dataclass
class Homes:
    """Empty client homes (HF_HOME), a new one for every call, so the client's own cache never answers."""

    root: Path
    count: int = 0

    def client(self, endpoint: str) -> Client:
        self.count += 1
        return Client(endpoint, self.root / f"client-{self.count}")


@pytest.fixture(scope="module")
def homes(tmp_path_factory) -> Homes:
    return Homes(tmp_path_factory.mktemp("access-clients"))


def attempt(homes: Homes, endpoint: str, identity: str, repo: str) -> dict:
    repo_id, filename = REPOS[repo]
    return homes.client(endpoint).run(ATTEMPT, token=IDENTITIES[identity], timeout=CALL_TIMEOUT,
                                      repo_id=repo_id, filename=filename)


def comparable(outcome: dict) -> dict:
    """What must match between the Hub and hf-edge: the bytes, or the exception class, status and error code."""
    if "sha256" in outcome:
        return {"sha256": outcome["sha256"]}
    return {k: outcome[k] for k in ("error", "status", "error_code")}


@pytest.fixture(scope="module")
def reference(fakehub, homes):
    """(identity, repo) -> the outcome of the same call made straight against the fake Hub (computed once)."""
    outcomes = {}

    def get(identity: str, repo: str) -> dict:
        if (identity, repo) not in outcomes:
            outcomes[identity, repo] = attempt(homes, fakehub.hub, identity, repo)
        return outcomes[identity, repo]

    return get


@pytest.fixture(scope="module")
def warm_edge(module_edges, fakehub, homes) -> Edge:
    """One hf-edge whose store holds the matrix's three files, downloaded through it by the approved token."""
    edge = module_edges.start()
    for repo, (repo_id, filename) in REPOS.items():
        got = homes.client(edge.url).run(DOWNLOAD, token="hf_approved", timeout=CALL_TIMEOUT,
                                         repo_id=repo_id, filenames=[filename])
        assert got[filename]["sha256"] == fakehub.expected(repo_id)["files"][filename]["sha256"], repo
    return edge


def blob_gets(entries: list[dict], sha256: str) -> list[dict]:
    return [e for e in entries if e["server"] == "cdn" and e["method"] == "GET" and e["path"] == f"/blobs/{sha256}"]


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("repo", REPOS)
@pytest.mark.parametrize("identity", IDENTITIES)
def test_edge_gives_the_hubs_answer(request, fakehub, homes, reference, fresh_edges, identity, repo, temperature):
    repo_id, filename = REPOS[repo]
    file = fakehub.expected(repo_id)["files"][filename]
    assert file["lfs"], f"{repo_id}/{filename} must be an LFS file, served by hf-edge from its blob store"
    hub = reference(identity, repo)
    edge = request.getfixturevalue("warm_edge") if temperature == "warm" else fresh_edges.start()
    seen = len(fakehub.log())

    got = attempt(homes, edge.url, identity, repo)

    log = fakehub.log()[seen:]
    if (identity, repo) in REFUSED:
        assert "sha256" not in hub, f"the fake Hub gave {identity} the {repo} bytes: the matrix would mean nothing"
        assert "sha256" not in got, f"hf-edge ({temperature}) gave {identity} the bytes of the {repo} repo"
        assert blob_gets(log, file["sha256"]) == [], "hf-edge fetched a blob for an identity the Hub refuses"
    assert comparable(got) == comparable(hub), (
        f"{identity} x {repo} x {temperature}: hf-edge and the Hub disagree\n"
        f"hub:  {json.dumps(hub, indent=1)}\nedge: {json.dumps(got, indent=1)}")
    if "sha256" in got:
        assert got["sha256"] == file["sha256"]
        fetched = blob_gets(log, file["sha256"])
        if temperature == "warm":
            assert fetched == [], "a warm cell must be served from hf-edge's store, not the CDN"
        else:
            assert fetched, "a cold cell must fill hf-edge's store from the CDN"
    # The Hub saw this client's identity on every request hf-edge made for the repo: never another one's.
    token = IDENTITIES[identity]
    sent = {e["headers"].get("authorization") for e in log if e["server"] == "hub" and repo_id in e["path"]}
    assert sent <= {f"Bearer {token}" if token else None}, sent


# --------------------------------------------------------------------------------------------------- upstream.token


GATED = "fake-org/gated-model"


@pytest.fixture(scope="module")
def site_edge(module_edges) -> Edge:
    """An hf-edge with upstream.token set: clients without a token of their own read as the site."""
    return module_edges.start(token=SITE_TOKEN)


def probe_requests(fakehub) -> list[tuple[str, str, dict, bytes | None]]:
    """(method, path, headers, body) of requests a client without a token can send: downloads, API calls, errors."""
    expected = fakehub.expected(GATED)
    commit = expected["commit"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    requests = []
    for name in ("model.safetensors", "config.json"):
        for revision in ("main", commit):
            path = f"/{GATED}/resolve/{revision}/{name}"
            requests += [("HEAD", path, {}, None), ("GET", path, {}, None),
                         ("GET", path, {"Range": "bytes=0-99"}, None)]
    requests += [
        ("GET", f"/{GATED}/resolve/main/missing.bin", {}, None),
        ("GET", f"/{GATED}/resolve/nope/config.json", {}, None),
        ("GET", "/fake-org/missing/resolve/main/config.json", {}, None),
        ("GET", f"/{GATED}/resolve/main/..%2f..%2fetc/passwd", {}, None),
        ("GET", f"/{GATED}/resolve/main/model.safetensors", {"Range": f"bytes={10 ** 9}-"}, None),
        ("GET", f"/api/models/{GATED}", {}, None),
        ("GET", f"/api/models/{GATED}/revision/main", {}, None),
        ("GET", f"/api/models/{GATED}/tree/main?recursive=true", {}, None),
        ("POST", f"/api/models/{GATED}/paths-info/main", form, b"paths=model.safetensors&paths=config.json"),
        ("GET", f"/api/models/{GATED}/refs", {}, None),
        ("GET", f"/api/models/{GATED}/commits/main", {}, None),
        ("GET", f"/api/resolve-cache/models/{GATED}/{commit}/config.json", {}, None),
        ("GET", "/api/whoami-v2", {}, None),
        ("GET", "/api/models/fake-org/private-model", {}, None),
        ("GET", "/no/such/route", {}, None),
    ]
    return requests


def fetch(edge: Edge, method: str, path: str, headers: dict, body: bytes | None, hops: int = 5) -> list[tuple]:
    """Every (status, headers, body) the client sees for one request, following redirects that stay on hf-edge."""
    answers = []
    url = edge.url + path
    for _ in range(hops):
        status, response_headers, response_body = http(method, url, body, headers)
        answers.append((url, status, response_headers, response_body))
        location = response_headers.get("Location")
        if status not in (301, 302, 303, 307, 308) or not location:
            break
        url = urllib.parse.urljoin(url, location)
        if not url.startswith(edge.url):
            break  # a redirect off hf-edge: the header itself was checked, the target is not hf-edge's answer
    return answers


def test_site_token_serves_anonymous_clients_and_never_leaks(site_edge, fakehub, homes):
    expected = fakehub.expected(GATED)
    names = ["model.safetensors", "config.json"]
    seen = len(fakehub.log())

    got = homes.client(site_edge.url).run(DOWNLOAD, timeout=CALL_TIMEOUT, repo_id=GATED, filenames=names)

    assert {n: got[n]["sha256"] for n in names} == {n: expected["files"][n]["sha256"] for n in names}
    leaks = []
    for method, path, headers, body in probe_requests(fakehub):
        for url, status, response_headers, response_body in fetch(site_edge, method, path, headers, body):
            for name, value in response_headers.items():
                if SITE_TOKEN in name or SITE_TOKEN in value:
                    leaks.append(f"{method} {url} -> {status}: header {name}: {value}")
            if SITE_TOKEN.encode() in response_body:
                leaks.append(f"{method} {url} -> {status}: body {response_body[:300]!r}")
    assert leaks == []
    log = fakehub.log()[seen:]
    cdn = [e for e in log if e["server"] == "cdn"]
    assert blob_gets(cdn, expected["files"]["model.safetensors"]["sha256"]), "the download must have reached the CDN"
    assert [e for e in cdn if "authorization" in e["headers"]] == []
    hub = [e for e in log if e["server"] == "hub"]
    assert {e["headers"].get("authorization") for e in hub if GATED in e["path"]} == {f"Bearer {SITE_TOKEN}"}, \
        "every Hub request for the anonymous clients' gated reads must carry the site token"


def test_site_token_absent_from_logs_and_metrics(site_edge):
    for path in (f"/{GATED}/resolve/main/config.json", f"/{GATED}/resolve/main/missing.bin", "/api/whoami-v2"):
        http("GET", site_edge.url + path)
    status, _, metrics = http("GET", f"http://{site_edge.metrics_addr}/metrics")

    assert status == 200
    assert SITE_TOKEN.encode() not in metrics
    assert SITE_TOKEN not in site_edge.stderr.read_text(errors="replace")


def test_client_token_takes_precedence_over_site_token(site_edge, homes):
    outcome = homes.client(site_edge.url).run(ATTEMPT, token="hf_valid", timeout=CALL_TIMEOUT,
                                              repo_id=GATED, filename="model.safetensors")

    assert comparable(outcome) == {"error": "GatedRepoError", "status": 403, "error_code": "GatedRepo"}, outcome
