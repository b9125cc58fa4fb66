#!/usr/bin/env bash
# The whole test suite: formatting and lints, Rust unit and integration tests, and the
# end-to-end suite driving the real huggingface_hub client against the fake Hub, then through hf-edge.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --venv

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

echo "== cargo test"
cargo test --locked

# The reference first: the same suite with the real client talking to the fake Hub itself (tests that need a
# proxy skip), so every assertion made through hf-edge is known to hold against the fake.
echo "== end-to-end reference (huggingface_hub straight to the fake Hub)"
E2E_TARGET=hub .venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider

echo "== end-to-end (huggingface_hub through hf-edge)"
E2E_TARGET=edge HF_EDGE_BIN="$PWD/target/debug/hf-edge" .venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider

# README's Clients table is made from the results of that run: it must say what it found.
echo "== README Clients table"
.venv/bin/python scripts/clients_table.py --check
