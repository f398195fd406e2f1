#!/usr/bin/env bash
# The GPU lane: the `gpu`-marked tests (real-size SD1.5, SDXL and FLUX with random weights:
# every benchmark configuration and every plan for 8/12/16/24 GB, FLUX's former crash cases,
# streaming, the fused backward pass, compiled blocks and host-sync-free steps), then FLUX's attention on each SDPA
# backend (bench/flux_attention_backends.py) and the training benchmark, whose
# table goes to test-artifacts/gpu/benchmark.md (paste it into docs/benchmarks.md).
#
# Uses the machine's own CUDA build of torch: the virtual environment (.venv-gpu) sees the
# system site-packages, and the package's other dependencies come from PyPI, or from a
# folder of wheels given as PERSONA_WHEELS for a machine without internet.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${PERSONA_GPU_VENV:-.venv-gpu}"
OUT="${PERSONA_GPU_OUT:-test-artifacts/gpu}"
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'scripts/test_gpu.sh: torch sees no CUDA device')"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv --system-site-packages "$VENV"
fi
pip_args=(--quiet)
if [ -n "${PERSONA_WHEELS:-}" ]; then pip_args+=(--no-index --find-links "$PERSONA_WHEELS"); fi
# torch stays the machine's own: only what is missing is installed
"$VENV/bin/python" -m pip install "${pip_args[@]}" --no-deps -e .
"$VENV/bin/python" - <<'PY' > "$VENV/missing.txt"
import importlib.util
need = {"diffusers": "diffusers", "peft": "peft", "accelerate": "accelerate", "safetensors": "safetensors",
        "transformers": "transformers", "pydantic": "pydantic", "bitsandbytes": "bitsandbytes",
        "pytest": "pytest", "yaml": "pyyaml"}
print("\n".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
if [ -s "$VENV/missing.txt" ]; then
  "$VENV/bin/python" -m pip install "${pip_args[@]}" $(cat "$VENV/missing.txt")
fi
mkdir -p "$OUT"
status=0
"$VENV/bin/python" -m pytest -c tests/pytest.ini --rootdir tests tests/test_gpu_lane.py tests/test_fused_backward.py \
  tests/test_block_streaming.py -m gpu -v -p no:cacheprovider --junitxml "$OUT/gpu-tests.xml" "$@" || status=$?
"$VENV/bin/python" bench/flux_attention_backends.py | tee "$OUT/flux_attention_backends.md" || status=$?
"$VENV/bin/python" bench/train_memory.py --json "$OUT/benchmark.json" | tee "$OUT/benchmark.md" || status=$?
exit $status
