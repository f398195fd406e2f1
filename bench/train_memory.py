"""Training memory and throughput of SD1.5, SDXL and FLUX at their real sizes with random
weights (no download): (a) no memory technique, (b) techniques added one at a time (the
ablation of reference 000, Fig. 7d), (c) the planner's choice for VRAM budgets, and for SD1.5
and SDXL LoRA (s) the speed switches added one at a time to bf16 with the caches (the
configuration whose speed was measured at 971d0c8), then four images per step.

Each row trains optimizer steps through the trainer's own setup and step code
(``trainers.memory.simulate.run_steps``) on random latents and zero conditioning, i.e. with
the caches of the real loop; rows without the caches keep the VAE and text encoders on the
device and run them every step. Per row: ``--warmup`` steps (default 3) are excluded, then
``--repeats`` x ``--steps`` steps are timed (GPU default 3 x 20); the row reports the median
step time, its spread (the range of the repeats' medians over the median), peak allocated
(``torch.cuda.max_memory_allocated``; on a CPU, ``--tiny``, the live-tensor meter, the same
quantity without the allocator's rounding), peak reserved, and model-FLOPs utilisation: the
step's FLOPs counted by ``torch.utils.flop_counter`` (``trainers.speed.utilisation``) over
the median time and the device's named peak bf16 FLOP/s. Prints a Markdown table and
writes JSON.

    python bench/train_memory.py --plans              # any machine: the published-size plans (meta device)
    python bench/train_memory.py                      # GPU: real sizes, budgets 8/12/16/24 GB
    python bench/train_memory.py --tiny --json t.json # CPU: tiny models in a minute or two
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

TARGETS_GB = {("sd15", "lora"): 4, ("sd15", "dreambooth"): 8, ("sdxl", "lora"): 8, ("flux", "lora"): 12}
RESOLUTION = {"sd15": 512, "sdxl": 1024, "flux": 1024}
# the LoRA plans at published size each family's users need (budget in GB, resolution): searched
# on the meta device, so printed on any machine, and marked predicted until a GPU measures them
PUBLISHED_PLANS = {"sd15": (4, 512), "sdxl": (8, 1024), "flux": (8, 1024), "z_image": (6, 1024), "flux2": (6, 1024),
                   "flux2:klein-9b": (8, 1024), "qwen_image": (10, 1024), "flux2_dev": (16, 1024)}  # family[:published size other than the first]
# steps/s of LoRA at batch 1, bf16, cached latents and embeddings, at 971d0c8 on one H100 80GB
# (the project's issues): what the speed switches are measured against (target: 3x)
SPEED_AT_971D0C8 = {"sd15": 6.74, "sdxl": 1.99}


def ablation(family: str, method: str, bnb: bool) -> list[tuple[str, dict]]:
    """(label, switches) from no technique to all of them, one added per row."""
    steps = [("(a) no technique", dict(mixed_precision="no", gradient_checkpointing=False, optimizer="adamw",
                                       quantize_base="off", cache_latents="off", cache_text_embeddings=False))]
    add = [("+ latent and text-embedding caches (encoders off the device)",
            dict(cache_latents="memory", cache_text_embeddings=True)),
           ("+ bf16 frozen weights and compute", dict(mixed_precision="bf16")),
           ("+ gradient checkpointing", dict(gradient_checkpointing=True)),
           ("+ 8-bit AdamW" if bnb else "+ Adafactor", dict(optimizer="adamw8bit" if bnb else "adafactor"))]
    if method == "lora":
        add.append(("+ quantized base (nf4)" if bnb else "+ quantized base (fp8)",
                    dict(quantize_base="nf4" if bnb else "fp8")))
    current = dict(steps[0][1])
    for label, change in add:
        current = {**current, **change}
        steps.append((label, dict(current)))
    return steps


def speed_ablation(family: str) -> list[tuple[str, dict]]:
    """(label, switches) from bf16 with the caches to every speed switch, one added per row,
    then four images per step (LoRA)."""
    from comfyui_persona.models.families import get_family

    current = dict(mixed_precision="bf16", cache_latents="memory", cache_text_embeddings=True,
                   gradient_checkpointing=False, optimizer="adamw", quantize_base="off")
    steps = [("(s) bf16 with the caches", dict(current))]
    add = [("+ fused AdamW", dict(fused_optimizer=True))]
    if get_family(family).convolutional:
        add.append(("+ channels-last", dict(channels_last=True)))
    add += [("+ compiled blocks", dict(compile="blocks")), ("+ CUDA graphs", dict(cuda_graphs=True)),
            ("+ 4 images per step", dict(batch_size=4))]
    for label, change in add:
        current = {**current, **change}
        steps.append((label, dict(current)))
    return steps


def config(family, method, resolution, switches, rank=16):
    from comfyui_persona.trainers.config import TrainConfig

    return TrainConfig(base_model="(benchmark)", dataset="(benchmark)", family=family, method=method,
                       resolution=resolution, rank=rank, alpha=float(rank), learning_rate=1e-5,
                       t5_max_length=512, **switches)


def measure(family, size, cfg, device, args, peak) -> dict:
    """One row's measurement, with its model-FLOPs utilisation against ``peak`` (FLOP/s)."""
    import statistics

    from comfyui_persona.models.architectures import instantiate
    from comfyui_persona.trainers.memory.simulate import LiveTensorMeter, run_steps

    keep_text = not cfg.cache_text_embeddings or cfg.train_text_encoder
    comps = None
    try:
        comps = instantiate(family, size, device=device if cfg.stream_blocks == 0 else "cpu", tokenizers=False,
                            text_encoders=keep_text)
        meter = LiveTensorMeter() if device == "cpu" else None
        out = run_steps(comps, cfg, device, steps=args.warmup + args.steps * args.repeats, meter=meter,
                        warmup=args.warmup)
        times = out["step_seconds"]
        groups = [statistics.median(times[i * args.steps:(i + 1) * args.steps]) for i in range(args.repeats)]
        median = statistics.median(times)
        m = {"peak_mb": out["peak_bytes"] / 2 ** 20, "steps_per_s": 1 / median, "error": None,
             "reserved_mb": out["reserved_bytes"] / 2 ** 20 if out["reserved_bytes"] is not None else None,
             "seconds_per_step": median, "spread": (max(groups) - min(groups)) / median,
             "warmup_s": out["warmup_seconds"]}
        return {**m, **_utilisation(cfg, size, m, peak)}
    except torch.cuda.OutOfMemoryError:
        return {"peak_mb": None, "steps_per_s": None, "error": "out of memory"}
    finally:
        del comps
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def _utilisation(cfg, size, m, peak) -> dict:
    from comfyui_persona.trainers.speed.utilisation import step_flops, utilisation

    if not m.get("seconds_per_step"):
        return {"tflops": None, "mfu": None}
    return utilisation(step_flops(cfg, None, size), m["seconds_per_step"], peak)


