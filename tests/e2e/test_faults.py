"""Issue 7, fault by fault: what the real huggingface_hub client sees through hf-edge when the Hub is down, slow,
failing or rate-limiting, or when a signed CDN URL has expired, and what hf-edge asked upstream meanwhile.
(A body cut mid-stream is test_outage.py's.)

Every test runs its own hf-edge (other_edge); those in front of a failing Hub get 1 s upstream timeouts
(metadata_timeout and read_timeout) and a 500 ms cache.revision_ttl, so that a branch answer goes stale within the
test and a slow Hub is given up on quickly. The client runs FETCH, which watches it from the inside: every HTTP
response it got and the backoff waits it chose. Those waits are recorded instead of slept, so the client's whole
retry schedule (23 s of sleeping after a 5xx, 30 s here after a 429) runs in milliseconds, unchanged otherwise.

What the client does with a failed metadata HEAD (huggingface_hub/file_download.py): with no copy in its own
cache and a retryable failure (429, 5xx, timeout), it asks again through http_backoff, which retries up to 5
more times, waiting 1, 2, 4, 8, 8 s, or Retry-After + 1 s after a 429 that carries it; then it raises
LocalEntryNotFoundError from the last HfHubHTTPError.
"""

import json
import re
import time
from urllib.parse import parse_qs

import pytest

from snippets import FETCH
from support import Client, http

pytestmark = pytest.mark.edge_only

# The file's metadata only (the client's HEAD), as a client checking for updates asks it; hf-edge fetches no bytes.
METADATA = """
from huggingface_hub import get_hf_file_metadata, hf_hub_url
meta = get_hf_file_metadata(hf_hub_url(args["repo_id"], args["filename"]))
result = {"commit": meta.commit_hash, "etag": meta.etag}
"""

REPO = "gpt2"
REGULAR, LFS = "config.json", "pytorch_model.bin"  # the Hub serves the first itself, the second from its CDN
REVISION_TTL = 0.5
EDGE = {"upstream": {"read_timeout": "1s", "metadata_timeout": "1s"}, "cache": {"revision_ttl": f"{int(REVISION_TTL * 1000)}ms"}}
SLOW = 8.0  # seconds the Hub waits before answering: well over the metadata_timeout, and over SLOW / 2 again
BACKOFF = [1, 2, 4, 8, 8]  # the client's waits between its 6 retrying HEADs after a 5xx
RETRY_AFTER = 5  # distinct from any BACKOFF step, so the client's waits show whether it read the header

# name: (fault, the status hf-edge answers a never-seen file with, upstream HEADs hf-edge makes for the first
# client request: it retries a connection failure or a 500/502/503 twice at once, a timeout or a 429 never; for
# upstream.failure_hold_down after that failure it asks once per request)
HUB_FAILURES = {
    "down": ({"mode": "down"}, 502, 3),
    "slow first byte": ({"mode": "slow", "server": "hub", "delay": SLOW}, 504, 1),
    "503 burst": ({"mode": "status", "status": 503, "server": "hub"}, 503, 3),
    "429 with Retry-After": ({"mode": "status", "status": 429, "server": "hub",
                              "headers": {"Retry-After": str(RETRY_AFTER)}}, 429, 1),
}


@pytest.fixture
def hub(fakehub):
    fakehub.clear_log()
    yield fakehub
    fakehub.clear_faults()


def seen(outcome: dict) -> list[tuple]:
    """(method, status, stale?) of each response the client got."""
    return [(r["method"], r["status"], (r["warning"] or "").startswith("110 ")) for r in outcome["responses"]]


def upstream(log: list[dict], last: str = "status") -> list[tuple]:
    """(server, method, path, and the status or the injected fault) of each request the fake Hub logged."""
    return [(e["server"], e["method"], e["path"], e[last]) for e in log]


def resolve(name: str) -> str:
    return f"/{REPO}/resolve/main/{name}"


