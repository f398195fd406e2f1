#!/usr/bin/env bash
# The GPU check (scripts/gpu_check.py: its cases, estimates and limits), on a GPU machine as
# it is: its own Python and CUDA build of torch, no package registry. What that machine lacks
# comes from the bundle (bash scripts/gpu_bundle.sh, run on the development machine: wheels
# and CLIP's BPE list in .gpu-bundle/), installed with --no-index into .gpu-site/; the pack is
# imported from this checkout by path. The table and the raw JSON go to $OUT when set (else
# test-artifacts/gpu/).
#   bash scripts/test_gpu.sh             on the GPU machine (about 8 minutes)
#   bash scripts/test_gpu.sh --dry-run   anywhere, CUDA hidden: builds the bundle if missing,
#                                        installs what this Python can, sets up every case and
#                                        reports it skipped (run in CI)
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${PERSONA_GPU_BUNDLE:-.gpu-bundle}"
SITE="${PERSONA_GPU_SITE:-.gpu-site}"
dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done
if [ "$dry" = 1 ]; then
  PY="${PERSONA_GPU_PYTHON:-.venv/bin/python}"
  [ -x "$PY" ] || { bash scripts/setup_env.sh; PY=.venv/bin/python; }
  [ -f "$BUNDLE/bundle.json" ] || bash scripts/gpu_bundle.sh
else
  PY="${PERSONA_GPU_PYTHON:-python3}"
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'scripts/test_gpu.sh: torch sees no CUDA device (--dry-run checks the script without one)')"
  [ -f "$BUNDLE/bundle.json" ] || { echo "scripts/test_gpu.sh: no $BUNDLE; run bash scripts/gpu_bundle.sh on the development machine and copy it here" >&2; exit 1; }
fi
"$PY" - "$BUNDLE" "$SITE" "$dry" <<'PY'
"""Install the bundle's wheels this Python can take (all of them on the GPU machine; in a dry
run on another Python, the pure-Python ones) into the site folder, with no registry; link the
pack in by path."""
import json, os, subprocess, sys
from pathlib import Path
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename
bundle, site, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"
info = json.loads((bundle / "bundle.json").read_text())
assert info["bytes"] <= 60 * 2 ** 20, f"the bundle is {info['bytes'] / 2 ** 20:.0f} MiB, over 60 MiB"
ours = set(sys_tags())
wheels, other = [], []
for name in info["wheels"]:
    _, _, _, tags = parse_wheel_filename(name)
    (wheels if tags & ours else other).append(bundle / "wheels" / name)
if other and not dry:
    sys.exit(f"wheels in the bundle this Python cannot install: {[w.name for w in other]}")
site.mkdir(exist_ok=True)
missing = []
for w in wheels:  # only what the machine lacks: its own packages stay first
    dist = parse_wheel_filename(w.name)[0]
    try:
        from importlib.metadata import version
        version(dist)
    except Exception:
        missing.append(str(w))
if missing:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--target", str(site), *missing], check=True)
link = site / "comfyui_persona"
if not link.exists():
    os.symlink(Path.cwd(), link, target_is_directory=True)
print(f"[persona] GPU site: {len(missing)} wheels installed, {len(other)} not for this Python"
      + (f"; left out of the bundle: {info['left_out']}" if info["left_out"] else ""), file=sys.stderr)
PY
export PYTHONPATH="$PWD/$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PERSONA_CLIP_BPE="$PWD/$BUNDLE/bpe_simple_vocab_16e6.txt.gz"
"$PY" -c "import comfyui_persona, sys; p = comfyui_persona.__file__; sys.exit(0 if p.startswith('$PWD') else f'the pack imports from {p}, not this checkout')"
exec "$PY" scripts/gpu_check.py "$@"
