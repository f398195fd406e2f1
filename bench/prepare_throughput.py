"""Throughput of `persona prepare` (decode + detect + align + score + write) on this machine.

Prints a Markdown table. Photos are made from the real sample faces: 512 px photos, and
12-megapixel (4000x3000) JPEGs with the face at the size a phone camera gives.

    python bench/prepare_throughput.py [--count 20] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def make_photos(folder: Path, count: int, kind: str) -> None:
    from comfyui_persona.faces.samples import astronaut, grace_hopper

    rng = np.random.default_rng(0)
    sources = [Image.fromarray(astronaut()), Image.fromarray(grace_hopper()).resize((512, 600))]
    for i in range(count):
        img = sources[i % 2].rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BICUBIC)
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
        if kind == "512px":
            img.convert("RGB").resize((512, 512), Image.Resampling.LANCZOS).save(folder / f"p{i:03d}.jpg", quality=92)
        else:
            canvas = Image.new("RGB", (4000, 3000), tuple(int(v) for v in rng.integers(40, 200, 3)))
            face = img.convert("RGB").resize((2600, 2600), Image.Resampling.BICUBIC)
            canvas.paste(face, (int(rng.integers(0, 1400)), 200))
            canvas.save(folder / f"p{i:03d}.jpg", quality=90)


def run(kind: str, count: int) -> dict:
    from comfyui_persona.faces.config import PrepareConfig
    from comfyui_persona.faces.dataset import prepare_dataset
    from comfyui_persona.faces.detect import FaceDetector

    FaceDetector()  # weights loaded once, outside the timing (as in a running ComfyUI)
    with tempfile.TemporaryDirectory() as tmp:
        photos, out = Path(tmp) / "photos", Path(tmp) / "ds"
        photos.mkdir()
        make_photos(photos, count, kind)
        megapixels = np.mean([np.prod(Image.open(p).size) for p in photos.iterdir()]) / 1e6
        start = time.perf_counter()
        result = prepare_dataset(photos, out, PrepareConfig(resolution=512))
        seconds = time.perf_counter() - start
    return {"photos": kind, "count": count, "megapixels": round(float(megapixels), 1),
            "accepted": len(result.accepted), "seconds": round(seconds, 2),
            "photos_per_s": round(count / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    targets = {"512px": 10.0, "12MP": 4.0}
    rows = [run(kind, args.count) for kind in ("512px", "12MP")]
    from comfyui_persona.faces.dataset import max_workers

    print("| photos | count | MP | accepted | seconds | photos/s | target | workers | torch threads |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = targets[r["photos"]]
        ok = "met" if r["photos_per_s"] >= t else "MISSED"
        print(f"| {r['photos']} | {r['count']} | {r['megapixels']} | {r['accepted']} | {r['seconds']} | "
              f"{r['photos_per_s']} | >= {t} ({ok}) | {max_workers()} | {torch.get_num_threads()} |")


if __name__ == "__main__":
    main()
