"""What an operator sees: the metrics move as the traffic says, the scrape is valid Prometheus text, the shipped
Prometheus config, alerting rules and Grafana dashboard work against a real scrape, and every response can be
found in the access log by its X-Request-Id.

promtool and prometheus come from Debian's prometheus package, which scripts/setup.sh installs."""

import json
import math
import re
import shutil
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
import yaml

from support import free_port, http, stop

pytestmark = pytest.mark.edge_only

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GATED = "fake-org/gated-model"
AUTH = {"Authorization": "Bearer hf_approved"}  # approved for the gated repo
SETTLE_TIMEOUT = 10.0  # a request's metrics are recorded as it ends, maybe just after the client has the body
PROMETHEUS_TIMEOUT = 60.0

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: run scripts/setup.sh, which installs Debian's prometheus package")
    return path


def poll(probe, done=bool, timeout: float = SETTLE_TIMEOUT, interval: float = 0.2):
    """probe()'s result as soon as done(result) holds, or its last result after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if done(result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


def scrape_text(edge) -> str:
    status, headers, body = http("GET", f"http://{edge.metrics_addr}/metrics")
    assert status == 200, body[:500]
    assert headers["Content-Type"].startswith("text/plain")
    return body.decode()


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value} of every sample in a Prometheus text exposition."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, f"unparsable sample line {line!r}"
            name, labels, value = match.groups()
            samples[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return samples


def families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def total(samples: dict, name: str, **labels) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 if there is none)."""
    want = set(labels.items())
    return sum(v for (n, l), v in samples.items() if n == name and want <= l)


def expect_deltas(edge, before: dict, deltas: dict) -> dict:
    """Scrapes until every (name, labels) in `deltas` has grown by its delta since `before`, or the time is up;
    returns {what: (expected, got)} for those that have not."""
    def wrong():
        after = parse(scrape_text(edge))
        got = {(name, labels): total(after, name, **dict(labels)) - total(before, name, **dict(labels))
               for name, labels in deltas}
        return {k: (want, got[k]) for k, want in deltas.items() if not math.isclose(got[k], want)}
    return poll(wrong, lambda mismatches: not mismatches)


def key(name: str, **labels) -> tuple:
    """A hashable (name, labels) for expect_deltas."""
    return name, tuple(sorted(labels.items()))


