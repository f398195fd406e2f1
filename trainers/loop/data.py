"""Phase 2 of a run, data and caches: the dataset's images and captions, the class images of
prior preservation, the latent and text-embedding caches (after which the VAE and the text
encoders leave the device, or are deleted where the family says so), the identity loss, and
the batches each step samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..memory import techniques as memory
from .captions import dropout_caption, step_caption
from .prior import class_images, load_images


@dataclass
class Examples:
    """What a step samples from: latents (or pixels) and prompt embeddings (or prompts)."""

    count: int
    latent_mean: torch.Tensor | None = None
    latent_std: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    weights: torch.Tensor | None = None  # [N, 1, h, w] per-latent-pixel loss weights (masked_loss)


@dataclass
class TrainingData:
    instance: Examples
    classes: Examples | None  # prior preservation
    identity: object | None  # the identity loss (identity_loss_weight > 0)
    validation_cond: dict | None  # cached conditioning of the validation prompts (families without encoders)
    class_images_generated: int = 0


def _encode_latent_dist(vae, pixels: torch.Tensor, device, dtype, slicing: bool):
    means, stds = [], []
    chunk = 1 if slicing else len(pixels)
    with torch.no_grad():
        for i in range(0, len(pixels), chunk):
            dist = vae.encode(pixels[i:i + chunk].to(device, dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def encode_cached(s, prompts: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Each distinct prompt's conditioning, on the CPU, computed once."""
    out = {}
    with torch.no_grad():
        for p in sorted(set(prompts)):
            cond = s.family.encode(s.comps, [p], s.device, s.cfg)
            out[p] = {k: v[0].float().cpu() for k, v in cond.items()}
    return out


def examples(s, pixels: torch.Tensor, prompts: list[str], cache_dir: Path | None) -> Examples:
    cfg = s.cfg
    data = Examples(count=len(pixels), prompts=prompts)
    if cfg.cache_latents != "off":
        cache_file = cache_dir / "latents.safetensors" if cache_dir else None
        if cache_file is not None and cache_file.is_file():
            from safetensors.torch import load_file

            cached = load_file(str(cache_file))
            if cached["mean"].shape[0] == len(pixels):
                data.latent_mean, data.latent_std = cached["mean"], cached["std"]
        if data.latent_mean is None:
            data.latent_mean, data.latent_std = _encode_latent_dist(
                s.comps.vae, pixels, s.device, s.dtype, cfg.vae_slicing)
            if cache_file is not None:
                from safetensors.torch import save_file

                cache_file.parent.mkdir(parents=True, exist_ok=True)
                save_file({"mean": data.latent_mean, "std": data.latent_std}, str(cache_file))
    else:
        data.pixels = pixels
    if cfg.cache_text_embeddings and not cfg.train_text_encoder and not cfg.shuffle_tags:
        extra = [dropout_caption(cfg)] if cfg.caption_dropout > 0 else []
        data.embeddings = encode_cached(s, prompts + extra)
    return data


def prepare_data(s) -> TrainingData:
    from ...faces.dataset import read_dataset

    cfg, comps = s.cfg, s.comps
    items = read_dataset(cfg.dataset)
    pixels = load_images([it.image for it in items], cfg.resolution)
    if cfg.caption_source == "dataset":
        prompts = [it.caption or cfg.fill(cfg.instance_prompt) for it in items]
    else:
        prompts = [cfg.fill(cfg.instance_prompt)] * len(items)
    generated, class_pixels = 0, None
    cache_root = cfg.class_cache_dir()
    if cfg.prior_preservation:
        with s.accelerator.main_process_first():  # one process fills the shared cache
            paths, generated = class_images(comps, cfg.fill(cfg.class_prompt), cfg.num_class_images,
                                            cfg.resolution, cfg.seed, cfg.class_images_steps, cache_root,
                                            s.device)
        class_pixels = load_images(paths, cfg.resolution)
    for module in [comps.vae, *comps.text_encoders]:
        memory.cast_frozen(module, s.dtype)
    instance = examples(s, pixels, prompts, s.run_dir / "cache" if cfg.cache_latents == "disk" else None)
    if cfg.masked_loss:
        instance.weights = loss_weights(items, cfg, s.family.latent_shape(comps, cfg.resolution)[1:])
    classes = None
    if class_pixels is not None:
        class_cache = (cache_root / "latents" / s.digest) if cfg.cache_latents == "disk" else None
        classes = examples(s, class_pixels, [cfg.fill(cfg.class_prompt)] * len(class_pixels), class_cache)
    identity = None
    if cfg.identity_loss_weight > 0:
        from .identity_loss import build_identity_loss

        identity = build_identity_loss(cfg, items, pixels, s.device)
    if cfg.cache_latents != "off" and identity is None:  # the identity loss decodes with the VAE
        memory.offload(comps.vae)
    validation_cond = None
    if instance.embeddings:
        if not s.family.keeps_text_encoders:  # never resident while training
            if cfg.validate_every:
                validation_cond = encode_cached(s, [cfg.fill(p) for p in cfg.validation_prompts])
            comps.text_encoder = comps.text_encoder_2 = None
            memory.empty_cache(s.device)
        else:
            for te in comps.text_encoders:
                memory.offload(te)
    return TrainingData(instance, classes, identity, validation_cond, generated)


