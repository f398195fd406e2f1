"""The published-size LoRA plans trained on a GPU, and the same budgets streamed from the other base.

For each family of ``PUBLISHED_PLANS`` (bench/train_memory.py: Z-Image, FLUX.2 klein 4B and
9B, Qwen-Image, ...) at its budget and resolution, two rows, each trained at the published
size with random weights through the trainer's own setup and step code
(``trainers.memory.simulate.run_steps``: random latents, zero conditioning, the caches of the
real loop):

- **plan**: the planner's choice (``plan(..., device="cuda")``);
- **fp8 streamed** (or **bf16 streamed** where the plan's base is fp8): the plan's switches
  with the other streamable base and the fewest streamed blocks whose predicted peak fits the
  same usable budget (found by bisection on the meta device). The planner weighs the two by
  estimated speed factors (an fp8 base computes a little slower, streams half the bytes per
  block and needs fewer blocks streamed); this row measures the choice it did not make.

Per row: predicted peak, measured peak (``torch.cuda.max_memory_allocated`` after setup), the
measured over the predicted, and the median seconds per step after ``--warmup`` steps. Prints
a Markdown table; ``--json`` writes the rows.

    python bench/published_plans.py                      # GPU: every family (the first two rows: Z-Image)
    python bench/published_plans.py --families z_image,qwen_image --steps 6
    python bench/published_plans.py --predict-only       # any machine: the rows' plans and predictions
    python bench/published_plans.py --tiny               # CPU: the same rows on test-size models (a dry run)

Each model is built on the GPU in fp32 and cast before the measured steps (Qwen-Image: 80 GB
at the build), so the measured rows need a GPU of that size; the peaks they measure are those of
the plans' budgets. On a CPU (``--tiny``) the rows' switches come from the published plan, their streamed block
counts scaled to the tiny model; the peaks are the live-tensor meter's and say nothing about
a GPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_memory import PUBLISHED_PLANS  # noqa: E402

NEW_FAMILIES = ["z_image", "flux2", "flux2:klein-9b", "qwen_image"]  # flux2_dev: 64 GB of pinned weights


def base_config(family: str, resolution: int):
    from comfyui_persona.trainers.config import TrainConfig

    return TrainConfig(base_model="(plan)", dataset="(plan)", family=family, resolution=resolution,
                       mixed_precision="bf16", rank=16, alpha=16)


def rows_for(label: str, bnb: bool) -> list[dict]:
    """The plan row and the other base's streamed row of ``label`` (``family[:size]``), predicted."""
    from comfyui_persona.trainers.memory.planner import plan, predicted_peak_mb

    budget_gb, resolution = PUBLISHED_PLANS[label]
    family, _, size = label.partition(":")
    size = size or "real"
    cfg = base_config(family, resolution)
    p = plan(cfg, budget_gb * 1024, "cuda", None, size, bnb=bnb, compile_ok=False)
    switches = {k: v for k, v in p.switches.items() if k != "encode_on_cpu"}  # the step, not the caching
    rows = [dict(label=label, family=family, size=size, resolution=resolution, budget_gb=budget_gb,
                 row="plan", switches=switches, predicted_mb=p.predicted_peak_mb, usable_mb=p.usable_mb,
                 blocks=p.blocks)]
    base = "off" if switches.get("quantize_base") == "fp8" else "fp8"
    name = "bf16 streamed" if base == "off" else "fp8 streamed"
    other = {**switches, "quantize_base": base, "gradient_checkpointing": True, "checkpoint_blocks": 0}

    def peak(n: int) -> float:
        return predicted_peak_mb(cfg, {**other, "stream_blocks": n}, None, size, "cuda")

    lo, hi = 0, p.blocks  # the fewest streamed blocks that fit: peak falls as more are streamed
    if peak(hi) > p.usable_mb:
        rows.append({**rows[0], "row": name, "switches": {**other, "stream_blocks": hi},
                     "predicted_mb": peak(hi), "note": "does not fit"})
        return rows
    while lo < hi:
        mid = (lo + hi) // 2
        if peak(mid) <= p.usable_mb:
            hi = mid
        else:
            lo = mid + 1
    rows.append({**rows[0], "row": name, "switches": {**other, "stream_blocks": lo}, "predicted_mb": peak(lo)})
    return rows