def fresh_file(fakehub, size: int = 200_000) -> tuple[str, int]:
    """(resolve path, size) of an LFS file pushed now, so no cache holds it. Pinned to its commit: `main` may still
    resolve to the commit before the push for a while."""
    name = f"observability-{uuid.uuid4().hex}.bin"
    commit = fakehub.push(GATED, {name: (name * (size // len(name) + 1))[:size]})
    return f"/{GATED}/resolve/{commit}/{name}", size


@pytest.fixture(scope="module")
def traffic(edge, fakehub):
    """Traffic that gives every labelled metric family a series: a miss and a hit, a branch resolved, an API call,
    an upstream 503 and a request hf-edge refuses itself."""
    path, size = fresh_file(fakehub)
    for _ in range(2):
        status, _, body = http("GET", edge.url + path, headers=AUTH)
        assert status == 200 and len(body) == size
    assert http("HEAD", f"{edge.url}/gpt2/resolve/main/config.json")[0] == 200
    assert http("GET", f"{edge.url}/api/models/gpt2")[0] == 200
    failing, _ = fresh_file(fakehub)
    fakehub.fault({"mode": "status", "status": 503, "server": "hub", "path": re.escape(failing.rsplit("/", 1)[1])})
    try:
        http("GET", edge.url + failing, headers=AUTH)
    finally:
        fakehub.clear_faults()
    assert http("GET", f"{edge.url}/gpt2/resolve/main/..%2f..%2fetc/passwd")[0] == 400
    return edge


def test_a_miss_then_a_hit_move_the_counters(edge, fakehub):
    path, size = fresh_file(fakehub)
    url = edge.url + path

    before = parse(scrape_text(edge))
    status, _, body = http("GET", url, headers=AUTH)
    assert status == 200 and len(body) == size

    assert expect_deltas(edge, before, {
        key("hf_edge_cache_lookups_total", result="miss"): 1,
        key("hf_edge_cache_lookups_total", result="hit"): 0,
        key("hf_edge_upstream_received_bytes_total"): size,
        key("hf_edge_sent_bytes_total", source="upstream"): size,
        key("hf_edge_sent_bytes_total", source="cache"): 0,
        key("hf_edge_upstream_requests_total", kind="blob", status="2xx"): 1,
        key("hf_edge_requests_total", route="resolve", method="GET", status="2xx"): 1,
        key("hf_edge_request_duration_seconds_count", route="resolve", cache="miss"): 1,
    }) == {}
    after_miss = parse(scrape_text(edge))
    assert total(after_miss, "hf_edge_store_objects") >= 1
    assert total(after_miss, "hf_edge_store_bytes") >= size

    status, _, body = http("GET", url, headers=AUTH)
    assert status == 200 and len(body) == size

    assert expect_deltas(edge, after_miss, {
        key("hf_edge_cache_lookups_total", result="hit"): 1,
        key("hf_edge_cache_lookups_total", result="miss"): 0,
        key("hf_edge_sent_bytes_total", source="cache"): size,
        key("hf_edge_sent_bytes_total", source="upstream"): 0,
        key("hf_edge_upstream_received_bytes_total"): 0,
        key("hf_edge_upstream_requests_total", kind="blob"): 0,
        key("hf_edge_requests_total", route="resolve", method="GET", status="2xx"): 1,
        key("hf_edge_request_duration_seconds_count", route="resolve", cache="hit"): 1,
    }) == {}


def test_scrape_has_the_specified_families(traffic):
    text = scrape_text(traffic)
    samples = parse(text)
    assert families(text) >= {
        "hf_edge_requests_total", "hf_edge_request_duration_seconds", "hf_edge_cache_lookups_total",
        "hf_edge_sent_bytes_total", "hf_edge_upstream_received_bytes_total", "hf_edge_upstream_requests_total",
        "hf_edge_upstream_request_duration_seconds", "hf_edge_upstream_errors_total", "hf_edge_store_bytes",
        "hf_edge_store_objects", "hf_edge_store_max_bytes", "hf_edge_store_evictions_total",
        "hf_edge_store_evicted_bytes_total", "hf_edge_store_integrity_failures_total",
        "hf_edge_store_write_errors_total", "hf_edge_revision_lookups_total", "hf_edge_build_info",
    }
    assert total(samples, "hf_edge_store_max_bytes") == 10 * 2**30  # cache.max_size in conftest's config
    build = [dict(l) for (n, l), v in samples.items() if n == "hf_edge_build_info" and v == 1]
    assert len(build) == 1 and set(build[0]) == {"version", "commit"}, build
    assert total(samples, "hf_edge_requests_total", route="invalid", status="4xx") >= 1
    assert total(samples, "hf_edge_upstream_errors_total", cause="5xx") >= 1


def test_no_label_carries_a_token_an_address_or_a_path(traffic):
    bounded = {
        "mount": {"/"},  # the configured mounts' prefixes
        "route": {"resolve", "api", "lfs_object", "lfs", "other", "invalid"},
        "method": {"GET", "HEAD", "POST", "PUT", "DELETE", "other"},
        "status": {"1xx", "2xx", "3xx", "4xx", "5xx", "none"},
        "cache": {"hit", "miss", "coalesced", "stale", "bypass", "none"},
        "result": {"hit", "miss", "coalesced", "stale", "bypass", "fresh", "refreshed", "stale_served", "ok", "error",
                   "fetched", "stored", "failed",  # hf_edge_warm_files_total
                   "served", "refused"},  # hf_edge_cluster_peer_requests_total (with ok and failed)
        "direction": {"sent", "received"},
        "health": {"up", "down"},
        "source": {"cache", "upstream"},
        "kind": {"metadata", "blob", "api"},
        "cause": {"connect", "timeout", "reset", "5xx", "429"},
        "state": {"unknown", "reachable", "failing", "unreachable", "offline"},
    }
    for (name, labels), _ in parse(scrape_text(traffic)).items():
        if not name.startswith("hf_edge_") or name == "hf_edge_build_info":
            continue
        for label, value in labels:
            if label != "le":
                assert value in bounded.get(label, ()), f"{name}: {label}={value!r} is not a bounded label value"


def test_promtool_accepts_the_scrape(traffic):
    result = subprocess.run([tool("promtool"), "check", "metrics"], input=scrape_text(traffic).encode(),
                            capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_promtool_accepts_the_config_and_rules():
    promtool = tool("promtool")
    for command in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                    ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *command], cwd=DEPLOY, capture_output=True, timeout=60)
        assert result.returncode == 0, f"promtool {' '.join(command)}:\n{(result.stdout + result.stderr).decode()}"


def prometheus_api(port: int, path: str, **params):
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        status, _, body = http("GET", url, timeout=5)
    except OSError:
        return None  # not listening yet
    return json.loads(body)["data"] if status == 200 else None


def test_prometheus_scrapes_the_edge_and_loads_the_alerts(traffic, tmp_path):
    """The shipped prometheus.yml, pointed at this hf-edge and sped up, in a real Prometheus server."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY / f) for f in config["rule_files"]]
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == "hf-edge"]
    job["static_configs"] = [{"targets": [traffic.metrics_addr]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        def query(q):
            data = prometheus_api(port, "query", query=q)
            return data and data["result"]

        lookups = poll(lambda: query("hf_edge_cache_lookups_total"), lambda r: r or process.poll() is not None,
                       PROMETHEUS_TIMEOUT, interval=0.5)
        assert lookups, f"no hf_edge_cache_lookups_total in Prometheus:\n{log_path.read_text()[-4000:]}"
        assert {s["metric"]["result"] for s in lookups} >= {"hit", "miss"}
        assert all(s["metric"]["job"] == "hf-edge" for s in lookups)
        [up] = query('up{job="hf-edge"}')
        assert up["value"][1] == "1"

        def evaluated_rules():
            data = prometheus_api(port, "rules")
            rules = [r for g in (data or {}).get("groups", []) for r in g["rules"]]
            return rules if rules and all(r["health"] != "unknown" for r in rules) else None

        rules = poll(evaluated_rules, lambda r: r or process.poll() is not None, PROMETHEUS_TIMEOUT, interval=0.5)
        assert rules, f"the alerting rules were not loaded and evaluated:\n{log_path.read_text()[-4000:]}"
        assert {r["name"] for r in rules} == {
            "HfEdgeDown", "HfEdgeUpstreamErrors", "HfEdgeHitRatioCollapse", "HfEdgeStoreNearFull",
            "HfEdgeIntegrityFailure", "HfEdgeStoreWriteErrors", "HfEdgeFillsAbandoned",
            "HfEdgeHubUnreachable", "HfEdgeClusterNodeDown",
        }
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    finally:
        stop(process)


def dashboard_expressions(dashboard: dict) -> list[str]:
    panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_grafana_dashboard_queries_metrics_that_exist(traffic, tmp_path):
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasources = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert datasources == {"${DS_PROMETHEUS}"}

    exprs = dashboard_expressions(dashboard)
    referenced = {re.sub(r"_(bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"hf_edge_\w+", e)}
    assert referenced - families(scrape_text(traffic)) == set()

    # PromQL syntax, checked by promtool as recording rules once Grafana's variables are filled in.
    promql = [e for e in exprs if not e.startswith("label_values(")]
    promql = [re.sub(r"\$\w+", ".*", re.sub(r"\$__\w+", "5m", e)) for e in promql]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(promql)]}]}
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(rules))
    result = subprocess.run([tool("promtool"), "check", "rules", str(tmp_path / "dashboard-rules.yml")],
                            capture_output=True, timeout=60)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_operator_endpoints_answer_json(edge):
    status, headers, body = http("GET", f"http://{edge.metrics_addr}/healthz")
    assert status == 200 and headers["Content-Type"].startswith("application/json"), body
    status, headers, body = http("GET", f"http://{edge.metrics_addr}/readyz")
    assert status == 200 and headers["Content-Type"].startswith("application/json"), body
    assert json.loads(body)["status"] == "ready"


def test_ready_through_a_hub_outage_which_readyz_and_metrics_report(other_edge):
    unreachable = other_edge(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    url = f"http://{unreachable.metrics_addr}/readyz"

    # The Hub is probed in the background: give the first probe time to report.
    status, headers, body = poll(lambda: http("GET", url),
                                 lambda answer: json.loads(answer[2])["hub"]["state"] != "unknown")

    # Serving what is cached through an outage is the cache's job: it stays in the load balancer.
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["status"] == "ready"
    assert json.loads(body)["hub"]["state"] == "unreachable", body
    _, _, metrics = http("GET", f"http://{unreachable.metrics_addr}/metrics")
    assert 'hf_edge_hub_state{mount="/",state="unreachable"} 1' in metrics.decode(), metrics


def test_every_response_has_a_request_id_found_in_the_access_log(edge):
    requests = [
        ("HEAD", f"/{GATED}/resolve/main/config.json", AUTH),
        ("GET", "/api/models/gpt2", {}),
        ("GET", "/gpt2/resolve/main/..%2f..%2fetc/passwd", {}),
        ("GET", "/gpt2/resolve/main/missing.txt", {}),
    ]
    ids = []
    for method, path, headers in requests:
        status, response_headers, _ = http(method, edge.url + path, headers=headers)
        assert response_headers.get("X-Request-Id"), f"{method} {path} ({status}) has no X-Request-Id"
        ids.append(response_headers["X-Request-Id"])
    assert len(set(ids)) == len(ids)

    def logged() -> dict:
        """request id -> the stderr line that carries it."""
        lines = edge.stderr.read_text(errors="replace").splitlines()
        return {request_id: line for line in lines for request_id in ids if request_id in line}

    lines = poll(logged, lambda found: len(found) == len(ids))
    # A response may carry the Hub's own X-Request-Id, passed through: the log must name that one too.
    assert [i for i in ids if i not in lines] == [], "X-Request-Ids clients saw that no access log line carries"
    for line in lines.values():
        try:
            assert isinstance(json.loads(line), dict)
        except ValueError:
            pytest.fail(f"an access log line is not a JSON object: {line!r}")
        assert "hf_approved" not in line, "the access log must not carry tokens"
