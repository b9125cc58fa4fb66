"""deploy/hf-edge.service: verified and rated by systemd-analyze, and its commands run as the unit runs them.

No systemd runs as PID 1 here, so the unit cannot be started by systemctl. What the unit's sandbox does to hf-edge
is therefore played by hand, the parts that decide whether it starts: its ExecStartPre and ExecStart command lines
exactly as written, run as an unprivileged user (DynamicUser=), with $CREDENTIALS_DIRECTORY holding that user's own
copies of the root-only token files (LoadCredential=) and $CACHE_DIRECTORY its own store directory
(CacheDirectory=), reading the shipped deploy/systemd/hf-edge.yaml."""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from snippets import DOWNLOAD
from support import Client, edge_binary, free_port, stop, wait_healthy

pytestmark = pytest.mark.edge_only

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNIT = DEPLOY / "hf-edge.service"
CONFIG = DEPLOY / "systemd" / "hf-edge.yaml"
NOBODY = 65534  # the unprivileged user standing in for the unit's dynamic user
EXPOSURE_THRESHOLD = 20  # systemd-analyze's 0-100 scale: "2.0", well inside its "OK" band
GATED = "fake-org/gated-model"
SITE_TOKEN = "hf_approved"  # the fake Hub approves it for the gated repo


def analyze(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is missing: scripts/setup.sh installs Debian's systemd package"
    return subprocess.run([tool, *args], capture_output=True, timeout=60)


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


@pytest.fixture
def unit_root(tmp_path):
    """A file system root for systemd-analyze with the unit installed as the README says, and the system's units
    (systemd-analyze --root resolves the dependencies the unit names, sysinit.target and the like, inside it)."""
    root = tmp_path / "root"
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copy(edge_binary(), root / "usr/local/bin/hf-edge")
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")  # ExecReload=
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/hf-edge.service")
    return root


def test_the_unit_verifies_and_a_broken_copy_does_not(unit_root):
    clean = analyze("verify", "--man=no", f"--root={unit_root}", "hf-edge.service")
    assert clean.returncode == 0 and not clean.stdout and not clean.stderr, clean

    # The check can fail: a misspelt directive is reported.
    unit = unit_root / "etc/systemd/system/hf-edge.service"
    unit.write_text(UNIT.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    broken = analyze("verify", "--man=no", f"--root={unit_root}", "hf-edge.service")
    assert b"ProtectSytem" in broken.stderr, broken


def test_the_unit_is_hardened(unit_root):
    review = analyze("security", "--offline=true", f"--root={unit_root}", f"--threshold={EXPOSURE_THRESHOLD}",
                     "hf-edge.service")
    report = review.stdout.decode()
    assert review.returncode == 0, report + review.stderr.decode()
    level = re.search(r"Overall exposure level for hf-edge\.service: (\d+\.\d+)", report)
    assert level and float(level[1]) * 10 <= EXPOSURE_THRESHOLD, report
    for setting in ["NoNewPrivileges=", "ProtectSystem=", "ProtectHome=", "PrivateTmp=", "PrivateDevices=",
                    "CapabilityBoundingSet=~CAP_SYS_ADMIN", "SystemCallFilter=~@privileged", "MemoryDenyWriteExecute=",
                    "RestrictNamespaces=~user"]:
        line = next((l for l in report.splitlines() if setting in l), None)
        assert line is not None and line.lstrip().startswith("✓"), f"{setting}: {line}"

    # The rating can fail: the same unit without its hardening is over the threshold.
    settings = unit_settings(UNIT.read_text())
    bare = [l for l in UNIT.read_text().splitlines()
            if l.split("=", 1)[0] not in settings or l.split("=", 1)[0] in
            ("Type", "ExecStartPre", "ExecStart", "DynamicUser", "CacheDirectory", "LoadCredential")]
    (unit_root / "etc/systemd/system/hf-edge.service").write_text("\n".join(bare) + "\n")
    exposed = analyze("security", "--offline=true", f"--root={unit_root}", f"--threshold={EXPOSURE_THRESHOLD}",
                      "hf-edge.service")
    assert exposed.returncode != 0, exposed.stdout.decode()


def test_the_units_commands_run_as_written(fakehub, tmp_path):
    settings = unit_settings(UNIT.read_text())
    assert settings["DynamicUser"] == ["yes"]
    credentials = dict(c.split(":", 1) for c in settings["LoadCredential"])
    assert settings["CacheDirectory"] == ["hf-edge"]
    (pre,), (start,) = settings["ExecStartPre"], settings["ExecStart"]

    # Root's side: /etc/hf-edge as the README has it (the tokens root-only), the binary in /usr/local/bin.
    base = Path(tempfile.mkdtemp(prefix="hf-edge-unit-"))  # pytest's tmp dirs are root-only; the user needs in
    try:
        base.chmod(0o755)
        etc, bin_dir = base / "etc/hf-edge", base / "usr/local/bin"
        etc.mkdir(parents=True)
        bin_dir.mkdir(parents=True)
        shutil.copy(edge_binary(), bin_dir / "hf-edge")
        shutil.copy(CONFIG, etc / "hf-edge.yaml")
        tokens = {"/etc/hf-edge/hf-token": SITE_TOKEN + "\n", "/etc/hf-edge/admin-token": "s3cret-admin\n"}
        assert set(credentials.values()) == set(tokens), credentials
        for path, value in tokens.items():
            real = base / path.lstrip("/")
            real.write_text(value)
            real.chmod(0o600)
        # What systemd does before the first command: the user's own copies of the credentials, its cache dir.
        creds = base / "run/credentials/hf-edge.service"
        creds.mkdir(parents=True)
        for name, path in credentials.items():
            shutil.copy(base / path.lstrip("/"), creds / name)
            os.chown(creds / name, NOBODY, NOBODY)
            (creds / name).chmod(0o400)
        cache = base / "var/cache" / settings["CacheDirectory"][0]
        cache.mkdir(parents=True)
        os.chown(cache, NOBODY, NOBODY)
        cache.chmod(0o700)
        env = {"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(creds), "CACHE_DIRECTORY": str(cache),
               **dict(e.split("=", 1) for e in settings.get("Environment", []))}

        def as_unit_user(command: str) -> list[str]:
            argv = [a.replace("/usr/local/bin/", f"{bin_dir}/").replace("/etc/hf-edge/", f"{etc}/")
                    for a in command.split()]
            return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv]

        # As the unit's user the check passes through the credentials, and not with the token files themselves.
        check = subprocess.run(as_unit_user(pre), env=env, capture_output=True, timeout=60)
        assert check.returncode == 0, check.stderr.decode()
        direct = (etc / "hf-edge.yaml").read_text().replace("${CREDENTIALS_DIRECTORY}", str(etc))
        (etc / "direct.yaml").write_text(direct)
        refused = subprocess.run(as_unit_user(pre.replace("hf-edge.yaml", "direct.yaml")), env=env,
                                 capture_output=True, timeout=60)
        assert refused.returncode == 2 and b"upstream.token_file" in refused.stderr, refused

        # The service itself, on the shipped config with only where it listens and which Hub it asks changed
        # (tests run side by side on loopback), serving a gated file to a client without a token: only the
        # site token from the credential can have signed it.
        config = yaml.safe_load((etc / "hf-edge.yaml").read_text())
        port, metrics_port = free_port(), free_port()
        config["listen"] = f"127.0.0.1:{port}"
        config["metrics"]["listen"] = f"127.0.0.1:{metrics_port}"
        config["upstream"] |= {"endpoint": fakehub.hub, "cdn_hosts": ["127.0.0.2"]}
        (etc / "hf-edge.yaml").write_text(json.dumps(config))
        stderr_path = base / "stderr.log"
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(as_unit_user(start), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_healthy(process, f"http://127.0.0.1:{metrics_port}/healthz", stderr_path)
            client = Client(f"http://127.0.0.1:{port}", tmp_path / "client")
            got = client.run(DOWNLOAD, repo_id=GATED, filenames=["config.json"])
            expected = fakehub.expected(GATED)["files"]["config.json"]["sha256"]
            assert got["config.json"]["sha256"] == expected
        finally:
            stop(process, signal.SIGINT)
        blobs = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_uid == NOBODY]
        assert blobs, "the store was written by the unit's user, in CACHE_DIRECTORY"
    finally:
        shutil.rmtree(base, ignore_errors=True)