def measure(row: dict, device: str, steps: int, warmup: int, tiny: bool) -> dict:
    """Train ``warmup + steps`` steps of ``row`` at its size (tiny: on the CPU, streamed blocks
    scaled to the tiny model) and return the measured peak and seconds per step."""
    from comfyui_persona.models.architectures import instantiate
    from comfyui_persona.trainers.memory.planner import repeated_block_count
    from comfyui_persona.trainers.memory.simulate import LiveTensorMeter, run_steps

    from train_memory import config

    switches = dict(row["switches"])
    size = "tiny" if tiny else row["size"]
    if tiny and switches.get("stream_blocks"):
        total = repeated_block_count(row["family"], None, "tiny")
        switches["stream_blocks"] = max(1, round(switches["stream_blocks"] * total / row["blocks"]))
    cfg = config(row["family"], "lora", 64 if tiny else row["resolution"], switches)
    comps = None
    try:
        start = time.monotonic()
        # built where it computes (fp32, then cast to bf16): the streamer moves its blocks' frozen
        # weights to pinned host memory itself, and a CPU build of a 20B model would take minutes
        comps = instantiate(row["family"], size, device=device, dtype=torch.bfloat16, tokenizers=False,
                            text_encoders=False)
        built = time.monotonic() - start
        meter = LiveTensorMeter() if device == "cpu" else None
        out = run_steps(comps, cfg, device, steps=warmup + steps, meter=meter, warmup=warmup)
        times = out["step_seconds"]
        return {"measured_mb": out["peak_bytes"] / 2 ** 20, "seconds_per_step": statistics.median(times),
                "loss": out["loss"], "build_s": round(built, 1), "error": None}
    except torch.cuda.OutOfMemoryError as exc:
        return {"measured_mb": None, "seconds_per_step": None, "error": f"out of memory: {str(exc)[:120]}"}
    finally:
        del comps
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def _switch_text(sw: dict) -> str:
    parts = [f"quantize {sw['quantize_base']}" if sw.get("quantize_base", "off") != "off" else "bf16 base",
             "checkpointing" if sw.get("gradient_checkpointing") else "",
             f"{sw['stream_blocks']} blocks streamed" if sw.get("stream_blocks") else "",
             sw.get("optimizer", ""), "fused backward" if sw.get("fused_backward") else ""]
    return ", ".join(p for p in parts if p)


def table(rows: list[dict], device_name: str) -> str:
    lines = [f"Device: {device_name}", "",
             "| family | px | budget | row | switches | predicted peak | measured peak | measured / predicted "
             "| s/step | vs the plan |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    plan_speed = {}
    for r in rows:
        sps = r.get("seconds_per_step")
        if r["row"] == "plan" and sps:
            plan_speed[r["label"]] = sps
        ratio = (r["measured_mb"] / r["predicted_mb"]) if r.get("measured_mb") and r.get("predicted_mb") else None
        rel = plan_speed[r["label"]] / sps if sps and r["label"] in plan_speed and r["row"] != "plan" else None
        lines.append(" | ".join([
            f"| {r['label']}", str(r["resolution"]), f"{r['budget_gb']} GB", r["row"], _switch_text(r["switches"]),
            f"{r['predicted_mb'] / 1024:.2f} GB",
            f"{r['measured_mb'] / 1024:.2f} GB" if r.get("measured_mb") else (r.get("error") or r.get("note") or "-"),
            f"{ratio:.3f}" if ratio else "-", f"{sps:.2f}" if sps else "-",
            (f"{rel:.2f}x faster" if rel >= 1 else f"{1 / rel:.2f}x slower") if rel else "-"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", type=lambda s: s.split(","), default=NEW_FAMILIES,
                    help=f"labels of PUBLISHED_PLANS (default {','.join(NEW_FAMILIES)})")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per row (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--predict-only", action="store_true", help="the rows' predictions, nothing trained")
    ap.add_argument("--tiny", action="store_true", help="CPU dry run on test-size models")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--bitsandbytes", choices=["auto", "yes", "no"], default="auto",
                    help="plan as if bitsandbytes is installed or not (auto: whether it imports here); with "
                         "--predict-only, the plans of a GPU machine that has it, memoised for it in the cache")
    args = ap.parse_args(argv)
    unknown = [f for f in args.families if f not in PUBLISHED_PLANS]
    if unknown:
        ap.error(f"--families: {unknown} are not published plans ({', '.join(PUBLISHED_PLANS)})")
    import importlib.util

    from comfyui_persona.trainers.speed.utilisation import device_peak

    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny and not args.predict_only:
        ap.error("no CUDA device: use --predict-only or --tiny")
    device = "cuda" if cuda else "cpu"
    bnb = importlib.util.find_spec("bitsandbytes") is not None if args.bitsandbytes == "auto" \
        else args.bitsandbytes == "yes"
    if bnb and importlib.util.find_spec("bitsandbytes") is None and not args.predict_only:
        ap.error("--bitsandbytes yes: bitsandbytes does not import here (only --predict-only can plan for it)")
    rows = []
    for label in args.families:
        for row in rows_for(label, bnb):
            if not args.predict_only and row.get("note") is None:
                row.update(measure(row, device, args.steps, args.warmup, args.tiny))
            rows.append(row)
            print(f"[published-plans] {label} {row['row']}: predicted {row['predicted_mb']:.0f} MB, "
                  f"measured {row.get('measured_mb')}, s/step {row.get('seconds_per_step')} {row.get('error') or ''}",
                  file=sys.stderr, flush=True)
            if args.json:  # after every row: a run stopped at its limit keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"device": device_peak(device)[1], "torch": torch.__version__,
                                                 "tiny": args.tiny, "rows": rows}, indent=2, default=str))
    print(table(rows, device_peak(device)[1] + (" (test-size models: peaks say nothing of a GPU)" if args.tiny else "")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
