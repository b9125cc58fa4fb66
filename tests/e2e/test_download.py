"""Downloads with hf_hub_download, snapshot_download and the `hf` CLI: right bytes, right commit."""

import pytest

from support import sha256_file
from snippets import DOWNLOAD, SNAPSHOT

pytestmark = pytest.mark.client("huggingface_hub 2.x")

GPT2_CHANGED = ["config.json", "pytorch_model.bin"]  # a regular and an LFS file, different in every revision


@pytest.mark.parametrize("revision", ["main", "v1.0", "commit-of-v1.0", "refs/pr/1"])
def test_hf_hub_download_by_revision(client, fakehub, revision):
    if revision == "commit-of-v1.0":
        revision = fakehub.expected("gpt2", "v1.0")["commit"]
    expected = fakehub.expected("gpt2", revision)
    if revision != "main":
        main = fakehub.expected("gpt2", "main")
        assert all(expected["files"][n]["sha256"] != main["files"][n]["sha256"] for n in GPT2_CHANGED)

    got = client.run(DOWNLOAD, repo_id="gpt2", filenames=GPT2_CHANGED, revision=revision)

    for name in GPT2_CHANGED:
        assert got[name]["sha256"] == expected["files"][name]["sha256"], name
        assert got[name]["commit"] == expected["commit"], name


def test_file_names_needing_percent_encoding(client, fakehub):
    names = ["onnx/config.json", "my file.txt", "c++/a+b.txt", "onnx/dé jà+v1.json", "merges.txt"]
    expected = fakehub.expected("gpt2")

    got = client.run(DOWNLOAD, repo_id="gpt2", filenames=names)

    assert expected["files"]["merges.txt"]["lfs"], "merges.txt should be LFS by size"
    assert {n: got[n]["sha256"] for n in names} == {n: expected["files"][n]["sha256"] for n in names}


@pytest.mark.parametrize("revision", ["main", "v1.0"])
def test_dataset_repo(client, fakehub, revision):
    names = ["data/train.csv", "data/train.parquet"]
    expected = fakehub.expected("fake-org/tiny-ds", revision, repo_type="dataset")

    got = client.run(DOWNLOAD, repo_id="fake-org/tiny-ds", repo_type="dataset", filenames=names, revision=revision)

    assert {n: got[n]["sha256"] for n in names} == {n: expected["files"][n]["sha256"] for n in names}
    assert {got[n]["commit"] for n in names} == {expected["commit"]}


def test_snapshot_download_matches_original_model_files(client, model_dir):
    originals = {p.relative_to(model_dir).as_posix(): sha256_file(p)
                 for p in model_dir.rglob("*") if p.is_file()}

    got = client.run(SNAPSHOT, repo_id="sentence-transformers/all-MiniLM-L6-v2")

    assert "model.safetensors" in originals and "1_Pooling/config.json" in originals
    assert got == originals


@pytest.mark.client("hf CLI")
def test_hf_cli_download(client, fakehub, tmp_path):
    target = tmp_path / "gpt2"
    expected = fakehub.expected("gpt2", "refs/pr/1")

    done = client.cli("download", "gpt2", "--revision", "refs/pr/1", "--local-dir", str(target))

    assert done.returncode == 0, done.stderr.decode()[-4000:]
    got = {p.relative_to(target).as_posix(): sha256_file(p)
           for p in target.rglob("*") if p.is_file() and ".cache" not in p.relative_to(target).parts}
    assert got == {path: f["sha256"] for path, f in expected["files"].items()}


# repo_type: (repo id, a regular file and an LFS file that every revision has, changed since v1.0 where noted)
OTHER_TYPES = {
    "space": ("fake-org/tiny-space", ["app.py", "assets/demo.bin"]),
    "kernel": ("fake-org/tiny-kernel", ["build.toml",
                                        "build/torch28-cxx11-cu128-x86_64-linux/tiny_kernel/_tiny_kernel.abi3.so"]),
}


@pytest.mark.parametrize("revision", ["main", "refs/pr/1"])
@pytest.mark.parametrize("repo_type", OTHER_TYPES)
def test_space_and_kernel_repos(client, fakehub, repo_type, revision):
    """spaces/ and kernels/ downloads: hf_hub_download (the client's repo_type="kernel" resolves under
    kernels/) and snapshot_download (/api/spaces/..., /api/kernels/...) get the right bytes and commit."""
    repo_id, names = OTHER_TYPES[repo_type]
    expected = fakehub.expected(repo_id, revision, repo_type=repo_type)
    assert [expected["files"][n]["lfs"] for n in names] == [False, True]

    got = client.run(DOWNLOAD, repo_id=repo_id, repo_type=repo_type, filenames=names, revision=revision)
    snapshot = client.run(SNAPSHOT, repo_id=repo_id, repo_type=repo_type, revision=revision)

    assert {n: (got[n]["sha256"], got[n]["commit"]) for n in names} == \
        {n: (expected["files"][n]["sha256"], expected["commit"]) for n in names}
    assert snapshot == {path: f["sha256"] for path, f in expected["files"].items()}