@pytest.mark.parametrize("failure", HUB_FAILURES)
def test_a_warm_branch_file_is_served_stale_while_the_hub_fails(hub, other_edge, tmp_path, failure):
    """Once `main` is older than revision_ttl hf-edge asks the Hub again; when the Hub cannot answer (no answer,
    no first byte within metadata_timeout, 5xx, 429) it serves the commit and bytes it had, marked
    `Warning: 110`, and for upstream.failure_hold_down answers the next requests the same way without asking.
    The client gets the right file at the right commit on its first try, and not after the Hub's delay."""
    fault, _, per_request = HUB_FAILURES[failure]
    edge = other_edge(hub.hub, **EDGE)
    want = hub.expected(REPO)
    Client(edge.url, tmp_path / "warm").run(FETCH, repo_id=REPO, filenames=[REGULAR, LFS])
    time.sleep(REVISION_TTL + 0.1)
    hub.clear_log()
    hub.fault(fault)

    got = Client(edge.url, tmp_path / "cold").run(FETCH, repo_id=REPO, filenames=[REGULAR, LFS])

    for name in (REGULAR, LFS):
        assert (got[name]["sha256"], got[name]["commit"]) == (want["files"][name]["sha256"], want["commit"])
        assert seen(got[name]) == [("HEAD", 200, True), ("GET", 200, True)]
        assert got[name]["waits"] == []
        assert max(r["seconds"] for r in got[name]["responses"]) < SLOW / 2
    assert upstream(hub.log(), "fault") == [("hub", "HEAD", resolve(REGULAR), fault["mode"])] * per_request, \
        "the Hub asked once (never for bytes); within failure_hold_down the other requests do not ask again"


@pytest.mark.parametrize("failure", HUB_FAILURES)
def test_a_never_seen_file_fails_with_the_hubs_failure(hub, other_edge, tmp_path, failure):
    """With nothing cached hf-edge answers the client's HEAD with the failure: 502 when the Hub does not answer,
    504 when its first byte is later than metadata_timeout (quickly: not after the Hub's delay), the Hub's own 503
    or 429 (with its Retry-After). The client retries it on its own schedule, then raises
    LocalEntryNotFoundError from HfHubHTTPError with that status: an error it documents as "check your
    connection", never a 404-like one that says the file does not exist. After the first failure hf-edge asks
    the Hub once per client request, without retries of its own."""
    fault, status, per_request = HUB_FAILURES[failure]
    edge = other_edge(hub.hub, **EDGE)
    hub.fault(fault)

    got = Client(edge.url, tmp_path).run(FETCH, repo_id=REPO, filenames=[LFS])[LFS]

    assert (got["error"], got["cause"], got["status"]) == ("LocalEntryNotFoundError", "HfHubHTTPError", status)
    assert seen(got) == [("HEAD", status, False)] * 7
    assert got["waits"] == ([RETRY_AFTER + 1] * 5 if status == 429 else BACKOFF)
    assert max(r["seconds"] for r in got["responses"]) < SLOW / 2
    assert upstream(hub.log(), "fault") == [("hub", "HEAD", resolve(LFS), fault["mode"])] * (per_request + 6)


def test_a_slow_first_byte_within_the_timeouts_is_waited_for(hub, other_edge, tmp_path):
    """Every Hub answer comes 0.5 s late, well within hf-edge's timeouts (10 s here, so a loaded machine cannot
    make the answer late): hf-edge waits, and the client gets both files fresh (no Warning) at the first try."""
    edge = other_edge(hub.hub, upstream={"read_timeout": "10s", "metadata_timeout": "10s"})
    want = hub.expected(REPO)
    hub.fault({"mode": "slow", "server": "hub", "delay": 0.5})

    got = Client(edge.url, tmp_path).run(FETCH, repo_id=REPO, filenames=[REGULAR, LFS])

    for name in (REGULAR, LFS):
        assert (got[name]["sha256"], got[name]["commit"]) == (want["files"][name]["sha256"], want["commit"])
        assert seen(got[name]) == [("HEAD", 200, False), ("GET", 200, False)]
    delayed = {e["path"]: e["fault"] for e in hub.log() if e["server"] == "hub"}
    assert delayed[resolve(REGULAR)] == delayed[resolve(LFS)] == "slow"