def run(args) -> dict:
    import importlib.util

    from comfyui_persona.trainers.memory.planner import PlanError, plan, predicted_peak_mb

    from comfyui_persona.trainers.speed.utilisation import device_peak

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    size = "tiny" if args.tiny else "real"
    peak, peak_name = device_peak(device)
    bnb = importlib.util.find_spec("bitsandbytes") is not None and device == "cuda"
    rows = []
    for family in args.families:
        for method in (["lora", "dreambooth"] if family == "sd15" else ["lora"]):
            res = args.resolution or (64 if args.tiny else RESOLUTION[family])
            baseline = None
            for label, switches in ablation(family, method, bnb):
                cfg = config(family, method, res, switches)
                predicted = predicted_peak_mb(cfg, switches, None, size, device)
                m = measure(family, size, cfg, device, args, peak)
                if baseline is None:
                    baseline = m
                rows.append(_row(family, method, res, label, switches, predicted, m, baseline, None))
                _print_progress(rows[-1])
            plan_cfg = config(family, method, res, {})
            budgets = args.budgets
            if args.tiny:  # budgets across the tiny model's own range, from leanest to no technique
                from comfyui_persona.trainers.memory.planner import candidates, leanest

                lean = predicted_peak_mb(plan_cfg, leanest(candidates(plan_cfg, device, bnb)), None, size, device)
                top = max(r["predicted_peak_mb"] or 0 for r in rows[-len(ablation(family, method, bnb)):])
                budgets = [(lean * 1.001 + (top - lean) * f) / 1024 for f in (0.0, 0.35, 0.7, 1.05)]
            for gb in budgets:
                label = f"(c) planner, budget {gb:g} GB" if gb >= 1 else f"(c) planner, budget {gb * 1024:.1f} MB"
                try:
                    p = plan(plan_cfg, gb * 1024, device, None, size, bnb=bnb)
                except PlanError as exc:
                    rows.append({**_row(family, method, res, label, {}, None, {"peak_mb": None, "steps_per_s": None,
                                                                               "error": str(exc)}, baseline, gb)})
                    _print_progress(rows[-1])
                    continue
                m = measure(family, size, p.apply(plan_cfg), device, args, peak)
                rows.append(_row(family, method, res, label, p.switches, p.predicted_peak_mb, m, baseline, gb))
                _print_progress(rows[-1])
            if method == "lora" and family in SPEED_AT_971D0C8:
                rows += _speed_rows(family, res, size, device, args, peak)
    info = {"device": peak_name, "size": size, "torch": torch.__version__, "warmup": args.warmup,
            "steps_per_row": args.steps, "repeats": args.repeats, "bitsandbytes": bnb}
    return {"info": info, "rows": rows}


