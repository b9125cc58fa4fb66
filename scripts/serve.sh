#!/usr/bin/env bash
# Builds hf-edge (release) and starts it; with no arguments, on the embedded default config
# (listen 127.0.0.1:8080, metrics 127.0.0.1:9090, cache ./hf-edge-cache, upstream huggingface.co).
# Arguments go to `hf-edge serve`, e.g. scripts/serve.sh --config conf/hf-edge.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked --bin hf-edge -- serve "$@"
