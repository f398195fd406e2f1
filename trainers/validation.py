"""Validation during training: fixed prompts and seeds -> an image grid in samples/, and,
when the reference photos are faces, the identity score of each image against them."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..imaging import grid

log = logging.getLogger(__name__)


def sample_images(comps, cfg, device, dtype, prompts: list[str], seeds: list[int],
                  steps: int) -> list[np.ndarray]:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    vae_device = next(comps.vae.parameters()).device
    te_device = next(comps.text_encoder.parameters()).device
    comps.vae.to(device)
    comps.text_encoder.to(device)
    was_training = comps.unet.training
    comps.unet.eval()
    pipe = StableDiffusionPipeline(
        vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
        scheduler=DDIMScheduler.from_config(comps.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images = []
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            for prompt in prompts:
                for seed in seeds:
                    gen = torch.Generator("cpu").manual_seed(seed)
                    out = pipe(cfg.fill(prompt), height=cfg.resolution, width=cfg.resolution,
                               num_inference_steps=steps, generator=gen, output_type="np").images[0]
                    images.append(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8))
    finally:
        comps.unet.train(was_training)
        comps.vae.to(vae_device)
        comps.text_encoder.to(te_device)
    return images


def validate(comps, cfg, run_dir: Path, step: int, device, dtype) -> dict:
    images = sample_images(comps, cfg, device, dtype, cfg.validation_prompts, cfg.validation_seeds,
                           cfg.validation_steps)
    path = run_dir / "samples" / f"step-{step:06d}.png"
    Image.fromarray(grid(images, columns=len(cfg.validation_seeds), cell=max(cfg.resolution, 64))).save(path)
    for i, im in enumerate(images):
        Image.fromarray(im).save(run_dir / "samples" / f"step-{step:06d}-{i:02d}.png")
    info = {"grid": str(path), "images": len(images)}
    if cfg.validation_identity != "off":
        info.update(identity_of(images, cfg))
    return info


def identity_of(images: list[np.ndarray], cfg) -> dict:
    """Identity score of each validation image against the dataset photos (NaN: no face)."""
    from ..faces.dataset import read_dataset
    from ..faces.identity import get_embedder, identity_scores

    embedder = get_embedder(cfg.validation_identity)
    refs = [np.asarray(Image.open(it.image).convert("RGB")) for it in read_dataset(cfg.dataset)]
    scores, found = identity_scores(embedder, images, refs)
    valid = scores[~np.isnan(scores)]
    return {"identity": [None if np.isnan(v) else round(float(v), 4) for v in scores],
            "identity_mean": round(float(valid.mean()), 4) if len(valid) else None,
            "faceless": int(sum(not f for f in found)), "identity_embedder": embedder.name,
            "identity_threshold": embedder.threshold}
