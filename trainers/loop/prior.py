"""Class images for prior preservation: generated once by the frozen base model, cached on
disk by (model, prompt, resolution, seed, steps) and reused by every later run."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from PIL import Image

log = logging.getLogger(__name__)


def cache_key(model_hash: str, prompt: str, resolution: int, seed: int, steps: int) -> str:
    text = json.dumps([model_hash, prompt, resolution, seed, steps])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def class_images(components, prompt: str, count: int, resolution: int, seed: int, steps: int,
                 cache_root: Path, dtype: torch.dtype = torch.float32) -> tuple[list[Path], int]:
    """Paths of ``count`` class images, generating only the missing ones (with the models
    where the caller placed them: ``place_for_class_images``; under autocast to ``dtype``
    where that is a half precision).

    Returns (paths, how many were generated now). Image i always uses seed + i, so a
    partly filled cache is completed with exactly the images a full run would make.
    """
    folder = Path(cache_root) / cache_key(components.model_hash, prompt, resolution, seed, steps)
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "class_images.json"
    if not meta.is_file():
        meta.write_text(json.dumps({"model": components.source, "model_hash": components.model_hash,
                                    "prompt": prompt, "resolution": resolution, "seed": seed,
                                    "steps": steps}, indent=2))
    paths = [folder / f"{i:05d}.png" for i in range(count)]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        from ...models.families import get_family

        fam = get_family(components.family)
        pipe = fam.pipeline(components)  # its models already placed (trainers/loop/data.py)
        device = next(components.denoiser.parameters()).device
        half = dtype != torch.float32
        for i in todo:
            gen = torch.Generator("cpu").manual_seed(seed + i)
            with torch.autocast(device.type, dtype=dtype, enabled=half):
                image = fam.sample(pipe, components, prompt, resolution, steps, gen)
            tmp = paths[i].with_suffix(".tmp.png")
            image.save(tmp)
            tmp.replace(paths[i])
        log.info("class images: generated %d, reused %d (%s)", len(todo), count - len(todo), folder)
    return paths, len(todo)


def load_images(paths: list[Path], size: int | tuple[int, int]) -> torch.Tensor:
    """Images as a [N, 3, H, W] tensor in -1..1, each scaled to cover ``size`` (R, or (W, H))
    and centre-cropped to it."""
    return load_sized(paths, size)[0]


def load_sized(paths: list[Path], size: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`load_images` and each image's SDXL size conditioning ``[N, 6]``: original
    (height, width), crop (top, left) in the scaled image, target (height, width)."""
    import numpy as np

    from ...core.buckets import cover_crop

    w, h = (size, size) if isinstance(size, int) else size
    out, ids = [], []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            scale, left, top = cover_crop(im.width, im.height, (w, h))
            ids.append([im.height, im.width, top, left, h, w])
            if (im.width, im.height) != (w, h):
                sw, sh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
                im = im.resize((sw, sh), Image.Resampling.LANCZOS).crop((left, top, left + w, top + h))
            out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 127.5 - 1.0, torch.tensor(ids, dtype=torch.float32)
