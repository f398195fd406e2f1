#!/usr/bin/env bash
# The main job: the whole personalization pipeline, headless, on the embedded default
# (sample faces shipped in installed packages, a tiny model built from config).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/persona demo "$@"
