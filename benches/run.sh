#!/usr/bin/env bash
# Every figure and plot of benches/README.md's performance sections, from the current code, in one
# command: the load comparison against nginx (its table, concurrency sweep and plots, written into
# the README) and the cost of a growing store (boot, RSS, eviction, metadata memory, idle
# connections; its plots into benches/, its table into target/bench/scale/results.md).
# `--edge-bin PATH` measures that binary instead of building target/release/hf-edge.
# Takes about 10 min (load) plus 15-40 min (scale: mostly generating and deleting 1M files).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
bin=()
case "${1:-}" in
    --edge-bin) bin=(--edge-bin "$2") ;;
    "") cargo build --release --locked ;;
    *) echo "usage: benches/run.sh [--edge-bin PATH]" >&2; exit 2 ;;
esac
python3 "$here/load/run.py" --no-build --update-readme "${bin[@]}"
python3 "$here/scale/run.py" --no-build "${bin[@]}"
echo "tables: target/bench/results.md, target/bench/scale/results.md; plots: benches/*.svg"
