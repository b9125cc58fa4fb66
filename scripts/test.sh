#!/usr/bin/env bash
# The whole test suite: formatting and lints, Rust unit and integration tests, and the
# end-to-end suite driving the real huggingface_hub client through hf-edge against a fake Hub.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --venv

echo "== cargo fmt / clippy"
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings

echo "== cargo test"
cargo test --locked

echo "== end-to-end (huggingface_hub through hf-edge)"
HF_EDGE_BIN="$PWD/target/debug/hf-edge" .venv/bin/python -m pytest tests/e2e -q -p no:cacheprovider