@pytest.mark.parametrize("burst", [1, 2])
def test_a_short_503_burst_is_retried_by_hf_edge(hub, other_edge, tmp_path, burst):
    """hf-edge retries a metadata HEAD that got a 503 twice at once (100 ms, 200 ms backoff): a burst that
    short never reaches the client, which gets the file fresh without retrying."""
    edge = other_edge(hub.hub, **EDGE)
    hub.fault({"mode": "status", "status": 503, "server": "hub", "times": burst})

    got = Client(edge.url, tmp_path).run(FETCH, repo_id=REPO, filenames=[REGULAR])[REGULAR]

    assert got["sha256"] == hub.expected(REPO)["files"][REGULAR]["sha256"]
    assert seen(got) == [("HEAD", 200, False), ("GET", 200, False)]
    assert got["waits"] == []
    heads = [e["status"] for e in hub.log() if e["path"] == resolve(REGULAR)]
    assert heads == [503] * burst + [307]


def test_429s_reach_the_client_which_waits_as_told_and_retries(hub, other_edge, tmp_path):
    """hf-edge passes each 429 through with its Retry-After, one upstream HEAD per client HEAD, retrying none
    itself. The client's first HEAD does not retry; its second round does, waiting Retry-After + 1 s before
    each retry, and gets the file once the Hub lets it."""
    edge = other_edge(hub.hub, **EDGE)
    hub.fault({"mode": "status", "status": 429, "server": "hub", "times": 3,
               "headers": {"Retry-After": str(RETRY_AFTER)}})

    got = Client(edge.url, tmp_path).run(FETCH, repo_id=REPO, filenames=[REGULAR])[REGULAR]

    assert got["sha256"] == hub.expected(REPO)["files"][REGULAR]["sha256"]
    assert seen(got) == [("HEAD", 429, False)] * 3 + [("HEAD", 200, False), ("GET", 200, False)]
    assert got["waits"] == [RETRY_AFTER + 1] * 2
    heads = [e["status"] for e in hub.log() if e["path"] == resolve(REGULAR)]
    assert heads == [429, 429, 429, 307]


def test_an_expired_signed_url_is_signed_again(other_fakehub, other_edge, tmp_path):
    """hf-edge keeps the signed CDN URL of a file's metadata for its download. Here the CDN's signatures last
    2 s: a client checks the metadata (hf-edge fetches no bytes), the signature expires, then another client
    downloads. The CDN refuses the kept URL with 403; hf-edge asks the Hub again for a freshly signed URL and
    the client gets the right bytes, never seeing the 403."""
    url_ttl = 2
    hub = other_fakehub("--cdn-url-ttl", str(url_ttl))
    edge = other_edge(hub.hub)
    want = hub.expected(REPO)
    meta = Client(edge.url, tmp_path / "check").run(METADATA, repo_id=REPO, filename=LFS)
    assert meta == {"commit": want["commit"], "etag": want["files"][LFS]["sha256"]}
    assert upstream(hub.log()) == [("hub", "HEAD", resolve(LFS), 302)]
    signed_by = time.time()  # the URL hf-edge keeps expires at int(signing time) + url_ttl at the latest
    time.sleep(int(signed_by) + url_ttl + 0.1 - time.time())
    hub.clear_log()

    got = Client(edge.url, tmp_path / "download").run(FETCH, repo_id=REPO, filenames=[LFS])[LFS]

    assert got["sha256"] == want["files"][LFS]["sha256"]
    assert seen(got) == [("HEAD", 200, False), ("GET", 200, False)]
    log = hub.log()
    blob = f"/blobs/{want['files'][LFS]['sha256']}"
    assert upstream(log) == [("cdn", "GET", blob, 403), ("hub", "HEAD", resolve(LFS), 302), ("cdn", "GET", blob, 200)]
    refused, used = (int(parse_qs(e["query"])["Expires"][0]) for e in (log[0], log[2]))
    assert refused < used, "the second URL is a new signature, not the refused one again"


