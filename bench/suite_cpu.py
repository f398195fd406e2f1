"""Where the test suite's CPU goes, by kind of process: runs ``bash scripts/test.sh`` (with the
arguments given) and samples every process under it from ``/proc`` until it ends, then prints
a Markdown table of CPU minutes per kind: the pytest workers (the tests that run in-process,
the memorised models' training included), the ComfyUI servers, the training children they and
the CLI start, ComfyUI's sampler run as a subprocess, Chromium and its Playwright driver, and
the rest. Linux only (it reads ``/proc``); the suite's own ``--durations`` says which tests.

    python bench/suite_cpu.py                      # the whole suite
    python bench/suite_cpu.py tests/test_studies.py
    python bench/suite_cpu.py --save procs.json    # also every process sampled, as JSON
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
EVERY = 0.3  # seconds between two readings of /proc
KINDS = [  # (kind, test on the command line or the process name), first match wins
    ("Chromium (canvas tests)", lambda cmd, comm: "chrom" in comm),
    ("Node (the Playwright driver)", lambda cmd, comm: comm.startswith("node")),
    ("training children (Train node, CLI, sweeps)", lambda cmd, comm: "child.py" in cmd),
    ("ComfyUI servers", lambda cmd, comm: "main.py" in cmd and "--cpu" in cmd),
    ("ComfyUI's sampler as a subprocess", lambda cmd, comm: "comfy_sampling.py" in cmd),
    ("pytest workers: the tests run in-process", lambda cmd, comm: "exec(eval(sys.stdin.readline()))" in cmd),
    ("pytest and the test command", lambda cmd, comm: " -m pytest " in cmd or "scripts/test.sh" in cmd
     or "scripts/setup_env.sh" in cmd),
]


def _read(pid: str) -> dict | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] == "Z":
            return None
        return {"ppid": fields[1], "cpu": (int(fields[11]) + int(fields[12])) / TICK,
                "comm": stat[stat.index("(") + 1:stat.rindex(")")], "start": fields[19]}
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def kind_of(cmd: str, comm: str) -> str:
    return next((name for name, test in KINDS if test(cmd, comm)), "other subprocesses (CLI, benchmarks, scripts)")


def sample(root: int, every: float = EVERY) -> tuple[dict, float]:
    """Every process under ``root`` while it runs, by ``(pid, start)``: its pid, parent, kind,
    command and CPU seconds at its last reading; and the wall seconds."""
    seen: dict = {}
    began = time.monotonic()
    while True:
        alive, children = {}, collections.defaultdict(list)
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                info = _read(pid)
                if info is not None:
                    alive[pid] = info
                    children[info["ppid"]].append(pid)
        under, todo = [], [str(root)] if str(root) in alive else []
        while todo:  # root and its descendants among the living
            pid = todo.pop()
            under.append(pid)
            todo += children[pid]
        for pid in under:
            info = alive[pid]
            key = (pid, info["start"])
            if key not in seen:
                cmd = _cmdline(pid)
                seen[key] = {"pid": int(pid), "ppid": int(info["ppid"]), "kind": kind_of(cmd, info["comm"]),
                             "command": cmd[:300]}
            seen[key]["cpu"] = info["cpu"]
        if str(root) not in alive:
            return seen, time.monotonic() - began
        time.sleep(every)


def main(argv: list[str]) -> int:
    if not Path("/proc/self/stat").exists():
        print("bench/suite_cpu.py reads /proc: it runs on Linux only", file=sys.stderr)
        return 2
    save = None
    if argv[:1] == ["--save"]:  # every process sampled (pid, parent, kind, command, CPU s) as JSON
        if len(argv) < 2:
            print("bench/suite_cpu.py: --save needs a file path", file=sys.stderr)
            return 2
        save, argv = Path(argv[1]), argv[2:]
    suite = subprocess.Popen(["bash", "scripts/test.sh", *argv], cwd=REPO)
    seen, wall = sample(suite.pid)
    rc = suite.wait()
    if save is not None:
        save.write_text(json.dumps(sorted(seen.values(), key=lambda p: -p["cpu"]), indent=1))
    per_kind, count = collections.Counter(), collections.Counter()
    for proc in seen.values():
        per_kind[proc["kind"]] += proc["cpu"]
        count[proc["kind"]] += 1
    total = sum(per_kind.values())
    cores = os.cpu_count() or 1
    print(f"\n{wall / 60:.1f} min wall on {cores} cores; {total / 60:.1f} min of CPU in the processes sampled "
          f"every {EVERY:g} s ({100 * total / (wall * cores):.0f} % of the cores); test command exit code {rc}\n")
    print("| kind of process | processes | CPU min | share |\n| --- | ---: | ---: | ---: |")
    for kind, cpu in per_kind.most_common():
        print(f"| {kind} | {count[kind]} | {cpu / 60:.1f} | {100 * cpu / max(total, 1e-9):.0f} % |")
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
