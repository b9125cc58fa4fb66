"""Access errors reach the client as the same exception classes the Hub's answers produce."""

import pytest

from snippets import DOWNLOAD

HF_HUB_DOWNLOAD = """
from huggingface_hub import hf_hub_download
hf_hub_download(args["repo_id"], args["filename"], revision=args.get("revision"))
"""

MODEL_INFO = """
from huggingface_hub import model_info
model_info(args["repo_id"])
"""

LIST_FILES = """
from huggingface_hub import list_repo_files
list_repo_files(args["repo_id"], revision=args.get("revision"))
"""

CASES = {
    "missing file": (HF_HUB_DOWNLOAD, {"repo_id": "gpt2", "filename": "missing.txt"}, None,
                     "RemoteEntryNotFoundError"),
    "missing revision": (HF_HUB_DOWNLOAD, {"repo_id": "gpt2", "filename": "config.json", "revision": "nope"}, None,
                         "RevisionNotFoundError"),
    "missing repo, anonymous": (HF_HUB_DOWNLOAD, {"repo_id": "fake-org/missing", "filename": "config.json"}, None,
                                "RepositoryNotFoundError"),
    "missing repo, valid token": (HF_HUB_DOWNLOAD, {"repo_id": "fake-org/missing", "filename": "config.json"},
                                  "hf_valid", "RepositoryNotFoundError"),
    "private repo, anonymous": (HF_HUB_DOWNLOAD, {"repo_id": "fake-org/private-model", "filename": "config.json"},
                                None, "RepositoryNotFoundError"),
    "private repo, unapproved token": (HF_HUB_DOWNLOAD,
                                       {"repo_id": "fake-org/private-model", "filename": "config.json"},
                                       "hf_valid", "RepositoryNotFoundError"),
    "gated repo, anonymous": (HF_HUB_DOWNLOAD, {"repo_id": "fake-org/gated-model", "filename": "config.json"},
                              None, "GatedRepoError"),
    "gated repo, unapproved token": (HF_HUB_DOWNLOAD, {"repo_id": "fake-org/gated-model", "filename": "config.json"},
                                     "hf_valid", "GatedRepoError"),
    "invalid token": (HF_HUB_DOWNLOAD, {"repo_id": "gpt2", "filename": "config.json"}, "hf_bogus",
                      "HfHubHTTPError"),
    "private repo info, anonymous": (MODEL_INFO, {"repo_id": "fake-org/private-model"}, None,
                                     "RepositoryNotFoundError"),
    "listing a missing revision": (LIST_FILES, {"repo_id": "gpt2", "revision": "nope"}, None,
                                   "RevisionNotFoundError"),
}


@pytest.mark.parametrize("case", CASES)
def test_error_class(client, case):
    code, args, token, expected = CASES[case]

    error = client.error(code, token=token, **args)

    assert error["error"] == expected, error["traceback"]


def test_invalid_token_message_reaches_the_client(client):
    error = client.error(HF_HUB_DOWNLOAD, token="hf_bogus", repo_id="gpt2", filename="config.json")

    assert "Invalid credentials in Authorization header" in error["message"]


@pytest.mark.parametrize("repo_id", ["fake-org/gated-model", "fake-org/private-model"])
def test_approved_token_reads_restricted_repos(client, fakehub, repo_id):
    names = ["config.json", "model.safetensors"]
    expected = fakehub.expected(repo_id)

    got = client.run(DOWNLOAD, token="hf_approved", repo_id=repo_id, filenames=names)

    assert {n: got[n]["sha256"] for n in names} == {n: expected["files"][n]["sha256"] for n in names}
