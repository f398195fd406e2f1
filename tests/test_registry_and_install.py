"""The pack as ComfyUI-Manager and the Comfy registry meet it: install.py leaves the host's
torch, torchvision, numpy and Pillow as they were, and the registry's own validator
(comfy-cli's `comfy node validate`) accepts the pack's metadata."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from comfy_server import REPO

KEPT = ("torch", "torchvision", "numpy", "pillow")

pytestmark = pytest.mark.slow


def _versions(python: str) -> dict:
    code = ("import json\nfrom importlib.metadata import version\n"
            f"print(json.dumps({{n: version(n) for n in {KEPT!r}}}))")
    return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_install_py_leaves_torch_numpy_and_pillow_alone():
    """What ComfyUI-Manager runs, in this environment (which also holds the current ComfyUI
    host's requirements when its tests ran)."""
    before = _versions(sys.executable)
    out = subprocess.run([sys.executable, str(REPO / "install.py")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert _versions(sys.executable) == before


def test_the_registry_validator_accepts_the_pack():
    """comfy-cli lives in a small environment of its own (hosts.comfy_cli)."""
    from hosts import comfy_cli

    comfy = comfy_cli()
    env_dir = comfy.parent.parent
    out = subprocess.run([str(comfy), "--skip-prompt", "--no-enable-telemetry", "node", "validate"], cwd=REPO,
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                         env={**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    said = out.stdout + out.stderr
    assert "All validation checks passed" in said and "Security warnings" not in said