def loss_weights(items, cfg, size: tuple[int, int]) -> torch.Tensor:
    """Each image's face mask at the latent size (area-averaged), as background_weight outside
    the face rising to 1 inside it."""
    import numpy as np
    from PIL import Image

    missing = [str(it.image) for it in items if it.mask is None or not Path(it.mask).is_file()]
    if missing:
        raise cfg.field_error("masked_loss", f"needs a mask for every image (persona prepare writes them); "
                                             f"none for {missing[:3]}")
    masks = []
    for it in items:
        with Image.open(it.mask) as im:
            im = im.convert("L").resize((cfg.resolution, cfg.resolution), Image.Resampling.BILINEAR)
            masks.append(np.asarray(im, np.float32) / 255.0)
    m = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks))[:, None], size)
    return cfg.background_weight + (1.0 - cfg.background_weight) * m


def batch(s, data: Examples, idx: torch.Tensor, gen: torch.Generator, vary_captions: bool = False):
    """(latents, prompt embeddings) of the items ``idx``; noise for latent sampling from ``gen``;
    ``vary_captions``: caption dropout and tag shuffling (``captions``) for instance images."""
    comps, cfg = s.comps, s.cfg
    if data.latent_mean is not None:
        mean, std = data.latent_mean[idx], data.latent_std[idx]
    else:
        with torch.no_grad():
            dist = comps.vae.encode(data.pixels[idx].to(s.device, s.dtype)).latent_dist
        mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
    latents = (mean + std * torch.randn(mean.shape, generator=gen) - comps.vae_shift) * comps.vae_scale
    prompts = [data.prompts[i] for i in idx.tolist()]
    if vary_captions:
        prompts = [step_caption(p, cfg, gen) for p in prompts]
    if data.embeddings:
        cond = {k: torch.stack([data.embeddings[p][k] for p in prompts]) for k in data.embeddings[prompts[0]]}
    else:
        ctx = torch.enable_grad() if cfg.train_text_encoder else torch.no_grad()
        with ctx:
            cond = s.family.encode(comps, prompts, s.device, cfg)
    return latents.to(s.device), {k: v.to(s.device) for k, v in cond.items()}


def step_batch(s, data: TrainingData, gen: torch.Generator):
    """The micro-batch of one micro-step: instance samples, then as many class samples; and
    the per-pixel loss weights (None without masked_loss; class images weigh 1 everywhere)."""
    cfg = s.cfg
    idx = torch.randint(0, data.instance.count, (cfg.batch_size,), generator=gen)
    latents, cond = batch(s, data.instance, idx, gen, vary_captions=True)
    weights = data.instance.weights[idx] if data.instance.weights is not None else None
    if data.classes is not None:
        cidx = torch.randint(0, data.classes.count, (cfg.batch_size,), generator=gen)
        c_lat, c_cond = batch(s, data.classes, cidx, gen)
        latents, cond = torch.cat([latents, c_lat]), {k: torch.cat([cond[k], c_cond[k]]) for k in cond}
        if weights is not None:
            weights = torch.cat([weights, torch.ones_like(weights[:1]).expand(len(cidx), -1, -1, -1)])
    return latents, cond, weights
