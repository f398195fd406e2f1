"""The GPU check cannot rot between GPU runs: its dry run (CUDA hidden) builds the bundle,
installs from it with no registry, imports the pack from the checkout by path and sets up
every case, reporting each one skipped; the benchmark case runs its code on test-size models."""
from __future__ import annotations

import json
import os
import subprocess

from comfy_server import REPO


def test_the_gpu_check_dry_run_sets_up_every_case(tmp_path):
    done = subprocess.run(["bash", "scripts/test_gpu.sh", "--dry-run"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OUT": str(tmp_path)}, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bundle = json.loads((REPO / ".gpu-bundle" / "bundle.json").read_text())
    assert bundle["bytes"] <= 60 * 2 ** 20 and any(w.startswith("diffusers-") for w in bundle["wheels"])
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["dry_run"] is True and len(report["cases"]) >= 7
    for case in report["cases"]:
        assert case["result"] == "skipped (no CUDA)" and case["tests"] >= 1, case
        assert 0 < case["estimate_s"] <= case["limit_s"]
    # the default budget (8 minutes, one command on a lent machine) reaches the cases of the open work first
    reached, spent = [], 0
    for case in report["cases"]:
        spent += case["estimate_s"]
        if spent <= 480:
            reached.append(case["name"])
    assert reached[:3] == ["streaming-side-stream", "flux-bf16-kernels", "published-plans"], reached
    published = next(c for c in report["cases"] if c["name"] == "published-plans")
    assert "| z_image | 1024 | 6 GB | plan |" in published["log"], published["log"][-2000:]  # its CPU dry run's table
    assert (tmp_path / "gpu-check.md").read_text().startswith("| case |")
