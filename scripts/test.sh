#!/usr/bin/env bash
# The whole test suite, in the project's own virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# The canvas tests drive Debian's Chromium (playwright-core comes from npm at test time).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[persona] installing Debian's chromium for the canvas tests" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "[persona] chromium could not be installed: the canvas tests will be skipped" >&2
fi
exec .venv/bin/python -m pytest -c tests/pytest.ini --rootdir tests tests "$@"
