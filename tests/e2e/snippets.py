"""Client code shared by several tests; each runs in a fresh interpreter (see client_runner.py)."""

# Downloads args["filenames"] one by one; result maps each name to the sha256 of the file the client cached
# and the commit of the snapshot folder it was cached under (what the client took from X-Repo-Commit).
DOWNLOAD = """
import hashlib, re
from huggingface_hub import hf_hub_download
result = {}
for name in args["filenames"]:
    path = hf_hub_download(args["repo_id"], name, revision=args.get("revision"), repo_type=args.get("repo_type"))
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    result[name] = {"sha256": digest, "commit": re.search(r"snapshots/([0-9a-f]{40})/", path)[1]}
"""

# snapshot_download of args["repo_id"]; result maps every file of the snapshot to its sha256.
SNAPSHOT = """
import hashlib, os
from huggingface_hub import snapshot_download
folder = snapshot_download(args["repo_id"], repo_type=args.get("repo_type"), revision=args.get("revision"))
result = {}
for root, _, names in os.walk(folder):
    for name in names:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
            result[os.path.relpath(path, folder).replace(os.sep, "/")] = hashlib.sha256(f.read()).hexdigest()
"""

# SNAPSHOT, and the commit of the snapshot folder (what the client took from the revision it asked for).
SNAPSHOT_AT = """
import hashlib, os
from huggingface_hub import snapshot_download
folder = snapshot_download(args["repo_id"], repo_type=args.get("repo_type"), revision=args.get("revision"))
result = {"commit": os.path.basename(os.path.normpath(folder)), "files": {}}
for root, _, names in os.walk(folder):
    for name in names:
        path = os.path.join(root, name)
        with open(path, "rb") as f:
            result["files"][os.path.relpath(path, folder).replace(os.sep, "/")] = hashlib.sha256(f.read()).hexdigest()
"""

# One hf_hub_download per name in args["filenames"], never raising. For each: the file's sha256 and snapshot
# commit, or the exception's class with the class and HTTP status of its cause; the responses the client got
# (method, path, status, Warning header, seconds until their headers came); the backoff waits it chose.
FETCH = """
import hashlib, re, time, types
from huggingface_hub import hf_hub_download, set_client_factory
from huggingface_hub.utils import _http

responses, waits, sent = [], [], []

def watched_client():
    client = _http.default_client_factory()
    client.event_hooks["request"].append(lambda request: sent.append(time.monotonic()))
    client.event_hooks["response"].append(lambda response: responses.append({
        "method": response.request.method, "path": response.url.path, "status": response.status_code,
        "warning": response.headers.get("warning"), "seconds": time.monotonic() - sent[-1]}))
    return client

set_client_factory(watched_client)
_http.time = types.SimpleNamespace(sleep=waits.append)  # http_backoff's only use of `time`
result = {}
for name in args["filenames"]:
    try:
        path = hf_hub_download(args["repo_id"], name)
        with open(path, "rb") as f:
            outcome = {"sha256": hashlib.sha256(f.read()).hexdigest(),
                       "commit": re.search(r"snapshots/([0-9a-f]{40})/", path)[1]}
    except Exception as error:
        cause = error.__cause__
        outcome = {"error": type(error).__name__, "cause": type(cause).__name__,
                   "status": getattr(getattr(cause, "response", None), "status_code", None)}
    result[name] = {**outcome, "responses": responses[:], "waits": waits[:]}
    responses.clear()
    waits.clear()
"""
