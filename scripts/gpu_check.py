"""The GPU check: its cases, most informative first, each in a process of its own with a time
estimate and a limit, so one slow case cannot eat the rest; one table on stdout, and the table
and the raw JSON under ``$OUT`` (or ``test-artifacts/gpu``). Run by ``scripts/test_gpu.sh``.

    python scripts/gpu_check.py [--dry-run] [--budget SECONDS] [--only NAME ...]

``--dry-run`` (CUDA absent, e.g. in CI): every case is collected and set up (its test module
imported from the checkout, its fixtures' code importable), then reported skipped, so the
check cannot rot between GPU runs.

The cases, in the order they run (estimates for one H200 from a cold machine, model builds
and first compiles included). ``--budget`` (default 8 minutes) is shared by all of them: a case
whose estimate no longer fits is reported "not run", and a running case is stopped where the
budget ends, so the check fits one command on a lent machine; ``--only`` picks cases.

1. Block streaming on the side stream against the resident run, bf16 and fp8 bases; test-size
   FLUX in bf16 with each attention kernel forced.
2. The published-size plans of the newer families (bench/published_plans.py): each plan and
   the same budget streamed from the other base (fp8 or bf16), measured peak and speed (a benchmark, whose
   table is its result; it writes ``published-plans.json``).
3. The fused backward pass and full bf16 against the plain step; the loop's steps under the
   sync-debug mode ``error``.
4. FLUX.1 at real width in bf16: the former illegal memory access, with the attention backends
   diffusers selects.
5. One plan per family of the first three at real size with random weights: measured peak
   against the prediction; compiled blocks with CUDA graphs against eager; streaming under
   ``TORCH_CUDA_SANITIZER=1``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Case:
    name: str
    what: str
    estimate_s: int  # expected on one H200 from a cold machine
    limit_s: int  # the case is stopped here and reported as over its limit
    tests: list[str]  # pytest node ids (relative to tests/); empty for a command
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)  # a benchmark instead of tests: its output is the result
    dry_run: list[str] = field(default_factory=list)  # what the command runs without CUDA (its code on test-size models)


CASES = [
    Case("streaming-side-stream", "block streaming on the side stream = resident weights (bf16 and fp8 bases)",
         45, 110, ["test_block_streaming.py::test_a_streamed_step_gives_the_in_memory_weights",
                   "test_block_streaming.py::test_an_fp8_base_streams_its_8_bit_weights"]),
    Case("flux-bf16-kernels", "test-size FLUX in bf16 with each SDPA kernel forced (NaN by step 3 on an H200)", 35, 90,
         ["test_gpu_lane.py::test_flux_trains_in_bf16_with_each_attention_kernel"]),
    Case("published-plans", "Z-Image, FLUX.2 klein 4B/9B, Qwen-Image: the published plans and the other base streamed, "
         "measured (bench/published_plans.py)", 240, 300, [],
         command=["bench/published_plans.py", "--json", "{out}/published-plans.json"],
         dry_run=["bench/published_plans.py", "--tiny", "--families", "z_image", "--steps", "1", "--warmup", "0"]),
    Case("fused-backward", "fused backward and full bf16 = the plain step on CUDA", 30, 90,
         ["test_fused_backward.py::test_fused_backward_gives_the_weights_of_the_plain_step"]),
    Case("no-host-sync", "steps between log lines never wait for the GPU (sync-debug 'error')", 45, 120,
         ["test_gpu_lane.py::test_training_steps_between_log_lines_never_wait_for_the_gpu"]),
    Case("flux-real-width", "FLUX.1 at real width in bf16: no illegal memory access", 70, 120,
         ["test_gpu_lane.py::test_flux_trains_without_an_illegal_memory_access"]),
    Case("plans-hold", "one plan per family holds its predicted peak (SD1.5 4 GB, SDXL 8 GB, FLUX 12 GB)", 120, 180,
         ["test_gpu_lane.py::test_streamed_fused_and_compiled_runs_hold_their_prediction"]),
    Case("compiled-vs-eager", "compiled blocks and CUDA graphs follow the eager loss curve", 90, 150,
         ["test_gpu_lane.py::test_compiled_runs_follow_the_eager_loss_curve[sd15]"]),
    Case("streaming-sanitizer", "the same under TORCH_CUDA_SANITIZER=1 (races between streams)", 75, 150,
         ["test_block_streaming.py::test_a_streamed_step_gives_the_in_memory_weights",
          "test_block_streaming.py::test_an_fp8_base_streams_its_8_bit_weights"],
         {"TORCH_CUDA_SANITIZER": "1"}),
]


def run_case(case: Case, out: Path, dry_run: bool, env: dict[str, str]) -> dict:
    """Run one case in a process of its own. Its log's tail goes into the JSON report (what
    comes back from a GPU machine is a few files), its JUnit XML into a scratch folder."""
    scratch = Path(tempfile.mkdtemp(prefix=f"gpu-check-{case.name}-"))
    junit = scratch / "junit.xml"
    if case.command:
        args = case.dry_run if dry_run else case.command
        cmd = [sys.executable, *[a.replace("{out}", str(out)) for a in args]]
    else:
        cmd = [sys.executable, "-m", "pytest", "-c", "tests/pytest.ini", "--rootdir", "tests", "-p", "no:cacheprovider",
               "-m", "gpu", "-q", "--junitxml", str(junit), *[f"tests/{t}" for t in case.tests]]
    start = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=REPO, env={**env, **case.env}, capture_output=True, text=True,
                              timeout=case.limit_s)
        rc, tail = done.returncode, done.stderr[-2500:] + "\n" + done.stdout[-3500:]  # the table or summary last
    except subprocess.TimeoutExpired as exc:
        rc, tail = None, f"over its limit of {case.limit_s} s\n" + _text(exc.stdout)[-3000:] + _text(exc.stderr)[-3000:]
    seconds = time.monotonic() - start
    counts = {"tests": 1, "failures": int(bool(rc)), "errors": 0, "skipped": int(dry_run)} if case.command \
        else _junit_counts(junit)
    shutil.rmtree(scratch, ignore_errors=True)
    if rc is None:
        result = "over limit"
    elif counts["tests"] == 0:
        result = "not collected"
    elif rc != 0 and case.command:
        result = "FAILED"
    elif counts["skipped"] == counts["tests"]:
        result = "skipped (no CUDA)" if dry_run else "skipped"
    elif rc == 0:
        result = "passed" if not case.command else "measured"
    else:
        result = "FAILED"
    return {**asdict(case), "result": result, "seconds": round(seconds, 1), "returncode": rc, **counts, "log": tail}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    if not path.is_file():
        return {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def table(rows: list[dict]) -> str:
    lines = ["| case | what | result | tests | time (estimate) |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['what']} | {r['result']} | {r['tests'] if isinstance(r['tests'], int) else ''} "
                     f"| {r['seconds']:.0f} s ({r['estimate_s']} s) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CUDA absent: set up every case, report it skipped")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all cases (default: 8 minutes)")
    parser.add_argument("--only", nargs="*", help="case names")
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT") or REPO / "test-artifacts" / "gpu")
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    cases = [c for c in CASES if not args.only or c.name in args.only]
    rows, start = [], time.monotonic()
    for case in cases:
        left = args.budget - (time.monotonic() - start)
        if not args.dry_run and left < case.estimate_s:
            rows.append({**asdict(case), "result": f"not run ({left:.0f} s left)", "seconds": 0.0,
                         "returncode": None, "tests": 0, "failures": 0, "errors": 0, "skipped": 0})
            continue
        if not args.dry_run and left < case.limit_s:  # stopped where the budget ends, whatever its own limit
            case = Case(**{**asdict(case), "limit_s": int(left)})
        row = run_case(case, out, args.dry_run, env)
        rows.append({**row, "tests": row["tests"]})
        print(f"[gpu-check] {case.name}: {row['result']} in {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    (out / "gpu-check.md").write_text(text + "\n")
    (out / "gpu-check.json").write_text(json.dumps({"dry_run": args.dry_run, "cases": rows}, indent=2))
    bad = [r for r in rows if r["result"] in ("FAILED", "over limit", "not collected")]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
