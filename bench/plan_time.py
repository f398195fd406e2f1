"""How long the memory planner takes: the first plan of each published architecture (its
simulations on the ``meta`` device, no GPU needed) and the same plan asked again (read from
the plan cache), for VRAM budgets from 4 to 24 GB. Prints a Markdown table.

    python bench/plan_time.py                 # SD1.5, SDXL, FLUX
    python bench/plan_time.py --families sdxl --budgets 8
    python bench/plan_time.py --cold          # every row in a new process with an empty cache
    python bench/plan_time.py --published     # the published-size LoRA plans of every family (cold)

Without ``--cold`` the rows run in one process, and a plan may reuse the simulations of the
plans above it (the first row of each model is cold). With ``--cold`` each row starts from
nothing: the architecture built, every simulation run.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

CASES = {"sd15": [("lora", 512), ("dreambooth", 512)], "sdxl": [("lora", 1024)], "flux": [("lora", 1024)]}


HEADER = ("| model | budget (usable) | first plan | simulations | again | plan | predicted peak (whole run) | "
          "predicted speed |\n| --- | --- | --- | --- | --- | --- | --- | --- |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", type=lambda s: s.split(","), default=list(CASES))
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[4, 6, 8, 12, 24])
    ap.add_argument("--methods", type=lambda s: s.split(","), default=None, help="only these (lora, dreambooth)")
    ap.add_argument("--cold", action="store_true", help="each row in a new process with an empty plan cache")
    ap.add_argument("--published", action="store_true",
                    help="the published-size LoRA plans of every family (train_memory.PUBLISHED_PLANS), each row cold")
    ap.add_argument("--row", help=argparse.SUPPRESS)  # FAMILY:METHOD:RES:GB:SIZE, one cold row's own process
    args = ap.parse_args(argv)
    args.cold = (args.cold or args.published) and not args.row
    os.environ["PERSONA_CACHE"] = tempfile.mkdtemp(prefix="persona-plan-time-")  # a cold cache
    where = "every row cold (a new process, an empty plan cache)" if args.cold else "cold plan cache"
    print(f"{os.cpu_count()} CPU threads; {where}; bitsandbytes and Triton assumed on the target GPU\n")
    print(HEADER)
    for family, method, res, gb, size in _rows(args):
        print(_cold_row(family, method, res, gb, size) if args.cold else _row(family, method, res, gb, size),
              flush=True)
    return 0


def _rows(args):
    if args.published:  # the LoRA plans at published size and budget (bench/train_memory.py)
        from train_memory import PUBLISHED_PLANS

        for label, (gb, res) in PUBLISHED_PLANS.items():
            family, _, size = label.partition(":")
            yield family, "lora", res, gb, size or "real"
        return
    if args.row:
        family, method, res, gb, size = args.row.split(":")
        yield family, method, int(res), float(gb), size
        return
    for family in args.families:
        for method, res in CASES[family]:
            if not args.methods or method in args.methods:
                for gb in args.budgets:
                    yield family, method, res, gb, "real"


def _row(family: str, method: str, res: int, gb: float, size: str = "real") -> str:
    from comfyui_persona.trainers.config import TrainConfig
    from comfyui_persona.trainers.memory.planner import PlanError, plan, switches_text

    cfg = TrainConfig(base_model="(benchmark)", dataset="(benchmark)", family=family, method=method,
                      resolution=res, memory="auto")
    name = f"{family}{'' if size == 'real' else f' ({size})'} {method} @{res}"
    t0 = time.perf_counter()
    try:
        p = plan(cfg, gb * 1024, "cuda", None, size, bnb=True, compile_ok=True)
    except PlanError:
        took = time.perf_counter() - t0
        return f"| {name} | {gb:g} GB | {took:.1f} s | - | - | nothing fits | - | - |"
    budget = f"{gb:g} GB ({p.usable_mb / 1024:.2f})"
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    plan(cfg, gb * 1024, "cuda", None, size, bnb=True, compile_ok=True)
    again = time.perf_counter() - t0
    text = switches_text(p.switches)
    return (f"| {name} | {budget} | {first:.1f} s | {len(p.tried)} | {again:.3f} s | "
            f"{text} | {p.whole_run_peak_mb / 1024:.2f} GB | {p.relative_speed:.2f}x |")


def _cold_row(family: str, method: str, res: int, gb: float, size: str = "real") -> str:
    """The row planned in a new process, with its own empty cache."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, __file__, "--row", f"{family}:{method}:{res}:{gb:g}:{size}"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith(f"| {family} ")][0]


if __name__ == "__main__":
    raise SystemExit(main())
