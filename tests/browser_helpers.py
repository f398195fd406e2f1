"""Headless Chromium (Debian's) driven by playwright-core (from npm) for canvas tests."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from comfy_server import ARTIFACTS

HERE = Path(__file__).parent


HOST_PROBES = ("/favicon.ico]", "/user.css]", "/api/userdata?dir=", "/api/userdata/comfy.templates.json]",
               "https://api.comfy.org/releases?", "net::ERR_NAME_NOT_RESOLVED [https://huggingface.co/")
# what a frontend logs about itself while it boots, from its own bundle (never an extension's):
# frontend 1.49's settings store reads the graph before the app has made it
FRONTEND_BOOT = (("ComfyApp graph accessed before initialization", "/assets/"),)


def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("Chromium is not installed (scripts/test.sh installs Debian's chromium when run as root)")
    return path


def playwright_dir() -> Path:
    from hosts import playwright_modules

    modules = playwright_modules()
    if modules is None:
        pytest.skip("npm is not installed")
    return modules


def run_graphs(url: str, jobs: list[tuple[dict, str, str]]) -> list[dict]:
    """Load each (prompt, name, selector) of ``jobs`` in turn into one page of the frontend
    served at ``url`` (headless Chromium; the frontend boots once); one result per job, with
    the console errors of that job only and its screenshot (``ARTIFACTS/<name>.png``)."""
    browser = chromium()
    modules = playwright_dir()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    listed = []
    for prompt, name, selector in jobs:
        prompt_file = ARTIFACTS / f"{name}.prompt.json"
        prompt_file.write_text(json.dumps(prompt))
        listed.append({"prompt": str(prompt_file), "shot": str(ARTIFACTS / f"{name}.png"), "selector": selector})
    jobs_file = ARTIFACTS / f"{jobs[0][1]}.jobs.json"
    jobs_file.write_text(json.dumps(listed))
    # the script is run from a copy next to node_modules so that its import resolves
    script = modules.parent / "run_graph.mjs"
    shutil.copy(HERE / "browser" / "run_graph.mjs", script)
    out = subprocess.run(["node", str(script), url, str(jobs_file)], capture_output=True, text=True,
                         timeout=120 + 120 * len(jobs), env={**os.environ, "CHROMIUM": browser, "NODE_PATH": str(modules)})
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads(line) for line in out.stdout.strip().splitlines() if line.startswith("{")]
    assert len(results) == len(jobs), out.stdout[-3000:] + out.stderr[-3000:]
    for result, job in zip(results, listed):
        # what a host's frontend itself asks for and may not get on a fresh, offline server: the
        # 2024 release's /favicon.ico; the current frontend's user.css, the new user's empty
        # userdata listings and template settings, its update check on the internet, and the
        # sizes it asks Hugging Face for of the model files its own templates name (0.33's
        # frontend, offline here). Every other console error counts.
        result["errors"] = [e for e in result["errors"] if not any(p in e for p in HOST_PROBES)
                            and not any(text in e and where in e for text, where in FRONTEND_BOOT)]
        result["screenshot"] = Path(job["shot"])
    return results


def run_graph(url: str, prompt: dict, name: str, selector: str = "") -> dict:
    """One job of :func:`run_graphs`."""
    return run_graphs(url, [(prompt, name, selector)])[0]
