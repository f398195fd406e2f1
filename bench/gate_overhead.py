"""Identity-gate overhead per attempt (face detection + embedding) at 512 and 1024 px,
against the cost of one 30-step SD1.5 generation at 512 px on the same device.

Prints a Markdown table. The SD1.5 generation uses the real architecture with random
weights (same cost as real weights); on a CPU its 30 steps are extrapolated from a few
measured steps, since per-step cost is constant.

    python bench/gate_overhead.py [--repeats 5] [--gen-steps 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def time_embed(embedder, image: np.ndarray, repeats: int) -> float:
    embedder.embed([image])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        embedder.embed([image])
    return (time.perf_counter() - start) / repeats


def time_generation(steps_measured: int, device: str) -> float:
    """Seconds for 30 steps of SD1.5 at 512 px with CFG (extrapolated from steps_measured)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from comfyui_persona.models.build import build_model

    cache = Path(tempfile.gettempdir()) / "persona-bench-sd15"
    comps_dir = build_model(cache, "sd15")
    pipe = StableDiffusionPipeline.from_pretrained(str(comps_dir), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    dtype = torch.float16 if device == "cuda" else torch.float32
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe("warm-up", num_inference_steps=1, height=512, width=512)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    pipe("a photo of a person", num_inference_steps=steps_measured, height=512, width=512)
    if device == "cuda":
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps_measured
    return per_step * 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gen-steps", type=int, default=3)
    parser.add_argument("--skip-generation", action="store_true")
    args = parser.parse_args()
    from comfyui_persona.faces.identity import DlibEmbedder, FacenetEmbedder
    from comfyui_persona.faces.samples import astronaut

    device = "cuda" if torch.cuda.is_available() else "cpu"
    face = astronaut()
    images = {512: face, 1024: np.asarray(Image.fromarray(face).resize((1024, 1024), Image.Resampling.BICUBIC))}
    embedders = {"dlib": DlibEmbedder(), "facenet (random weights, same cost)": FacenetEmbedder(weights="random", device=device)}
    gen = None if args.skip_generation else time_generation(args.gen_steps, device)
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'} ({torch.get_num_threads()} threads)")
    if gen:
        print(f"one 30-step SD1.5 512 px generation: {gen:.2f} s (from {args.gen_steps} measured steps)")
    print("| embedder | image px | seconds per attempt | share of one generation | target |")
    print("|---|---|---|---|---|")
    for name, emb in embedders.items():
        for px, image in images.items():
            sec = time_embed(emb, image, args.repeats)
            share = f"{100 * sec / gen:.2f} %" if gen else "n/a"
            met = ("met" if sec / gen <= 0.05 else "MISSED") if gen else "n/a"
            print(f"| {name} | {px} | {sec:.3f} | {share} | <= 5 % ({met}) |")


if __name__ == "__main__":
    main()
