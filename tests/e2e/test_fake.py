"""The fake Hub is at least as strict as the real one: what it refuses, and how it answers, checked with raw
requests straight to it (these run in both E2E_TARGET modes). Each strictness is what makes a test through
hf-edge able to fail: hf-edge sends the Hub's own Host, asks for identity bodies where it needs byte counts or
rewrites JSON, and hands signed CDN URLs on byte for byte."""

import gzip
import json
import socket
import time

import pytest

from support import decoded, http

GPT2 = "gpt2"


def signed_url(fakehub, filename: str = "pytorch_model.bin") -> str:
    status, headers, _ = http("HEAD", f"{fakehub.hub}/{GPT2}/resolve/main/{filename}")
    assert status == 302, status
    return headers["Location"]


def test_the_hub_answers_421_to_another_host(fakehub):
    url = f"{fakehub.hub}/api/models/{GPT2}"
    assert http("GET", url)[0] == 200
    for host in ("huggingface.co", fakehub.cdn.split("://")[1], "127.0.0.1"):
        status, _, body = http("GET", url, headers={"Host": host})
        assert status == 421, (host, status, body[:200])


def test_the_cdn_answers_404_to_another_host(fakehub):
    url = signed_url(fakehub)
    assert http("GET", url, headers={"Range": "bytes=0-9"})[0] == 206
    status, _, _ = http("GET", url, headers={"Host": fakehub.hub.split("://")[1], "Range": "bytes=0-9"})
    assert status == 404


def test_json_and_text_are_gzipped_when_the_client_accepts_it(fakehub):
    url = f"{fakehub.hub}/api/models/{GPT2}/tree/main"
    status, headers, body = http("GET", url, headers={"Accept-Encoding": "gzip, deflate"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) == len(body)
    listing = json.loads(gzip.decompress(body))
    assert {e["path"] for e in listing} >= {"config.json", "pytorch_model.bin"}

    for accept in ({}, {"Accept-Encoding": "identity"}, {"Accept-Encoding": "gzip;q=0, identity"}):
        status, headers, body = http("GET", url, headers=accept)
        assert status == 200 and "Content-Encoding" not in headers, accept
        assert json.loads(body) == listing


def test_a_regular_file_is_gzipped_and_its_content_length_is_then_not_the_files(fakehub):
    """What a proxy that forwarded the client's Accept-Encoding would take as the file: the compressed bytes."""
    expected = fakehub.expected(GPT2)["files"]["config.json"]
    status, headers, _ = http("GET", f"{fakehub.hub}/{GPT2}/resolve/main/config.json")
    assert status == 307
    url = fakehub.hub + headers["Location"]

    status, headers, body = http("GET", url, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert int(headers["Content-Length"]) != expected["size"]
    status, head_headers, _ = http("HEAD", url, headers={"Accept-Encoding": "gzip"})
    assert head_headers["Content-Length"] == headers["Content-Length"], "a HEAD announces what a GET sends"
    plain = decoded(headers, body)
    assert len(plain) == expected["size"]

    status, headers, body = http("GET", url, headers={"Accept-Encoding": "identity"})
    assert status == 200 and "Content-Encoding" not in headers and body == plain
    status, headers, body = http("GET", url, headers={"Accept-Encoding": "gzip", "Range": "bytes=0-3"})
    assert status == 206 and "Content-Encoding" not in headers and body == plain[:4]


def test_signed_cdn_urls_are_percent_encoded_and_checked_byte_for_byte(fakehub):
    url = signed_url(fakehub)
    query = url.split("?", 1)[1]
    assert all(encoded in query for encoded in ("%2F", "%2B", "%3D", "%3B", "+")), query
    assert http("GET", url, headers={"Range": "bytes=0-9"})[0] == 206

    first, second = query.split("&", 1)
    variants = {
        "slash decoded": url.replace("%2F", "/"),
        "plus decoded": url.replace("%2B", "+"),
        "equals decoded": url.replace("%3D", "="),
        "lower-case escapes": url.replace("%2F", "%2f").replace("%3D", "%3d"),
        "space as %20": url.replace("+", "%20"),
        "reordered": url.split("?")[0] + "?" + second + "&" + first,
        "signature dropped": url.split("&Signature=")[0] + "&Key-Pair-Id=" + url.split("&Key-Pair-Id=")[1],
    }
    for name, variant in variants.items():
        assert variant != url, name
        status, _, body = http("GET", variant, headers={"Range": "bytes=0-9"})
        assert status == 403, (name, status, body[:200])


def test_a_blackholed_listener_drops_connection_attempts(other_fakehub):
    """Not a refused port: the connection attempt gets no answer at all, until the fault is cleared."""
    hub = other_fakehub()
    host, port = hub.hub.split("://")[1].rsplit(":", 1)
    cdn_url = signed_url(hub)
    hub.fault({"mode": "blackhole", "server": "hub"})

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection((host, int(port)), timeout=1.0)
    assert time.monotonic() - started >= 0.9, "the attempt must hang, not be refused"
    assert http("GET", cdn_url, headers={"Range": "bytes=0-9"})[0] == 206, "the CDN is not blackholed"

    hub.clear_faults()
    assert http("GET", f"{hub.hub}/api/models/{GPT2}")[0] == 200


def test_the_redirect_fault_points_at_a_third_host_that_would_serve_the_file(fakehub):
    """So a proxy that refuses to follow it refuses something that would have worked."""
    fakehub.clear_log()
    fakehub.fault({"mode": "redirect", "server": "hub", "path": "/resolve/", "times": 2})
    try:
        status, headers, _ = http("HEAD", f"{fakehub.hub}/{GPT2}/resolve/main/pytorch_model.bin")
        assert status == 302 and headers["X-Repo-Commit"] == fakehub.expected(GPT2)["commit"]
        third = headers["Location"].split("/blobs/")[0]
        assert third == fakehub.third and third not in (fakehub.hub, fakehub.cdn)
        assert http("GET", headers["Location"], headers={"Range": "bytes=0-9"})[0] == 206

        status, headers, _ = http("HEAD", f"{fakehub.hub}/{GPT2}/resolve/main/config.json")
        assert status == 307 and headers["Location"].startswith(third + "/api/resolve-cache/")
        assert http("GET", headers["Location"])[0] == 200
    finally:
        fakehub.clear_faults()
    assert {e["server"] for e in fakehub.log()} == {"hub", "third"}


def test_the_corrupt_fault_keeps_the_length_and_changes_the_content(fakehub):
    url = signed_url(fakehub)
    status, _, good = http("GET", url)
    fakehub.fault({"mode": "corrupt", "server": "cdn", "times": 1})
    status, headers, bad = http("GET", url)
    assert status == 200 and int(headers["Content-Length"]) == len(bad) == len(good) and bad != good


def test_model_files_are_hashed_once_per_run(fakehub, other_fakehub, hash_cache, model_dir, tmp_path):
    """Every fake of a run reads the big model files' sha256 from the run's hash cache while their size and mtime
    are unchanged: a fake given a cache that lies about model.safetensors believes it."""
    entries = json.loads(hash_cache.read_text())
    weights = str((model_dir / "model.safetensors").resolve())
    assert weights in entries, "the session's fake filled the cache"
    lying = tmp_path / "hashes.json"
    lying.write_text(json.dumps({**entries, weights: {**entries[weights], "sha256": "0" * 64}}))

    hub = other_fakehub("--hash-cache", str(lying))

    files = hub.expected("sentence-transformers/all-MiniLM-L6-v2")["files"]
    assert files["model.safetensors"]["sha256"] == "0" * 64
