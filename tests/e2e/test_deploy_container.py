"""deploy/container: the image built by buildah from Debian's packages with no registry (build-offline.sh: the
Containerfile as it is, a runtime base made from the libraries the binary links), hf-edge started from it as the
image says (its user, config, volume and health check command), and the real client downloading through it.

The binary is this run's debug build (build-offline.sh strips it; a release build would add minutes to CI); the
image's size is written to target/test-output/image-size.txt."""

import json
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from snippets import DOWNLOAD
from support import Client, edge_binary, free_port, http, stop, wait_healthy

pytestmark = pytest.mark.edge_only

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "deploy" / "container" / "build-offline.sh"
OUTPUT = REPO / "target" / "test-output"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
NONROOT = 65532
MAX_IMAGE_BYTES = 60e6  # the stripped debug binary is about 32 MB of it, the base under 4 MB
GATED = "fake-org/gated-model"
SITE_TOKEN = "hf_approved"  # the fake Hub approves it for the gated repo


def buildah(*args: str, timeout: float = 120) -> str:
    result = subprocess.run([*BUILDAH, *args], capture_output=True, timeout=timeout)
    assert result.returncode == 0, f"buildah {args}: {result.stderr.decode()[-3000:]}"
    return result.stdout.decode().strip()


def uid_of_descendant(ancestor: int, executable: str) -> int:
    """The real uid of the process running `executable` among `ancestor`'s descendants (buildah's run tree)."""
    parents, found = {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            cmdline = (status.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        pid = int(status.parent.name)
        parents[pid] = int(fields["PPid"])
        if cmdline[0] == executable.encode():
            found[pid] = int(fields["Uid"].split()[0])
    for pid, uid in found.items():
        p = pid
        while p in parents and p != ancestor:
            p = parents[p]
        if p == ancestor:
            return uid
    raise AssertionError(f"no {executable} under pid {ancestor}")


@pytest.fixture(scope="module")
def image():
    tag = f"localhost/hf-edge:e2e-{uuid.uuid4().hex[:8]}"
    built = subprocess.run([str(BUILD), str(edge_binary()), tag], capture_output=True, timeout=600)
    assert built.returncode == 0, built.stderr.decode()[-3000:]
    assert built.stdout.decode().strip() == tag
    yield tag
    buildah("rmi", tag)


def test_the_image_is_small_non_root_with_a_volume_and_a_health_check(image):
    config = json.loads(buildah("inspect", "--type", "image", image))["Docker"]["config"]
    assert config["User"] == f"{NONROOT}:{NONROOT}"
    assert list(config["Volumes"]) == ["/var/cache/hf-edge"]
    assert config["Entrypoint"] == ["/usr/local/bin/hf-edge"]
    assert config["Cmd"] == ["serve", "--config", "/etc/hf-edge/hf-edge.yaml"]
    assert config["Healthcheck"]["Test"] == ["CMD", "/usr/local/bin/hf-edge", "probe",
                                             "http://127.0.0.1:9090/readyz"]
    assert sorted(config["ExposedPorts"]) == ["8080/tcp", "9090/tcp"]
    # The store's directory is the user's (a fresh volume starts with it), its parents root's.
    container = buildah("from", "--name", f"hf-edge-e2e-{uuid.uuid4().hex[:8]}", image)
    try:
        root = Path(buildah("mount", container))
        owners = {d: (root / d).stat().st_uid for d in ("var", "var/cache", "var/cache/hf-edge")}
        assert owners == {"var": 0, "var/cache": 0, "var/cache/hf-edge": NONROOT}, owners
        assert (root / "usr/local/bin/hf-edge").stat().st_uid == 0
        buildah("umount", container)
    finally:
        buildah("rm", container)
    shown = json.loads(buildah("images", "--json", image))[0]["size"]  # e.g. "44.8 MB"
    number, unit = shown.split()
    size = float(number) * {"B": 1, "kB": 1e3, "KB": 1e3, "MB": 1e6, "GB": 1e9}[unit]
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "image-size.txt").write_text(f"{image}: {shown}\n")
    assert size < MAX_IMAGE_BYTES, shown


def test_hf_edge_runs_from_the_image_and_serves_a_download(image, fakehub, tmp_path):
    container = buildah("from", "--name", f"hf-edge-e2e-{uuid.uuid4().hex[:8]}", image)
    secret = tmp_path / "hf-token"
    secret.write_text(SITE_TOKEN + "\n")
    secret.chmod(0o444)  # the image's user reads it, as from a Kubernetes Secret volume
    port, metrics_port = free_port(), free_port()
    env = {  # the image's own config takes these (deploy/container/hf-edge.yaml); loopback, tests run side by side
        "HF_EDGE_LISTEN": f"127.0.0.1:{port}",
        "HF_EDGE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        "HF_EDGE_UPSTREAM": fakehub.hub,
        "HF_EDGE_TOKEN_FILE": "/run/secrets/hf-token",
    }
    run = [*BUILDAH, "run", "--isolation", "chroot", *(a for k, v in env.items() for a in ("--env", f"{k}={v}")),
           "--volume", f"{secret}:/run/secrets/hf-token:ro", container, "--"]
    try:
        stderr_path = tmp_path / "stderr.log"
        with open(stderr_path, "wb") as stderr:
            # The image's entrypoint and command.
            process = subprocess.Popen([*run, "/usr/local/bin/hf-edge", "serve", "--config",
                                        "/etc/hf-edge/hf-edge.yaml"], stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_healthy(process, f"http://127.0.0.1:{metrics_port}/healthz", stderr_path)
            # The HEALTHCHECK's command, inside the image, against the port this run listens on.
            health = subprocess.run([*run, "/usr/local/bin/hf-edge", "probe",
                                     f"http://127.0.0.1:{metrics_port}/readyz"], capture_output=True, timeout=60)
            assert health.returncode == 0, health.stderr.decode()
            # A client without a token gets the gated file: only the mounted site token can have signed it.
            client = Client(f"http://127.0.0.1:{port}", tmp_path / "client")
            got = client.run(DOWNLOAD, repo_id=GATED, filenames=["config.json"])
            assert got["config.json"]["sha256"] == fakehub.expected(GATED)["files"]["config.json"]["sha256"]
            # The store, on the image's volume, keeps it: a second client's download is a hit.
            Client(f"http://127.0.0.1:{port}", tmp_path / "client-2").run(DOWNLOAD, repo_id=GATED,
                                                                           filenames=["config.json"])
            status = json.loads(http("GET", f"http://127.0.0.1:{port}/status.json")[2])
            assert status["traffic"]["lookups"]["hit"] == 1, status["traffic"]
            assert status["store"]["dir"] == "/var/cache/hf-edge" and status["store"]["objects"] == 1
            # It runs as the image's user, not root.
            assert uid_of_descendant(process.pid, "/usr/local/bin/hf-edge") == NONROOT
        finally:
            stop(process, signal.SIGTERM)  # buildah ends the process it runs
        unhealthy = subprocess.run([*run, "/usr/local/bin/hf-edge", "probe",
                                    f"http://127.0.0.1:{metrics_port}/readyz"], capture_output=True, timeout=60)
        assert unhealthy.returncode == 1, "the health check fails once hf-edge is gone"
    finally:
        buildah("rm", container)
