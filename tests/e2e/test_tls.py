"""TLS upstream: the default upstream is https://huggingface.co, so hf-edge must download over verified TLS from the
Hub and its CDN, and refuse, clearly, what does not verify. Here the fake Hub, its CDN and its third host speak
HTTPS with certificates from a CA made for the run (tlsca.py), which hf-edge is told to trust either through
SSL_CERT_FILE (replacing the system's authorities) or upstream.ca_file (added to them).

With E2E_TARGET=hub the real client talks HTTPS to the fake itself, trusting the CA through SSL_CERT_FILE: the
TLS fake is checked against the real client first."""

import json
import subprocess

import pytest

from snippets import FETCH, SNAPSHOT_AT
from support import TARGET, Client, edge_binary, edge_config, free_port, http
from tlsca import ServerCert

REPO = "gpt2"
REGULAR, LFS = "config.json", "pytorch_model.bin"

# How hf-edge is told to trust the run's CA: (environment, upstream config keys)
TRUSTS = {
    "SSL_CERT_FILE": lambda pki: ({"SSL_CERT_FILE": str(pki.ca.cert)}, {}),
    "upstream.ca_file": lambda pki: ({}, {"ca_file": str(pki.ca.cert)}),
    # SSL_CERT_FILE stands in for the system's authorities (here the rogue CA), which ca_file adds to, not replaces.
    "system's CAs kept besides upstream.ca_file": lambda pki: ({"SSL_CERT_FILE": str(pki.rogue.cert)},
                                                               {"ca_file": str(pki.ca.cert)}),
}
# The certificate the fake serves for each way of trusting: for the last, one only the "system's" CA signed.
SERVED = {"system's CAs kept besides upstream.ca_file": lambda pki: pki.untrusted}


def tls_fakehub(other_fakehub, cert: ServerCert):
    return other_fakehub("--tls-cert", str(cert.cert), "--tls-key", str(cert.key))


def tls_edge(other_edge, hub, pki, trust: str):
    env, upstream = TRUSTS[trust](pki)
    return other_edge(hub.hub, env=env, upstream=upstream)


@pytest.mark.parametrize("trust", TRUSTS)
def test_snapshot_download_from_a_tls_hub_and_cdn(other_fakehub, other_edge, pki, tmp_path, trust):
    """The real client's snapshot_download (repo info, tree, metadata HEADs, regular files from the Hub, LFS
    files from the CDN) through hf-edge, every upstream request over TLS: right commit, right bytes."""
    hub = tls_fakehub(other_fakehub, SERVED.get(trust, lambda pki: pki.good)(pki))
    assert hub.hub.startswith("https://") and hub.cdn.startswith("https://")
    if TARGET == "hub":
        if trust != "SSL_CERT_FILE":
            pytest.skip("how hf-edge is told to trust a CA means nothing to a client talking to the Hub itself")
        client = Client(hub.hub, tmp_path, env={"SSL_CERT_FILE": str(pki.ca.cert)})
    else:
        client = Client(tls_edge(other_edge, hub, pki, trust).url, tmp_path)
    want = hub.expected(REPO)

    got = client.run(SNAPSHOT_AT, repo_id=REPO)

    assert got == {"commit": want["commit"], "files": {p: f["sha256"] for p, f in want["files"].items()}}
    log = hub.log()
    assert {(e["server"], e["tls"]) for e in log} == {("hub", True), ("cdn", True)}
    assert any(e["server"] == "cdn" and e["method"] == "GET" and e["status"] == 200 for e in log)


# name: (the certificate the fake serves, what the error says about it, how hf-edge trusts the run's CA)
CERTIFICATE_FAILURES = {
    "from an untrusted CA": (lambda pki: pki.untrusted, "invalid peer certificate: UnknownIssuer", "SSL_CERT_FILE"),
    "for another host name": (lambda pki: pki.wrong_name, 'certificate not valid for name "127.0.0.1"',
                              "upstream.ca_file"),
}