# One hf_hub_download of args["filename"], never raising: the file's sha256, or the exception's class; the statuses
# of the responses the client got; the waits before its resumes (recorded, not slept).
GET_ONE = """
import hashlib, types
from huggingface_hub import file_download, hf_hub_download, set_client_factory
from huggingface_hub.utils import _http

statuses, resume_waits = [], []

def watched_client():
    client = _http.default_client_factory()
    client.event_hooks["response"].append(lambda r: statuses.append((r.request.method, r.status_code)))
    return client

set_client_factory(watched_client)
file_download.time = types.SimpleNamespace(sleep=resume_waits.append)  # http_get's only use of `time`
try:
    path = hf_hub_download(args["repo_id"], args["filename"], repo_type=args.get("repo_type"))
    with open(path, "rb") as f:
        result = {"sha256": hashlib.sha256(f.read()).hexdigest()}
except Exception as error:
    result = {"error": type(error).__name__}
result.update(statuses=statuses, resume_waits=resume_waits)
"""

# name: (repo id, repo type, file, the listener that serves its bytes); a file None is pushed, 100 bytes of LFS
CORRUPTIBLE = {
    "LFS file from the CDN": ("fake-org/tiny-ds", "dataset", "data/train.parquet", "cdn"),  # 3 MiB
    "small LFS file from the CDN": ("gpt2", "model", None, "cdn"),  # one read upstream
    "regular file from the Hub": ("gpt2", "model", "config.json", "hub"),  # from /api/resolve-cache/, one read
}


def metric(edge, name: str) -> float:
    status, _, body = http("GET", f"http://{edge.metrics_addr}/metrics")
    assert status == 200
    return sum(float(line.split()[-1]) for line in body.decode().splitlines() if line.startswith(name))


@pytest.mark.parametrize("case", CORRUPTIBLE)
def test_corrupt_bytes_are_never_served_as_the_file(other_fakehub, other_edge, tmp_path, case):
    """The upstream sends bodies of the right length with the wrong content, every time. hf-edge's hash check
    catches each fill: the client, which resumes cut downloads on its own, ends with an error, never with the
    corrupt bytes as the file; nothing was stored, so once the upstream is right again the next request
    fetches the file again and gets the right bytes."""
    repo_id, repo_type, filename, server = CORRUPTIBLE[case]
    hub = other_fakehub()
    if filename is None:
        filename = "small.bin"
        hub.push(repo_id, {filename: "a hundred bytes of weights. " * 3 + "0123456789" + "!" * 6})
    edge = other_edge(hub.hub)
    want = hub.expected(repo_id, repo_type=repo_type)["files"][filename]
    body_path = f"/blobs/{want['sha256']}" if server == "cdn" else f"/api/resolve-cache/.*/{re.escape(filename)}$"
    hub.fault({"mode": "corrupt", "server": server, "method": "GET", "path": body_path})

    got = Client(edge.url, tmp_path / "first").run(GET_ONE, repo_id=repo_id, repo_type=repo_type, filename=filename)

    assert "sha256" not in got, f"the client took {got['sha256']} (expected {want['sha256']}) as the file: {got}"
    assert metric(edge, "hf_edge_store_integrity_failures_total") >= 1
    corrupt = [e for e in hub.log() if e["fault"] == "corrupt"]
    assert corrupt and all(e["method"] == "GET" for e in corrupt)
    hub.clear_faults()
    hub.clear_log()

    again = Client(edge.url, tmp_path / "second").run(GET_ONE, repo_id=repo_id, repo_type=repo_type,
                                                      filename=filename)

    assert again["sha256"] == want["sha256"]
    refetched = [e for e in hub.log()
                 if e["server"] == server and e["method"] == "GET" and re.search(body_path, e["path"])]
    assert [(e["status"], e["fault"]) for e in refetched] == [(200, None)], "nothing was stored: fetched again"


# name: (fault, file): the Hub's own answer to the metadata request points elsewhere, or the CDN's to the body request
FOREIGN_REDIRECTS = {
    "Hub: LFS file": ({"mode": "redirect", "server": "hub", "path": "/resolve/"}, LFS),
    "Hub: regular file": ({"mode": "redirect", "server": "hub", "path": "/resolve/"}, REGULAR),
    "CDN: LFS body": ({"mode": "redirect", "server": "cdn"}, LFS),
}


