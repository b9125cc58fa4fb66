"""transformers (the real package, pinned in requirements-libraries.txt) through hf-edge: AutoConfig,
AutoTokenizer and the model's weights of all-MiniLM-L6-v2, then again from a fresh client with the Hub down.

PyPI's torch wheels bring CUDA (gigabytes), so the weights are fetched the way from_pretrained fetches them
(transformers' `cached_file`) and read with safetensors instead of being loaded into a torch model."""

import time

import pytest

from support import Client

pytestmark = pytest.mark.client("transformers")

REPO = "sentence-transformers/all-MiniLM-L6-v2"

# result: what the model is, as transformers and safetensors read it from `args["source"]` (a repo id or a dir).
LOAD = """
import hashlib
from safetensors.numpy import load_file
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import cached_file

source = args["source"]
config = AutoConfig.from_pretrained(source)
tokenizer = AutoTokenizer.from_pretrained(source)
weights = load_file(cached_file(source, "model.safetensors"))
result = {
    "model_type": config.model_type,
    "hidden_size": config.hidden_size,
    "tokenizer": type(tokenizer).__name__,
    "ids": tokenizer("hf-edge keeps the Hub close")["input_ids"],
    "weights": {name: [list(t.shape), hashlib.sha256(t.tobytes()).hexdigest()] for name, t in weights.items()},
}
"""


@pytest.fixture(scope="module")
def original(model_dir, library_python, tmp_path_factory) -> dict:
    """The model as transformers reads it from the original files, offline."""
    client = Client("http://127.0.0.1:9", tmp_path_factory.mktemp("offline"), env={"HF_HUB_OFFLINE": "1"},
                    python=library_python)
    got = client.run(LOAD, source=str(model_dir))
    assert got["model_type"] == "bert" and len(got["weights"]) > 50
    return got


def test_auto_classes_and_weights(endpoint, original, library_python, tmp_path):
    client = Client(endpoint, tmp_path / "client", python=library_python)
    assert client.run(LOAD, source=REPO) == original


@pytest.mark.edge_only
def test_a_fresh_client_loads_the_model_with_the_hub_down(other_fakehub, other_edge, original, library_python,
                                                          tmp_path):
    """From what hf-edge knew: the repo info transformers asks first, the files, and which optional files and
    folders (added_tokens.json, chat templates) the Hub said the repo lacks, answered as the Hub did. Each of
    those answered 502 would cost the client a minute of retries."""
    hub = other_fakehub()
    edge = other_edge(hub.hub)
    started = time.monotonic()
    assert Client(edge.url, tmp_path / "warm", python=library_python).run(LOAD, source=REPO) == original
    warm_seconds = time.monotonic() - started

    hub.fault({"mode": "down"})
    cold = Client(edge.url, tmp_path / "cold", python=library_python)
    started = time.monotonic()
    assert cold.run(LOAD, source=REPO) == original
    cold_seconds = time.monotonic() - started
    print(f"transformers: {warm_seconds:.1f} s with the Hub up, {cold_seconds:.1f} s with it down")
    assert cold_seconds < warm_seconds + 10, (cold_seconds, warm_seconds)
