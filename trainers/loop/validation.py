"""Validation during training: fixed prompts and seeds -> an image grid in samples/, and,
when the reference photos are faces, the identity score of each image against them."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...core.imaging import grid

log = logging.getLogger(__name__)


def sample_images(comps, cfg, device, dtype, prompts: list[str], seeds: list[int],
                  steps: int, cached: dict | None = None) -> list[np.ndarray]:
    from ...models.families import get_family

    fam = get_family(comps.family)
    moved = [m for m in [comps.vae, *comps.text_encoders]]
    devices = [next(m.parameters()).device for m in moved]
    for m in moved:
        m.to(device)
    was_training = comps.denoiser.training
    comps.denoiser.eval()
    pipe = fam.pipeline(comps)
    images = []
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            for prompt in prompts:
                text = cfg.fill(prompt)
                for seed in seeds:
                    gen = torch.Generator("cpu").manual_seed(seed)
                    out = fam.sample(pipe, comps, text, cfg.resolution, steps, gen, "np",
                                 cond=(cached or {}).get(text))
                    images.append(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8))
    finally:
        comps.denoiser.train(was_training)
        for m, d in zip(moved, devices):
            m.to(d)
    return images


def validate(comps, cfg, run_dir: Path, step: int, device, dtype, cached: dict | None = None) -> dict:
    images = sample_images(comps, cfg, device, dtype, cfg.validation_prompts, cfg.validation_seeds,
                           cfg.validation_steps, cached)
    path = run_dir / "samples" / f"step-{step:06d}.png"
    Image.fromarray(grid(images, columns=len(cfg.validation_seeds), cell=max(cfg.resolution, 64))).save(path)
    for i, im in enumerate(images):
        Image.fromarray(im).save(run_dir / "samples" / f"step-{step:06d}-{i:02d}.png")
    info = {"grid": str(path), "images": len(images)}
    if cfg.validation_identity != "off":
        info.update(identity_of(images, cfg))
    return info


def identity_of(images: list[np.ndarray], cfg) -> dict:
    """Identity score of each validation image against the dataset's face photos (NaN: no
    face) and, when the dataset holds photos out, against those and the copy-paste score."""
    from ...faces.dataset import read_dataset
    from ...faces.identity import Reference, copy_paste, get_embedder

    embedder = get_embedder(cfg.validation_identity)

    def photos(holdout: bool):
        return [np.asarray(Image.open(it.image).convert("RGB")) for it in read_dataset(cfg.dataset, holdout)
                if it.kind == "face"]

    emb = embedder.embed(images)
    train_emb = embedder.embed(photos(False))
    scores = Reference(train_emb).scores(emb)
    info = {"identity": _rounded(scores), "identity_mean": _mean(scores),
            "faceless": int(sum(not f for f in emb.found)), "identity_embedder": embedder.name,
            "identity_threshold": embedder.threshold}
    held = photos(True)
    if held:
        held_emb = embedder.embed(held)
        on_holdout = Reference(held_emb).scores(emb)
        info.update(identity_holdout=_rounded(on_holdout), identity_holdout_mean=_mean(on_holdout),
                    copy_paste_mean=_mean(copy_paste(emb, train_emb, held_emb)))
    return info


def _rounded(values: np.ndarray) -> list:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def _mean(values: np.ndarray) -> float | None:
    valid = values[~np.isnan(values)]
    return round(float(valid.mean()), 4) if len(valid) else None