@pytest.mark.parametrize("case", FOREIGN_REDIRECTS)
def test_a_redirect_to_a_third_host_is_refused(hub, other_edge, tmp_path, case):
    """A redirect to a host that is neither the Hub nor in upstream.cdn_hosts (the third host, which would have
    served the file) is not followed: the client gets a JSON 502, and the third host never sees a request, so it
    never sees the client's token either. The client, told 502, retries and then gives up with an error that
    means "check your connection", never with the file from elsewhere."""
    fault, name = FOREIGN_REDIRECTS[case]
    edge = other_edge(hub.hub, **EDGE)
    hub.fault(fault)
    url = f"{edge.url}/{REPO}/resolve/main/{name}"
    token = {"Authorization": "Bearer hf_approved"}

    for method in ("HEAD", "GET") if case.startswith("Hub") else ("GET",):
        status, headers, body = http(method, url, headers=token)
        assert status == 502 and headers["Content-Type"].startswith("application/json"), (method, status, body)
        assert method == "HEAD" or json.loads(body)["error"]
    got = Client(edge.url, tmp_path).run(FETCH, token="hf_approved", repo_id=REPO, filenames=[name])[name]

    assert (got["error"], got["status"]) in {("LocalEntryNotFoundError", 502), ("HfHubHTTPError", 502)}, got
    log = hub.log()
    assert [e for e in log if e["server"] == "third"] == [], "no request may reach the third host"
    assert any(e["fault"] == "redirect" for e in log)


@pytest.mark.parametrize("case", FOREIGN_REDIRECTS)
def test_a_refused_redirect_is_explained(hub, other_edge, case):
    """The 502's JSON error says why: the redirect target, and that it is neither the Hub nor a CDN host."""
    fault, name = FOREIGN_REDIRECTS[case]
    edge = other_edge(hub.hub, **EDGE)
    hub.fault(fault)

    status, _, body = http("GET", f"{edge.url}/{REPO}/resolve/main/{name}")

    error = json.loads(body)["error"]
    assert status == 502 and "127.0.0.3" in error and "not the Hub or an allowed CDN host" in error, error


def test_a_hub_that_drops_connection_attempts_costs_clients_metadata_timeout(other_fakehub, other_edge, tmp_path):
    """The Hub blackholed: connection attempts get no answer (not a refused port). hf-edge gives the metadata
    request upstream.metadata_timeout (1 s here) in all, connecting included, not connect_timeout (10 s, as
    long as the client's own metadata timeout): a warm file comes stale within about 1 s, right commit and
    bytes, and a file never seen fails with a JSON 504 as soon."""
    metadata_timeout = 1.0
    hub = other_fakehub()
    edge = other_edge(hub.hub, upstream={"metadata_timeout": f"{int(metadata_timeout)}s", "connect_timeout": "10s"},
                      cache={"revision_ttl": f"{int(REVISION_TTL * 1000)}ms"})
    want = hub.expected(REPO)
    Client(edge.url, tmp_path / "warm").run(FETCH, repo_id=REPO, filenames=[REGULAR, LFS])
    time.sleep(REVISION_TTL + 0.1)  # main is now older than revision_ttl: hf-edge asks the Hub again
    hub.fault({"mode": "blackhole", "server": "hub"})
    hub.clear_log()

    got = Client(edge.url, tmp_path / "cold").run(FETCH, repo_id=REPO, filenames=[REGULAR, LFS])

    for name in (REGULAR, LFS):
        assert (got[name]["sha256"], got[name]["commit"]) == (want["files"][name]["sha256"], want["commit"])
        assert seen(got[name]) == [("HEAD", 200, True), ("GET", 200, True)]
        assert max(r["seconds"] for r in got[name]["responses"]) < metadata_timeout + 2.5
    started = time.monotonic()
    status, headers, body = http("HEAD", f"{edge.url}/{REPO}/resolve/main/merges.txt")
    assert status == 504 and time.monotonic() - started < metadata_timeout + 2.5
    status, headers, body = http("GET", f"{edge.url}/{REPO}/resolve/main/onnx/config.json")
    assert status == 504 and "error" in json.loads(body)
    assert hub.log() == [], "no connection got through to the Hub"