def _speed_rows(family, res, size, device, args, peak) -> list[dict]:
    """The (s) rows: each speed switch added to bf16 with the caches, against the first row and,
    on a GPU at batch 1, against the steps/s measured at 971d0c8."""
    from comfyui_persona.trainers.memory.planner import predicted_peak_mb

    rows, reference = [], None
    for label, switches in speed_ablation(family):
        cfg = config(family, "lora", res, switches)
        m = measure(family, size, cfg, device, args, peak)
        reference = reference or m
        predicted = predicted_peak_mb(cfg, switches, None, size, device)
        rows.append(_row(family, "lora", res, label, switches, predicted, m, reference, None, cfg.batch_size, "speed"))
        if not args.tiny and m["steps_per_s"] and cfg.batch_size == 1:
            rows[-1]["vs_971d0c8"] = m["steps_per_s"] / SPEED_AT_971D0C8[family]
        _print_progress(rows[-1])
    return rows


def _row(family, method, res, label, switches, predicted, m, baseline, budget_gb, batch=1, kind=None) -> dict:
    speed = None
    if m["steps_per_s"] and baseline and baseline.get("steps_per_s"):
        speed = m["steps_per_s"] / baseline["steps_per_s"]
    target = TARGETS_GB.get((family, method))
    kind = kind or ("planner" if budget_gb else "memory")
    return {"family": family, "method": method, "resolution": res, "config": label, "kind": kind, "switches": switches,
            "predicted_peak_mb": predicted, "peak_mb": m["peak_mb"], "steps_per_s": m["steps_per_s"], "batch": batch,
            "samples_per_s": m["steps_per_s"] * batch if m["steps_per_s"] else None,
            "reserved_mb": m.get("reserved_mb"), "spread": m.get("spread"), "tflops": m.get("tflops"),
            "mfu": m.get("mfu"), "warmup_s": m.get("warmup_s"),
            "speed_vs_a": speed, "error": m["error"], "budget_gb": budget_gb,
            "within_budget": (m["peak_mb"] <= budget_gb * 1024) if (budget_gb and m["peak_mb"] is not None) else None,
            "target_gb": target}


def _fmt_mb(v):
    if v is None:
        return "-"
    return f"{v / 1024:.2f} GB" if v >= 1024 else f"{v:.2f} MB"


def _print_progress(row):
    print(f"  {row['family']} {row['method']} {row['config']}: {_fmt_mb(row['peak_mb'])}", file=sys.stderr)


