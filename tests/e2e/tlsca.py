"""A certificate authority made for one test run with the `openssl` command, and the server certificates the fake
Hub serves with it: one for its three loopback hosts, one for another name, and one from an authority nobody
trusts. Names are IP addresses (SANs), since the loopback hosts have no DNS names of their own."""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")  # the fake's hub, CDN and third host
DAYS = "2"


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary, "the openssl command is missing (scripts/setup.sh installs it)"
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, timeout=60)
    assert done.returncode == 0, f"openssl {' '.join(args)}:\n{done.stderr.decode()}"


@dataclass(frozen=True)
class ServerCert:
    cert: Path  # PEM: the server certificate
    key: Path  # PEM: its private key


@dataclass(frozen=True)
class CA:
    dir: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.dir / f"{self.name}.pem"

    @property
    def key(self) -> Path:
        return self.dir / f"{self.name}.key"

    @classmethod
    def create(cls, directory: Path, name: str) -> "CA":
        ca = cls(directory, name)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", ca.key.name, "-out", ca.cert.name, "-days", DAYS, "-subj", f"/CN=hf-edge e2e {name}",
                "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                cwd=directory)
        return ca

    def issue(self, name: str, sans: list[str]) -> ServerCert:
        """A server certificate for `sans` ("IP:1.2.3.4", "DNS:host"), signed by this CA."""
        cert, key, csr, ext = (self.dir / f"{name}{suffix}" for suffix in (".pem", ".key", ".csr", ".ext"))
        ext.write_text(f"subjectAltName={','.join(sans)}\nbasicConstraints=critical,CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key.name,
                "-out", csr.name, "-subj", f"/CN={name}", cwd=self.dir)
        openssl("x509", "-req", "-in", csr.name, "-CA", self.cert.name, "-CAkey", self.key.name,
                "-CAcreateserial", "-out", cert.name, "-days", DAYS, "-extfile", ext.name, cwd=self.dir)
        return ServerCert(cert, key)


@dataclass(frozen=True)
class TestPKI:
    ca: CA  # what the tests tell hf-edge to trust
    good: ServerCert  # for the fake's three hosts, from `ca`
    wrong_name: ServerCert  # from `ca`, for another address and name only
    rogue: CA  # another authority, trusted only where a test says so
    untrusted: ServerCert  # for the fake's three hosts, from `rogue`

    @classmethod
    def create(cls, directory: Path) -> "TestPKI":
        ca, rogue = CA.create(directory, "test-ca"), CA.create(directory, "rogue-ca")
        sans = [f"IP:{host}" for host in HOSTS]
        return cls(ca, ca.issue("fakehub", sans), ca.issue("elsewhere", ["IP:127.0.0.9", "DNS:elsewhere.example"]),
                   rogue, rogue.issue("fakehub-rogue", sans))