@pytest.mark.edge_only
@pytest.mark.parametrize("failure", CERTIFICATE_FAILURES)
def test_a_certificate_that_does_not_verify_is_a_clear_502(other_fakehub, other_edge, pki, tmp_path, failure):
    """The Hub's certificate does not verify: every request that needs the Hub gets a 502 (never a 4xx the client
    would take as final), whose JSON error names the TLS failure; no HTTP request reaches the Hub. The real
    client takes it as a connection problem: it retries, then raises LocalEntryNotFoundError from the 502."""
    cert, reason, trust = CERTIFICATE_FAILURES[failure]
    hub = tls_fakehub(other_fakehub, cert(pki))
    edge = tls_edge(other_edge, hub, pki, trust)

    assert http("HEAD", f"{edge.url}/{REPO}/resolve/main/{LFS}")[0] == 502
    for path in (f"/{REPO}/resolve/main/{REGULAR}", f"/{REPO}/resolve/main/{LFS}",
                 f"/api/models/{REPO}/revision/main", f"/api/models/{REPO}/tree/main"):
        status, headers, body = http("GET", edge.url + path)
        assert status == 502 and headers["Content-Type"].startswith("application/json"), (path, status, body)
        error = json.loads(body)["error"]
        assert "TLSHandshakeFailure" in error and reason in error, (path, error)
    got = Client(edge.url, tmp_path).run(FETCH, repo_id=REPO, filenames=[LFS])[LFS]

    assert (got["error"], got["cause"], got["status"]) == ("LocalEntryNotFoundError", "HfHubHTTPError", 502)
    assert hub.log() == [], "no request got through"


@pytest.mark.edge_only
def test_a_tls_hub_is_not_trusted_by_default(other_fakehub, other_edge, pki):
    """Without SSL_CERT_FILE or upstream.ca_file, the run's CA is no authority of hf-edge's."""
    hub = tls_fakehub(other_fakehub, pki.good)
    edge = other_edge(hub.hub)

    status, _, body = http("GET", f"{edge.url}/{REPO}/resolve/main/{REGULAR}")

    assert status == 502 and "UnknownIssuer" in json.loads(body)["error"]
    assert hub.log() == []


def test_the_tls_fake_serves_only_tls_and_its_certificate_verifies(other_fakehub, pki):
    hub = tls_fakehub(other_fakehub, pki.good)
    with pytest.raises(OSError):
        http("GET", hub.hub.replace("https://", "http://") + f"/api/models/{REPO}", timeout=5)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        http("GET", f"{hub.hub}/api/models/{REPO}", timeout=5)  # the run's CA is not the system's


@pytest.mark.edge_only
def test_check_config_names_a_bad_ca_file(pki, tmp_path):
    """upstream.ca_file is read when the config is: `hf-edge check-config` fails (exit 2) with one line that
    names the key and what is wrong, before anything is served."""
    (tmp_path / "empty.pem").write_text("no PEM here\n")
    cases = {
        str(pki.ca.cert): None,
        str(tmp_path / "missing.pem"): "missing.pem: No such file",
        str(tmp_path / "empty.pem"): "no certificate",
        str(pki.good.key): "PRIVATE KEY",  # a key where the CA bundle belongs
    }
    for ca_file, error in cases.items():
        config = tmp_path / "config.yaml"
        config.write_text(edge_config("https://127.0.0.1:1", tmp_path, free_port(), free_port(),
                                      upstream={"ca_file": ca_file}))

        done = subprocess.run([str(edge_binary()), "check-config", str(config)], capture_output=True, timeout=30)

        stderr = done.stderr.decode()
        if error is None:
            assert done.returncode == 0, stderr
        else:
            assert done.returncode == 2 and "upstream.ca_file: " in stderr and error in stderr, (ca_file, stderr)
            assert len(stderr.strip().splitlines()) == 1, stderr