def table(result: dict) -> str:
    i = result["info"]
    lines = [f"Device: {i['device']}; sizes: {i['size']}; torch {i['torch']}; {i['warmup']} warm-up steps excluded, "
             f"{i['repeats']} x {i['steps_per_row']} steps timed per row; bitsandbytes: {i['bitsandbytes']}", "",
             "| family | method | px | configuration | predicted peak | peak allocated | peak reserved | steps/s "
             "(median) | samples/s | spread | speed vs (a) or (s) | TFLOP/s | MFU | warm-up s | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        note = r["error"] or ""
        if r["within_budget"] is not None:
            note = "within budget" if r["within_budget"] else "OVER BUDGET"
        if r["predicted_peak_mb"] and r["peak_mb"]:
            note += f" (measured/predicted {r['peak_mb'] / r['predicted_peak_mb']:.2f})"
        if r.get("vs_971d0c8"):
            note += f"; {r['vs_971d0c8']:.2f}x the {SPEED_AT_971D0C8[r['family']]} steps/s of 971d0c8 (target 3x)"
        sps = f"{r['steps_per_s']:.2f}" if r["steps_per_s"] else "-"
        samples = f"{r['samples_per_s']:.2f}" if r.get("samples_per_s") else "-"
        speed = f"{r['speed_vs_a']:.2f}x" if r["speed_vs_a"] else "-"
        spread = f"{r['spread']:.0%}" if r.get("spread") is not None else "-"
        tflops = f"{r['tflops']:.2f}" if r.get("tflops") is not None else "-"
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        warm = f"{r['warmup_s']:.1f}" if r.get("warmup_s") is not None else "-"
        lines.append(f"| {r['family']} | {r['method']} | {r['resolution']} | {r['config']} | "
                     f"{_fmt_mb(r['predicted_peak_mb'])} | {_fmt_mb(r['peak_mb'])} | {_fmt_mb(r.get('reserved_mb'))} | "
                     f"{sps} | {samples} | {spread} | {speed} | {tflops} | {mfu} | {warm} | {note.strip('; ')} |")
    return "\n".join(lines)


def plans(families: list[str]) -> str:
    """The planner's choice for each family's published-size LoRA at its budget
    (``PUBLISHED_PLANS``), predicted on the meta device: the whole run (class images, caching,
    the step) within the budget less the headroom, at the best predicted speed found."""
    from comfyui_persona.trainers.config import TrainConfig
    from comfyui_persona.trainers.memory.planner import PlanError, plan

    lines = ["| family | px | budget | usable | step peak | whole run | caching on the CPU | switches | "
             "predicted speed (vs fp32, no technique) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label in families:
        budget_gb, resolution = PUBLISHED_PLANS[label]
        family, _, size = label.partition(":")
        cfg = TrainConfig(base_model="(plan)", dataset="(plan)", family=family, resolution=resolution,
                          mixed_precision="bf16", rank=16, alpha=16)
        try:
            p = plan(cfg, budget_gb * 1024, "cpu", None, size or "real", bnb=True, compile_ok=True)
        except PlanError as exc:
            lines.append(f"| {label} | {resolution} | {budget_gb} GB | - | - | - | - | {exc} | - |")
            continue
        sw = p.switches
        chosen = [f"quantize {sw['quantize_base']}" if sw.get("quantize_base", "off") != "off" else "",
                  "checkpointing" if sw.get("gradient_checkpointing") else "",
                  f"{sw['stream_blocks']}/{p.blocks} blocks streamed" if sw.get("stream_blocks") else "",
                  sw.get("optimizer", ""), "fused backward" if sw.get("fused_backward") else ""]
        lines.append(f"| {label} | {resolution} | {budget_gb} GB | {_fmt_mb(p.usable_mb)} | "
                     f"{_fmt_mb(p.predicted_peak_mb)} | {_fmt_mb(p.whole_run_peak_mb)} | "
                     f"{', '.join(sw.get('encode_on_cpu') or []) or '-'} | {', '.join(c for c in chosen if c)} | "
                     f"{p.relative_speed:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny models on the CPU (seconds per row)")
    ap.add_argument("--families", type=lambda s: s.split(","), default=["sd15", "sdxl", "flux"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default 20; 4 with --tiny)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of the timed steps (default 3; 1 with --tiny)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument("--resolution", type=int, default=0, help="override the resolution of every family")
    ap.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=[8, 12, 16, 24])
    ap.add_argument("--json", type=Path, default=None, help="write the rows here")
    ap.add_argument("--plans", action="store_true", help="print the published-size LoRA plans (meta device; "
                                                         "--families picks them, default all)")
    args = ap.parse_args(argv)
    if args.plans:
        chosen = args.families if "--families" in (argv if argv is not None else sys.argv) else list(PUBLISHED_PLANS)
        print(plans(chosen))
        return 0
    args.steps = args.steps or (4 if args.tiny else 20)
    args.repeats = args.repeats or (1 if args.tiny else 3)
    result = run(args)
    text = table(result)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
