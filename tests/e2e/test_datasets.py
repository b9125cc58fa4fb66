"""`datasets.load_dataset` (the real package, pinned in requirements-libraries.txt) through hf-edge: csv and
parquet data sets with two configs and several splits, downloaded and streamed (`streaming=True` reads parquet
by ranges through HfFileSystem)."""

import pytest

from support import Client

pytestmark = pytest.mark.client("datasets")

# Two data sets of one format each (datasets infers one builder for all the configs of a repo). Config
# `first` (the default) has a train and a test split, `second` a train split. Written by the real pyarrow.
MAKE = """
import base64, io
import pyarrow as pa, pyarrow.parquet as pq

def rows(name, n):
    return {"id": list(range(n)), "text": [f"{name} row {i}" for i in range(n)]}

def parquet(d):
    out = io.BytesIO()
    pq.write_table(pa.table(d), out)
    return out.getvalue()

def csv(d):
    return ("id,text\\n" + "".join(f"{i},{t}\\n" for i, t in zip(d["id"], d["text"]))).encode()

result = {}
for ext, encode in (("csv", csv), ("parquet", parquet)):
    readme = (f"---\\nconfigs:\\n- config_name: first\\n  default: true\\n  data_files:\\n"
              f"  - split: train\\n    path: first/train.{ext}\\n  - split: test\\n    path: first/test.{ext}\\n"
              f"- config_name: second\\n  data_files:\\n  - split: train\\n    path: second/train.{ext}\\n---\\n")
    files = {"README.md": readme.encode()}
    for config, split, n in args["splits"]:
        files[f"{config}/{split}.{ext}"] = encode(rows(f"{config} {split}", n))
    result[ext] = {p: base64.b64encode(c).decode() for p, c in files.items()}
"""

SPLITS = [("first", "train", 5), ("first", "test", 3), ("second", "train", 4)]

# Every config and split of both data sets, downloaded or streamed; result: {"repo/config/split": rows}.
LOAD = """
from datasets import load_dataset
result = {}
for repo in args["repos"]:
    for config in ("first", "second"):
        if args["streaming"]:
            splits = {s: load_dataset(repo, config, split=s, streaming=True) for s in args["splits"][config]}
        else:
            splits = load_dataset(repo, config)
        for split, ds in splits.items():
            result[f"{repo}/{config}/{split}"] = [dict(row) for row in ds]
"""


@pytest.fixture(scope="module")
def datasets(fakehub, library_python, tmp_path_factory) -> list[str]:
    """The two data sets, made with pyarrow and pushed to the fake Hub as new repos."""
    made = Client(fakehub.hub, tmp_path_factory.mktemp("make"), python=library_python)
    repos = []
    for ext, files in made.run(MAKE, splits=SPLITS).items():
        repo = f"fake-org/tabular-{ext}"
        fakehub._call("POST", "/_fake/repos", {"repo": repo, "type": "dataset", "files": files})
        repos.append(repo)
    return repos


def expected(repos: list[str]) -> dict:
    return {f"{repo}/{config}/{split}": [{"id": i, "text": f"{config} {split} row {i}"} for i in range(n)]
            for repo in repos for config, split, n in SPLITS}


def load(client: Client, repos: list[str], streaming: bool) -> dict:
    splits = {"first": ["train", "test"], "second": ["train"]}
    return client.run(LOAD, repos=repos, streaming=streaming, splits=splits)


@pytest.mark.parametrize("streaming", [False, True], ids=["download", "streaming"])
def test_load_dataset_configs_and_splits(endpoint, datasets, library_python, tmp_path, streaming):
    client = Client(endpoint, tmp_path / "client", python=library_python)
    assert load(client, datasets, streaming) == expected(datasets)


@pytest.mark.edge_only
def test_a_second_load_from_a_fresh_cache_moves_no_file_bytes_upstream(fakehub, edge, datasets, library_python,
                                                                      tmp_path):
    """After one client loaded them, a client with an empty cache loads the same data sets and no file byte
    crosses the WAN again: nothing from the CDN, no file body from the Hub. What still goes upstream is the API
    calls, uncached by design (revision and tree listings: a few hundred bytes of JSON each)."""
    first = Client(edge.url, tmp_path / "first", python=library_python)
    assert load(first, datasets, streaming=False) == expected(datasets)
    fakehub.clear_log()

    second = Client(edge.url, tmp_path / "second", python=library_python)
    assert load(second, datasets, streaming=False) == expected(datasets)

    log = fakehub.log()
    assert [e for e in log if e["server"] == "cdn"] == []
    file_bodies = [(e["path"], e["body_bytes"]) for e in log
                   if e["body_bytes"] > 0 and not e["path"].startswith("/api/datasets/fake-org/tabular-")]
    assert file_bodies == []
