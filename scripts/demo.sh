#!/usr/bin/env bash
# Set up (if needed) and run the main job: demo vendor + gateway + shipped models on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/zipgate demo "$@"
