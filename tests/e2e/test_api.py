"""The Hub API through the endpoint: listings, paths-info, refs, whoami, HfFileSystem ranges, safetensors."""

import hashlib
import json
import random
import re

from support import http

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

LIST_FILES = """
from huggingface_hub import list_repo_files
result = list_repo_files(args["repo_id"], revision=args.get("revision"))
"""

PATHS_INFO = """
from huggingface_hub import get_paths_info
from huggingface_hub.hf_api import RepoFile
result = {}
for info in get_paths_info(args["repo_id"], args["paths"], revision=args.get("revision")):
    is_file = isinstance(info, RepoFile)
    result[info.path] = {
        "type": "file" if is_file else "directory",
        "oid": info.blob_id if is_file else info.tree_id,
        "size": info.size if is_file else None,
        "lfs_sha256": info.lfs.sha256 if is_file and info.lfs else None,
    }
"""

REFS_AND_COMMITS = """
from huggingface_hub import list_repo_commits, list_repo_refs, model_info
refs = list_repo_refs(args["repo_id"], include_pull_requests=True)
info = model_info(args["repo_id"], revision="v1.0")
result = {
    "branches": {r.name: r.target_commit for r in refs.branches},
    "tags": {r.name: r.target_commit for r in refs.tags},
    "pulls": {r.ref: r.target_commit for r in refs.pull_requests},
    "history": [c.commit_id for c in list_repo_commits(args["repo_id"], revision="refs/pr/1")],
    "info_sha": info.sha,
    "siblings": sorted(s.rfilename for s in info.siblings),
}
"""

WHOAMI = """
from huggingface_hub import whoami
result = whoami()["name"]
"""

# Buffered reads fetch `bytes=a-b` blocks at each seek; a streamed file (block_size=0) reads on from the start
# and drops the connection, mid-body, once closed.
HFFS_READS = """
import hashlib
from huggingface_hub import HfFileSystem
fs = HfFileSystem()
result = {"size": fs.info(args["path"])["size"], "buffered": [], "streamed": []}
with fs.open(args["path"], "rb", block_size=256 * 1024) as f:
    for offset, length in args["ranges"]:
        f.seek(offset)
        result["buffered"].append(hashlib.sha256(f.read(length)).hexdigest())
with fs.open(args["path"], "rb", block_size=0) as f:
    for length in args["stream_reads"]:
        result["streamed"].append(hashlib.sha256(f.read(length)).hexdigest())
"""

SAFETENSORS_METADATA = """
from huggingface_hub import get_safetensors_metadata
metadata = get_safetensors_metadata(args["repo_id"])
tensors = metadata.files_metadata["model.safetensors"].tensors
result = {name: [t.dtype, t.shape] for name, t in tensors.items()}
"""


def test_list_repo_files_follows_pagination(client, fakehub):
    expected = fakehub.expected("fake-org/many-files")
    fakehub.clear_log()

    got = client.run(LIST_FILES, repo_id="fake-org/many-files")

    assert len(got) > 2500
    assert sorted(got) == sorted(expected["files"])
    pages = [e for e in fakehub.log() if "/tree/" in e["path"] and "cursor=" in e["query"]]
    assert len(pages) >= 2, "the listing should have needed several pages"


def test_tree_next_page_link_points_at_the_endpoint(endpoint):
    status, headers, body = http("GET", f"{endpoint}/api/models/fake-org/many-files/tree/main?recursive=true")
    assert status == 200, body[:500]
    link = re.fullmatch(r'<([^>]+)>;\s*rel="next"', headers.get("Link", ""))
    assert link, f"no next link in {headers.get('Link')!r}"
    assert link[1].startswith(f"{endpoint}/api/models/fake-org/many-files/tree/")

    status, _, next_body = http("GET", link[1])

    assert status == 200, next_body[:500]
    first, second = {e["path"] for e in json.loads(body)}, {e["path"] for e in json.loads(next_body)}
    assert second and not first & second


def test_get_paths_info(client, fakehub):
    expected = fakehub.expected("gpt2", "refs/pr/1")["files"]
    files = ["config.json", "pytorch_model.bin", "onnx/dé jà+v1.json"]

    got = client.run(PATHS_INFO, repo_id="gpt2", revision="refs/pr/1", paths=[*files, "onnx", "missing.txt"])

    assert set(got) == {*files, "onnx"}
    assert got["onnx"]["type"] == "directory"
    for name in files:
        assert (got[name]["oid"], got[name]["size"]) == (expected[name]["oid"], expected[name]["size"]), name
    assert got["pytorch_model.bin"]["lfs_sha256"] == expected["pytorch_model.bin"]["sha256"]
    assert got["config.json"]["lfs_sha256"] is None


def test_refs_commits_and_repo_info(client, fakehub):
    main, v1, pr = (fakehub.expected("gpt2", rev) for rev in ("main", "v1.0", "refs/pr/1"))

    got = client.run(REFS_AND_COMMITS, repo_id="gpt2")

    assert got["branches"]["main"] == main["commit"]
    assert got["tags"]["v1.0"] == v1["commit"]
    assert got["pulls"]["refs/pr/1"] == pr["commit"]
    assert got["history"][0] == pr["commit"] and {main["commit"], v1["commit"]} <= set(got["history"])
    assert got["info_sha"] == v1["commit"]
    assert got["siblings"] == sorted(v1["files"])


def test_whoami_sees_the_client_token(client):
    assert client.run(WHOAMI, token="hf_valid") == "valid-user"


def test_hf_file_system_ranged_reads(client, model_dir):
    original = (model_dir / "model.safetensors").read_bytes()
    size = len(original)
    rng = random.Random(1234)
    ranges = [(0, 8), (size - 100, 100), (size - 10, 1000)]  # the last one runs past the end
    ranges += [(rng.randrange(size), rng.randrange(1, 200_000)) for _ in range(12)]
    stream_reads = [8, 1000, 3 << 20, 12345]

    got = client.run(HFFS_READS, path=f"{MINILM}/model.safetensors", ranges=ranges, stream_reads=stream_reads)

    assert got["size"] == size
    assert got["buffered"] == [sha256(original[offset:offset + length]) for offset, length in ranges]
    offsets = [sum(stream_reads[:i]) for i in range(len(stream_reads))]
    assert got["streamed"] == [sha256(original[o:o + n]) for o, n in zip(offsets, stream_reads)]


def test_safetensors_metadata(client, model_dir):
    with open(model_dir / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    expected = {name: [t["dtype"], t["shape"]] for name, t in header.items() if name != "__metadata__"}

    assert client.run(SAFETENSORS_METADATA, repo_id=MINILM) == expected
