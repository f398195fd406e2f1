#!/usr/bin/env bash
# The test suite, in the project's own virtual environment.
#   bash scripts/test.sh           the whole suite, on two workers (docs/testing.md: times)
#   bash scripts/test.sh --quick   the quick tier: every package touched once, in about 3 minutes
# Other arguments go to pytest. PERSONA_TEST_WORKERS (default 2) sets the workers, 0 runs in
# one process; PERSONA_TEST_HOSTS the ComfyUI hosts (tests/hosts.py).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --test
# The canvas tests drive Debian's Chromium (playwright-core is provisioned with the test hosts).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[persona] installing Debian's chromium for the canvas tests" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "[persona] chromium could not be installed: the canvas tests will be skipped" >&2
fi
args=()
select=()
paths=(tests)
for a in "$@"; do
  if [ "$a" = "--quick" ]; then
    select=(-m quick)
    export PERSONA_TEST_HOSTS="${PERSONA_TEST_HOSTS:-comfyui-0.33}"  # one host: the newest
  else
    args+=("$a")
    case "$a" in tests/*) paths=() ;; esac  # test files or ids given: only those
  fi
done
workers="${PERSONA_TEST_WORKERS:-2}"
cores=$(nproc 2>/dev/null || echo 2)
parallel=()
if [ "$workers" -gt 0 ]; then
  # each worker (and every process it starts: servers, training children) on its share of the cores
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( cores / workers > 0 ? cores / workers : 1 ))}"
  parallel=(-n "$workers" --dist loadgroup)
fi
start=$(date +%s)
set +e
.venv/bin/python -m pytest -c tests/pytest.ini --rootdir tests "${paths[@]}" "${parallel[@]}" "${select[@]}" \
  --durations=10 "${args[@]}"
rc=$?
set -e
elapsed=$(( $(date +%s) - start ))
printf '[persona] test suite wall time: %d min %02d s (pytest exit code %d)\n' $((elapsed / 60)) $((elapsed % 60)) "$rc" >&2
exit "$rc"
