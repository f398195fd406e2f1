#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
#   bash scripts/setup_env.sh          the pack with all extras (what the demo needs)
#   bash scripts/setup_env.sh --test   also the test tools and the test hosts: the ComfyUI
#                                      servers' requirements, today's frontend, playwright-core,
#                                      comfy-cli (tests/hosts.py provision)
# Idempotent: a stamp of the files that define each part skips work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PERSONA_VENV:-.venv}"
PY="${PYTHON:-python3}"
stamp_src=$(cat pyproject.toml constraints-dev.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
if ! [ -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.persona-stamp" 2>/dev/null)" != "$stamp_src" ]; then
  echo "[persona] setting up the virtual environment in $VENV (first run: a few minutes)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # The dev/CI torch pair first, pinned by the constraints file only.
  "$VENV/bin/python" -m pip install --quiet -c constraints-dev.txt torch torchvision
  "$VENV/bin/python" -m pip install --quiet -c constraints-dev.txt -e ".[all,test]"
  # facenet-pytorch pins torch<2.3 in its metadata, invisible-watermark asks for opencv-python
  # beside our opencv-python-headless: both installed without their dependencies.
  "$VENV/bin/python" -m pip install --quiet --no-deps facenet-pytorch==2.6.0 invisible-watermark==0.2.0
  echo "$stamp_src" > "$VENV/.persona-stamp"
  rm -f "$VENV/.persona-test-stamp"
fi
if [ "${1:-}" = "--test" ]; then
  test_stamp=$( (echo "$stamp_src"; cat tests/hosts.py; echo "${PERSONA_TEST_HOSTS:-}") | sha256sum | cut -c1-16)
  if [ "$(cat "$VENV/.persona-test-stamp" 2>/dev/null)" != "$test_stamp" ]; then
    echo "[persona] provisioning the test hosts (first run: a few minutes)" >&2
    "$VENV/bin/python" tests/hosts.py provision
    echo "$test_stamp" > "$VENV/.persona-test-stamp"
  fi
fi
