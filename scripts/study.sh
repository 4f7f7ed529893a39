#!/usr/bin/env bash
# The main job: set up, then run the default study; outputs go under results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/actlab run "${1:-configs/default.yaml}" --out "${2:-results}"
