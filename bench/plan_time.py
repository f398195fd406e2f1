"""How long the memory planner takes: the first plan of each published architecture (its
simulations on the ``meta`` device, no GPU needed) and the same plan asked again (read from
the plan cache), for VRAM budgets from 4 to 24 GB. Prints a Markdown table.

    python bench/plan_time.py                 # SD1.5, SDXL, FLUX
    python bench/plan_time.py --families sdxl --budgets 8
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

CASES = {"sd15": [("lora", 512), ("dreambooth", 512)], "sdxl": [("lora", 1024)], "flux": [("lora", 1024)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", type=lambda s: s.split(","), default=list(CASES))
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[4, 6, 8, 12, 24])
    args = ap.parse_args(argv)
    os.environ["PERSONA_CACHE"] = tempfile.mkdtemp(prefix="persona-plan-time-")  # a cold cache
    from comfyui_persona.trainers.config import TrainConfig
    from comfyui_persona.trainers.memory.planner import PlanError, plan

    print(f"{os.cpu_count()} CPU threads; cold plan cache; bitsandbytes and Triton assumed on the target GPU\n")
    print("| model | budget | first plan | simulations | again | plan | predicted peak | predicted speed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for family in args.families:
        for method, res in CASES[family]:
            for gb in args.budgets:
                cfg = TrainConfig(base_model="(benchmark)", dataset="(benchmark)", family=family, method=method,
                                  resolution=res, memory="auto")
                t0 = time.perf_counter()
                try:
                    p = plan(cfg, gb * 1024, "cuda", None, "real", bnb=True, compile_ok=True)
                except PlanError:
                    print(f"| {family} {method} @{res} | {gb:g} GB | {time.perf_counter() - t0:.1f} s | - | - | "
                          f"nothing fits | - | - |")
                    continue
                first = time.perf_counter() - t0
                t0 = time.perf_counter()
                plan(cfg, gb * 1024, "cuda", None, "real", bnb=True, compile_ok=True)
                again = time.perf_counter() - t0
                keep = {k: v for k, v in p.switches.items() if v not in (False, 0, "off") and k not in
                        ("cache_latents", "cache_text_embeddings", "batch_size", "gradient_accumulation")}
                text = ", ".join(f"{k}={v}" for k, v in keep.items())
                print(f"| {family} {method} @{res} | {gb:g} GB | {first:.1f} s | {len(p.tried)} | {again:.3f} s | "
                      f"{text} | {p.predicted_peak_mb / 1024:.2f} GB | {p.relative_speed:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
