#!/usr/bin/env python3
"""Renders README's "Clients" table: how to point each client at hf-edge, and whether it is tested here.

The rows of clients the end-to-end suite runs are made from that suite's results through hf-edge
(target/e2e-clients-edge.json, written by tests/e2e/conftest.py from the tests' `client` markers): which tests
ran the client and whether they passed. The other rows say where their setting is documented.

    scripts/clients_table.py --check   # exit 1 if README.md's table is not what the results give (test.sh)
    scripts/clients_table.py --write   # rewrite README.md's table from the results
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "target" / "e2e-clients-edge.json"
BEGIN, END = "<!-- clients table: made by scripts/clients_table.py -->", "<!-- end of clients table -->"
ENDPOINT = "`HF_ENDPOINT=http://hf-edge:8080`"

# (client, how to point it at hf-edge, None for a client the e2e suite runs, else where that is documented)
CLIENTS = [
    ("huggingface_hub 2.x", ENDPOINT, None),
    ("huggingface_hub 0.x (0.36)", ENDPOINT, None),
    ("`hf` CLI (`huggingface-cli` on 0.x)", ENDPOINT, None),
    ("transformers", ENDPOINT, None),
    ("datasets", ENDPOINT + " (`streaming=True` too)", None),
    ("git + git-lfs",
     "`git clone http://hf-edge:8080/{repo}`; a token as `git -c http.extraHeader=\"Authorization: Bearer "
     "hf_...\"` or a credential helper", None),
    ("hf_transfer", ENDPOINT + " and `HF_HUB_ENABLE_HF_TRANSFER=1` (huggingface_hub 0.x)", None),
    ("TEI (text-embeddings-inference)", "`-e HF_ENDPOINT=http://hf-edge:8080` on its container",
     "not tested here: TEI reads `HF_ENDPOINT` (its own docs and changelog, 2025 releases on)"),
    ("vLLM", ENDPOINT,
     "not tested here: vLLM downloads with huggingface_hub, which reads `HF_ENDPOINT` (huggingface_hub's docs)"),
    ("llama.cpp `-hf`", "`MODEL_ENDPOINT=http://hf-edge:8080/` (or `HF_ENDPOINT`)",
     "not tested here: llama.cpp's source reads `MODEL_ENDPOINT`, then `HF_ENDPOINT`; GGUF files come "
     "through `/resolve/` (cached), its manifest lookup passes through uncached"),
    ("Ollama `hf.co/` pulls", "none: Ollama asks hf.co's registry API, which has no endpoint setting",
     "not supported: fetch the GGUF with `hf download` through hf-edge and `ollama create` from it "
     "(Ollama's import docs)"),
    ("LM Studio", "none: its docs describe no Hub endpoint setting",
     "not supported: fetch the GGUF with `hf download` through hf-edge and `lms import` it (LM Studio's docs)"),
]

# The names the tests' `client` markers use for the rows they cover.
MARKERS = {
    "huggingface_hub 2.x": "huggingface_hub 2.x",
    "huggingface_hub 0.x (0.36)": "huggingface_hub 0.x",
    "`hf` CLI (`huggingface-cli` on 0.x)": "hf CLI",
    "transformers": "transformers",
    "datasets": "datasets",
    "git + git-lfs": "git + git-lfs",
    "hf_transfer": "hf_transfer",
}


def tested(tests: dict[str, str]) -> str:
    """`tests` (name -> outcome) of one client, as the table says it."""
    if not tests:
        return "**no test ran it**"
    failed = [t for t, outcome in tests.items() if outcome == "failed"]
    names = ", ".join(f"`{t}`" for t in tests)
    if failed:
        return f"**failing** through hf-edge: {names}"
    return f"tested through hf-edge, passing: {names}"


def render(results: dict) -> str:
    by_marker = results["clients"]
    lines = [BEGIN, "| client | point it at hf-edge | tested |", "| --- | --- | --- |"]
    for client, how, documented in CLIENTS:
        status = documented if documented else tested(by_marker.get(MARKERS[client], {}))
        lines.append(f"| {client} | {how} | {status} |")
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 if README.md's table is out of date")
    mode.add_argument("--write", action="store_true", help="rewrite README.md's table")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"default: {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    try:
        results = json.loads(args.results.read_text())
    except (OSError, ValueError) as error:
        print(f"clients_table: cannot read {args.results}: {error} (run the e2e suite through hf-edge first)",
              file=sys.stderr)
        return 2
    readme = README.read_text()
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        print(f"clients_table: README.md has no table between {BEGIN!r} and {END!r}", file=sys.stderr)
        return 2
    current, table = readme[start:end + len(END)], render(results)
    if args.write:
        README.write_text(readme[:start] + table + readme[end + len(END):])
        return 0
    if current != table:
        print("clients_table: README.md's Clients table is not what the e2e results give; run "
              "scripts/clients_table.py --write and commit README.md. It should read:\n" + table, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
