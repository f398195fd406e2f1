#!/usr/bin/env bash
# Gather what the GPU machine lacks into one ignored folder (.gpu-bundle/, at most 60 MiB), so
# that scripts/test_gpu.sh installs nothing from a registry there:
#   - wheels of the pure-Python packages its Python (3.12, torch's own CUDA build) does not
#     have, at the versions of this project's environment: diffusers, pydantic and its core,
#     annotated-types, typing-inspection, facenet-pytorch (MTCNN, with its weights, for the
#     tests' face dataset; installed without its pinned torch);
#   - bitsandbytes only if it fits in what is left of the limit (else bundle.json says it was
#     left out, and its cases report themselves skipped);
#   - CLIP's BPE merges (open-clip-torch's file), from which the CLIP tokenizers are rebuilt.
# Run on the development machine: bash scripts/gpu_bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
OUT="${PERSONA_GPU_BUNDLE:-.gpu-bundle}"
LIMIT=$((60 * 1024 * 1024))
rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/wheels"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
download() {
  .venv/bin/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${platforms[@]}" -d "$1" "${@:2}"
}
pins=$(.venv/bin/python - <<'PY'
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in ("diffusers", "pydantic", "pydantic-core", "annotated-types",
                                              "typing-inspection", "facenet-pytorch")))
PY
)
download "$OUT.tmp/wheels" $pins
.venv/bin/python - "$OUT.tmp" <<'PY'
import shutil, sys
from pathlib import Path
from comfyui_persona.models.tokenizers import bpe_merges_path
shutil.copy(bpe_merges_path(), Path(sys.argv[1]) / "bpe_simple_vocab_16e6.txt.gz")
PY
left_out=()
used=$(du -sb "$OUT.tmp" | cut -f1)
mkdir -p "$OUT.tmp/maybe"
if download "$OUT.tmp/maybe" "bitsandbytes>=0.45" 2>/dev/null; then
  size=$(du -sb "$OUT.tmp/maybe" | cut -f1)
  if [ $((used + size)) -le "$LIMIT" ]; then
    mv "$OUT.tmp/maybe/"*.whl "$OUT.tmp/wheels/"
  else
    left_out+=("bitsandbytes: $((size / 1048576)) MiB, more than the $(( (LIMIT - used) / 1048576 )) MiB left under the limit")
  fi
else
  left_out+=("bitsandbytes: no wheel for Python 3.12 on manylinux x86_64 was found")
fi
rm -rf "$OUT.tmp/maybe"
.venv/bin/python - "$OUT.tmp" "${left_out[@]}" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
wheels = sorted(p.name for p in (out / "wheels").glob("*.whl"))
total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
(out / "bundle.json").write_text(json.dumps({"wheels": wheels, "left_out": sys.argv[2:], "bytes": total}, indent=2))
PY
total=$(du -sb "$OUT.tmp" | cut -f1)
if [ "$total" -gt "$LIMIT" ]; then
  echo "gpu_bundle: $((total / 1048576)) MiB is over the 60 MiB limit" >&2
  exit 1
fi
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
echo "[persona] GPU bundle: $OUT ($((total / 1048576)) MiB)" >&2
cat "$OUT/bundle.json"
