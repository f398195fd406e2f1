"""Headless Chromium (Debian's) driven by playwright-core (from npm) for canvas tests."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from comfy_server import ARTIFACTS, CACHE

HERE = Path(__file__).parent
NODE_DIR = CACHE / "node"


HOST_PROBES = ("/favicon.ico]", "/user.css]", "/api/userdata?dir=", "/api/userdata/comfy.templates.json]",
               "https://api.comfy.org/releases?")


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed (scripts/test.sh installs Debian's chromium when run as root)")
    return path


def playwright_dir() -> Path:
    if not (NODE_DIR / "node_modules" / "playwright-core").is_dir():
        if not shutil.which("npm"):
            pytest.skip("npm is not installed")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR),
                        "playwright-core@1"], check=True, timeout=300)
    return NODE_DIR / "node_modules"


def run_graph(url: str, prompt: dict, name: str, selector: str = "") -> dict:
    browser = chromium()
    modules = playwright_dir()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    prompt_file = ARTIFACTS / f"{name}.prompt.json"
    prompt_file.write_text(json.dumps(prompt))
    shot = ARTIFACTS / f"{name}.png"
    # the script is run from a copy next to node_modules so that its import resolves
    script = NODE_DIR / "run_graph.mjs"
    shutil.copy(HERE / "browser" / "run_graph.mjs", script)
    out = subprocess.run(["node", str(script), url, str(prompt_file), str(shot), selector],
                         capture_output=True, text=True, timeout=400,
                         env={**os.environ, "CHROMIUM": browser, "NODE_PATH": str(modules)})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # what a host's frontend itself asks for and may not get on a fresh, offline server: the
    # 2024 release's /favicon.ico; the current frontend's user.css, the new user's empty
    # userdata listings and template settings, and its update check on the internet. Every
    # other console error counts.
    result["errors"] = [e for e in result["errors"] if not any(p in e for p in HOST_PROBES)]
    result["screenshot"] = shot
    return result
