#!/usr/bin/env bash
# The load comparison: hf-edge vs nginx proxy_cache vs nginx static, on loopback.
# Everything is in run.py; see benches/README.md.  Options: --help.
set -euo pipefail
exec python3 "$(dirname "$0")/run.py" "$@"
