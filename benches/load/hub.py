#!/usr/bin/env python3
"""A minimal Hub for the load benchmark (stdlib only).

It answers `/resolve` the way huggingface.co does, for the files in a manifest written by
`run.py`; the bytes of LFS files come from a separate "CDN" (nginx serving a directory):

* LFS file: `302` to an absolute, signed-looking CDN URL, with `X-Repo-Commit`,
  `X-Linked-Etag: "<sha256>"`, `X-Linked-Size` and `ETag`.
* Regular file (config.json): relative `307` to `/api/resolve-cache/...`, which answers `200`
  with `ETag: "<git oid>"` and the bytes (Range supported).

Every request is appended to `--log` as `METHOD PATH STATUS` (one line, flushed), so the
benchmark can count what reached the Hub. Loopback only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit


class Hub:
    def __init__(self, manifest: dict, cdn: str, log_path: Path | None):
        self.repo = manifest["repo"]
        self.commit = manifest["commit"]
        self.files = manifest["files"]
        self.root = Path(manifest["root"])
        self.cdn = cdn.rstrip("/")
        self.log = open(log_path, "a", buffering=1) if log_path else None
        self.lock = threading.Lock()

    def record(self, method: str, path: str, status: int) -> None:
        if self.log:
            with self.lock:
                self.log.write(f"{method} {path} {status}\n")

    def signed(self, cdn_path: str) -> str:
        expires = int(time.time()) + 3600
        sig = hashlib.sha256(f"{cdn_path}:{expires}".encode()).hexdigest()[:32]
        return f"{self.cdn}{cdn_path}?Expires={expires}&Signature={sig}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bench-hub/1"
    hub: Hub

    def log_message(self, format, *args):  # noqa: A002 - silence stderr logging
        pass

    def do_HEAD(self):
        self.handle_any(head=True)

    def do_GET(self):
        self.handle_any(head=False)

    def send(self, status: int, headers: list[tuple[str, str]], body: bytes, head: bool) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)
        self.hub.record(self.command, self.path, status)

    def error(self, status: int, msg: str, head: bool, code: str | None = None) -> None:
        headers = [("Content-Type", "application/json")]
        if code:
            headers.append(("X-Error-Code", code))
        self.send(status, headers, json.dumps({"error": msg}).encode(), head)

    def handle_any(self, head: bool) -> None:
        hub = self.hub
        path = urlsplit(self.path).path
        m = re.fullmatch(r"/api/resolve-cache/models/(.+)/([0-9a-f]{40})/(.+)", path)
        if m:
            return self.resolve_cache(unquote(m[1]), m[2], unquote(m[3]), head)
        m = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", path)
        if not m:
            return self.error(404, "Sorry, we can't find the page you are looking for.", head)
        repo, rev, name = unquote(m[1]), unquote(m[2]), unquote(m[3])
        if repo != hub.repo:
            return self.error(404, "Repository not found", head, "RepoNotFound")
        if rev not in ("main", hub.commit):
            return self.error(404, "Revision not found", head, "RevisionNotFound")
        f = hub.files.get(name)
        if f is None:
            return self.error(404, "Entry not found", head, "EntryNotFound")
        headers = [("X-Repo-Commit", hub.commit), ("Content-Type", "text/plain; charset=utf-8")]
        if f["lfs"]:
            loc = hub.signed(f["cdn_path"])
            headers += [
                ("X-Linked-Etag", f'"{f["sha256"]}"'),
                ("X-Linked-Size", str(f["size"])),
                ("ETag", f'"{f["sha256"]}"'),
                ("Location", loc),
                ("Accept-Ranges", "bytes"),
            ]
            return self.send(302, headers, f"Found. Redirecting to {loc}".encode(), head)
        loc = (f"/api/resolve-cache/models/{quote(hub.repo)}/{hub.commit}/{quote(name)}"
               f"?etag=%22{f['oid']}%22")
        headers += [("ETag", f'"{f["oid"]}"'), ("Location", loc)]
        return self.send(307, headers, f"Temporary Redirect. Redirecting to {loc}".encode(), head)

    def resolve_cache(self, repo: str, commit: str, name: str, head: bool) -> None:
        hub = self.hub
        f = hub.files.get(name)
        if repo != hub.repo or commit != hub.commit or f is None or f["lfs"]:
            return self.error(404, "Entry not found", head, "EntryNotFound")
        data = (hub.root / f["disk"]).read_bytes()
        headers = [
            ("ETag", f'"{f["oid"]}"'),
            ("X-Repo-Commit", hub.commit),
            ("Content-Type", "application/json"),
            ("Accept-Ranges", "bytes"),
            ("Content-Disposition", f'inline; filename="{name}"'),
        ]
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng or "")
        if m and (m[1] or m[2]):
            size = len(data)
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            else:
                start, end = max(size - int(m[2]), 0), size - 1
            if start >= size:
                return self.send(416, [("Content-Range", f"bytes */{size}")], b"", head)
            headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
            return self.send(206, headers, data[start:end + 1], head)
        return self.send(200, headers, data, head)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", required=True, help="127.x.y.z:port (loopback only)")
    ap.add_argument("--cdn", required=True, help="CDN origin, e.g. http://127.0.0.2:18081")
    ap.add_argument("--manifest", required=True, type=Path)
    ap.add_argument("--log", type=Path)
    a = ap.parse_args(argv)
    host, _, port = a.listen.rpartition(":")
    if not host.startswith("127."):
        sys.exit("hub.py: loopback addresses only")
    Handler.hub = Hub(json.loads(a.manifest.read_text()), a.cdn, a.log)
    ThreadingHTTPServer.daemon_threads = True
    # socketserver's default listen backlog is 5: concurrent cold clients would overflow it and
    # wait a 1 s SYN retransmit, which the real Hub does not make them do.
    ThreadingHTTPServer.request_queue_size = 1024
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"bench hub on http://{a.listen}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
