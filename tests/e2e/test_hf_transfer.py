"""huggingface_hub 0.36 through hf-edge: with hf_transfer on a cold file, and its `hf` and `huggingface-cli`
download commands.

With HF_HUB_ENABLE_HF_TRANSFER=1, huggingface_hub 0.36 opens a streaming GET of the file, never reads its body,
and has hf_transfer fetch the file in 10 MB ranges in parallel. When the fill of a cold file ran at the pace of
the request that started it, that unread GET stalled the fill and every range waited on it: the download hung
(150 s) until the client gave up. The client is pinned in requirements-hf-transfer.txt and installed into a venv
of its own (target/e2e-venv-hf-transfer, a few seconds from pip's cache), since .venv has the current
huggingface_hub, which no longer uses hf_transfer.
"""

import json
import subprocess
import time
from pathlib import Path

import pytest

from support import REPO_ROOT, Client, ClientError, sha256_file, venv_python

REQUIREMENTS = Path(__file__).with_name("requirements-hf-transfer.txt")
VENV = REPO_ROOT / "target" / "e2e-venv-hf-transfer"
REPO, FILE = "sentence-transformers/all-MiniLM-L6-v2", "model.safetensors"  # 90.9 MB: ten ranges

# Checks that hf_transfer is what downloads, then downloads FILE; result: its sha256.
DOWNLOAD = """
import hashlib
from huggingface_hub import constants, hf_hub_download
assert constants.HF_HUB_ENABLE_HF_TRANSFER
import hf_transfer  # noqa: F401 (present, so huggingface_hub uses it)
path = hf_hub_download(args["repo_id"], args["filename"])
digest = hashlib.sha256()
with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
        digest.update(chunk)
result = {"sha256": digest.hexdigest()}
"""


@pytest.fixture(scope="module")
def old_python() -> Path:
    """The venv's python, (re)created when the requirements changed."""
    return venv_python(VENV, REQUIREMENTS)


class OldClient(Client):
    """A huggingface_hub 0.36 user with hf_transfer turned on."""

    def __init__(self, endpoint: str, home: Path, python: Path):
        super().__init__(endpoint, home)
        self.python = python

    def outcome(self, code: str, token: str | None = None, timeout: float = 90, **args) -> dict:
        env = {**self.env(token), "HF_HUB_ENABLE_HF_TRANSFER": "1"}
        runner = Path(__file__).with_name("client_runner.py")
        try:
            process = subprocess.run([str(self.python), str(runner)], env=env, capture_output=True, timeout=timeout,
                                     input=json.dumps({"code": code, "args": args}).encode())
        except subprocess.TimeoutExpired as error:
            raise ClientError(f"the download hung for {timeout} s") from error
        lines = [l for l in process.stdout.decode().splitlines() if l.startswith("E2E-RESULT ")]
        if not lines:
            raise ClientError(f"client crashed ({process.returncode}):\n{process.stderr.decode()[-4000:]}")
        return json.loads(lines[-1].removeprefix("E2E-RESULT "))


@pytest.mark.edge_only
@pytest.mark.client("hf_transfer")
@pytest.mark.client("huggingface_hub 0.x")
def test_hf_transfer_downloads_a_cold_file_through_an_unread_get(fakehub, other_edge, old_python, tmp_path):
    """The client gets the right bytes, at upstream speed: within twice (plus 3 s of slack for a busy machine)
    the time the same client takes straight from the fake Hub and CDN, where it hung for 150 s; the CDN saw
    one GET for them; and hf-edge answered the client's ranges (206) besides its unread GET (200)."""
    edge = other_edge(fakehub.hub)
    want = fakehub.expected(REPO)["files"][FILE]
    started = time.monotonic()
    direct = OldClient(fakehub.hub, tmp_path / "direct", old_python).run(DOWNLOAD, repo_id=REPO, filename=FILE)
    upstream_seconds = time.monotonic() - started
    fakehub.clear_log()

    started = time.monotonic()
    got = OldClient(edge.url, tmp_path / "edge", old_python).run(DOWNLOAD, repo_id=REPO, filename=FILE)
    edge_seconds = time.monotonic() - started

    print(f"hf_transfer, cold {FILE}: {upstream_seconds:.2f} s from the fake Hub, {edge_seconds:.2f} s through "
          "hf-edge")
    assert got["sha256"] == direct["sha256"] == want["sha256"]
    assert edge_seconds <= 2 * upstream_seconds + 3, (edge_seconds, upstream_seconds)
    cdn = [e for e in fakehub.log() if e["server"] == "cdn" and e["method"] == "GET"]
    assert len(cdn) == 1, "the file crossed the WAN once"
    access = [json.loads(line) for line in edge.stderr.read_text().splitlines() if line.startswith("{")]
    statuses = sorted(a["status"] for a in access if a["method"] == "GET" and a["path"].endswith(FILE))
    assert statuses.count(206) >= 2 and 200 in statuses, statuses


@pytest.mark.client("hf CLI")
@pytest.mark.client("huggingface_hub 0.x")
@pytest.mark.parametrize("command", ["hf", "huggingface-cli"])
def test_download_commands_of_huggingface_hub_0_36(fakehub, endpoint, old_python, tmp_path, command):
    """`hf download` and `huggingface-cli download` (0.36 has both; the current client's `hf` is in
    test_download.py), a whole revision into a local dir."""
    target = tmp_path / "gpt2"
    expected = fakehub.expected("gpt2", "refs/pr/1")
    client = Client(endpoint, tmp_path / "home")
    done = subprocess.run([str(old_python.with_name(command)), "download", "gpt2", "--revision", "refs/pr/1",
                           "--local-dir", str(target)], env=client.env(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()[-4000:]
    got = {p.relative_to(target).as_posix(): sha256_file(p)
           for p in target.rglob("*") if p.is_file() and ".cache" not in p.relative_to(target).parts}
    assert got == {path: f["sha256"] for path, f in expected["files"].items()}
