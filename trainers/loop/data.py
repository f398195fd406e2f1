"""Phase 2 of a run, data and caches: the dataset's images and captions grouped into
aspect-ratio buckets, the class images of prior preservation, the latent and text-embedding
caches (after which the VAE and the text encoders leave the device, or are deleted where the
family says so; a run that loads in stages reads its denoiser only then), the identity loss, and
the batches each step samples (all from one bucket).
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...core.transfer import to_device
from ..memory import techniques as memory
from .captions import dropout_caption, step_caption
from .prior import class_images, load_sized
from .setup import ready_denoiser


@dataclass
class Examples:
    """What a step samples from, images of one size: latents (or pixels) and prompt
    embeddings (or prompts)."""

    count: int
    size: tuple[int, int] = (0, 0)  # (width, height) in pixels
    time_ids: torch.Tensor | None = None  # [N, 6] SDXL size conditioning of each image
    latent_mean: torch.Tensor | None = None
    latent_std: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    weights: torch.Tensor | None = None  # [N, 1, h, w] per-latent-pixel loss weights (masked_loss)
    image_weights: torch.Tensor | None = None  # [N] each image's loss weight (image_weights)


@dataclass
class Batch:
    """One micro-step's samples: instance images first, then as many class images."""

    latents: torch.Tensor
    cond: dict[str, torch.Tensor]
    pixel_weight: torch.Tensor | None  # masked_loss
    image_weight: torch.Tensor | None  # [B] image_weights (class images: 1)
    group: int  # the bucket

@dataclass
class TrainingData:
    instance: list[Examples]  # one per bucket
    classes: dict[tuple[int, int], Examples] | None  # prior preservation: at each bucket's size
    identity: object | None  # the identity loss (identity_loss_weight > 0), on the square bucket
    validation_cond: dict | None  # cached conditioning of the validation prompts (families without encoders)
    class_images_generated: int = 0
    identity_group: int = -1  # the bucket the identity loss applies to (the square face crops)


def _encode_latent_dist(family, vae, pixels: torch.Tensor, dtype, slicing: bool):
    means, stds = [], []
    chunk = 1 if slicing else len(pixels)
    device = next(vae.parameters()).device  # the run's device, or the CPU (encode_on_cpu)
    with torch.no_grad():
        for i in range(0, len(pixels), chunk):
            mean, std = family.encode_pixels(vae, pixels[i:i + chunk].to(device, dtype))
            means.append(mean.float().cpu())
            stds.append(std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def encode_cached(s, prompts: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Each distinct prompt's conditioning, on the CPU, computed once."""
    out = {}
    with torch.no_grad():
        for p in sorted(set(prompts)):
            cond = s.family.encode(s.comps, [p], s.device, s.cfg)
            out[p] = {k: v[0].float().cpu() for k, v in cond.items()}
    return out


def examples(s, pixels: torch.Tensor, prompts: list[str], cache_dir: Path | None,
             time_ids: torch.Tensor | None = None) -> Examples:
    cfg = s.cfg
    size = (pixels.shape[-1], pixels.shape[-2])
    data = Examples(count=len(pixels), size=size, time_ids=time_ids, prompts=prompts)
    if cfg.cache_latents != "off":
        name = "latents.safetensors" if size == (cfg.resolution, cfg.resolution) else f"latents-{size[0]}x{size[1]}.safetensors"
        cache_file = cache_dir / name if cache_dir else None
        if cache_file is not None and cache_file.is_file():
            from safetensors.torch import load_file

            cached = load_file(str(cache_file))
            if cached["mean"].shape[0] == len(pixels):
                data.latent_mean, data.latent_std = cached["mean"], cached["std"]
        if data.latent_mean is None:
            data.latent_mean, data.latent_std = _encode_latent_dist(
                s.family, s.comps.vae, pixels, s.dtype, cfg.vae_slicing)
            if cache_file is not None:
                from safetensors.torch import save_file

                cache_file.parent.mkdir(parents=True, exist_ok=True)
                save_file({"mean": data.latent_mean, "std": data.latent_std}, str(cache_file))
    else:
        data.pixels = pixels
    if cfg.caches_captions:
        extra = [dropout_caption(cfg)] if cfg.caption_dropout > 0 else []
        data.embeddings = encode_cached(s, prompts + extra)
    return data


def place_encoders(s) -> None:
    """The VAE and the text encoders cast to the compute precision on the CPU (never on the
    device at load precision), then moved to the device, except those the plan encodes on the
    CPU (``encode_on_cpu``: their inputs go to the CPU, their outputs come back)."""
    from ..memory.caching import run_on_cpu

    cfg, comps = s.cfg, s.comps
    for name in ("vae", "text_encoder", "text_encoder_2"):
        module = getattr(comps, name, None)
        if module is None:
            continue
        memory.cast_frozen(module, s.dtype)
        if name in cfg.encode_on_cpu and s.device.type != "cpu":
            module.to("cpu")
            if name != "vae" and not getattr(module, "_persona_on_cpu", None):  # the VAE's encode reads its own device
                module._persona_on_cpu = run_on_cpu(module, s.device)
        else:
            module.to(s.device)


def place_for_class_images(s):
    """The models of prior preservation's class-image phase (trainers/memory/class_images.py):
    the denoiser quantized to fp8 first where the run quantizes it so anyway, cast to the
    compute precision on the CPU, the blocks the plan streams for the phase left in CPU memory,
    the rest moved; the VAE and the text encoders as :func:`place_encoders` places them
    (``encode_on_cpu`` ones stay on the CPU). Returns the phase's block streamer, if any."""
    from ..memory.blocks import stream_last
    from ..memory.quantize import quantize_linears

    cfg, model = s.cfg, s.comps.denoiser
    phase = getattr(s.plan, "class_images", None) or {}  # the plan's choice; without a plan, as the run quantizes
    quantize = phase.get("quantize", "fp8" if cfg.quantize_base == "fp8" and cfg.method == "lora" else "off")
    if quantize != "off":
        quantize_linears(model, quantize, s.dtype if s.dtype != torch.float32 else torch.bfloat16,
                         skip=s.family.quantize_skip)
    if cfg.method == "lora":  # a denoiser that trains whole keeps its weights as loaded (it samples under autocast)
        memory.cast_frozen(model, s.dtype)
    stream = phase.get("stream_blocks", 0) if s.device.type != "cpu" else 0
    streamer = stream_last(s.family.repeated_blocks(model), stream, s.device, model)
    model.to(s.device)  # all but the streamed weights
    place_encoders(s)
    return streamer


def release_encoders(s) -> None:
    """Undo :func:`place_encoders`' CPU hooks (the text encoders then go as the family says)."""
    for module in s.comps.text_encoders:
        for handle in getattr(module, "_persona_on_cpu", None) or ():
            handle.remove()
        module._persona_on_cpu = None


def bucket_groups(items, cfg, family) -> dict[tuple[int, int], list[int]]:
    """Item indices by the size they train at: their nearest aspect-ratio bucket
    (``aspect_buckets``), else the square resolution. Square images are always square."""
    from PIL import Image

    from ...core.buckets import nearest_bucket

    square = (cfg.resolution, cfg.resolution)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, it in enumerate(items):
        size = square
        if cfg.aspect_buckets:
            with Image.open(it.image) as im:
                if im.width != im.height:
                    size = nearest_bucket(im.width, im.height, cfg.resolution, family.bucket_multiple)
        groups.setdefault(size, []).append(i)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] != square, kv[0])))


def prepare_data(s) -> TrainingData:
    from ...faces.dataset import read_dataset

    cfg, comps = s.cfg, s.comps
    items = read_dataset(cfg.dataset)
    if cfg.caption_source == "dataset":
        prompts = [it.caption or cfg.fill(cfg.instance_prompt) for it in items]
    else:
        prompts = [cfg.fill(cfg.instance_prompt)] * len(items)
    groups = bucket_groups(items, cfg, s.family)
    loaded = {size: load_sized([items[i].image for i in idx], size) for size, idx in groups.items()}
    generated, class_paths = 0, None
    cache_root = cfg.class_cache_dir()
    if cfg.prior_preservation:
        streamer = place_for_class_images(s)
        with s.accelerator.main_process_first():  # one process fills the shared cache
            class_paths, generated = class_images(comps, cfg.fill(cfg.class_prompt), cfg.num_class_images,
                                                  cfg.resolution, cfg.seed, cfg.class_images_steps, cache_root,
                                                  s.dtype)
        if streamer is not None:
            streamer.close()
        memory.offload(comps.denoiser)  # the training's own setup places it (streamed blocks stay on the CPU)
    place_encoders(s)
    disk = s.run_dir / "cache" if cfg.cache_latents == "disk" else None
    instance, classes = [], ({} if class_paths else None)
    for size, idx in groups.items():
        pixels, time_ids = loaded[size]
        group = examples(s, pixels, [prompts[i] for i in idx], disk, time_ids)
        if cfg.image_weights:
            group.image_weights = torch.tensor([image_weight(items[i], cfg.image_weights) for i in idx])
        if cfg.masked_loss:
            group.weights = loss_weights([items[i] for i in idx], cfg, size, s.family.latent_shape(comps, cfg.resolution))
        instance.append(group)
        if class_paths:
            class_pixels, class_ids = load_sized(class_paths, size)
            class_cache = (cache_root / "latents" / s.digest) if disk else None
            classes[size] = examples(s, class_pixels, [cfg.fill(cfg.class_prompt)] * len(class_pixels),
                                     class_cache, class_ids)
    identity, identity_group = None, -1
    if cfg.identity_loss_weight > 0:
        from .identity_loss import build_identity_loss

        square = (cfg.resolution, cfg.resolution)
        if square not in groups:
            raise cfg.field_error("identity_loss_weight", "needs square face crops in the dataset (the identity "
                                                          "loss decodes the face box of the square images)")
        identity_group = list(groups).index(square)
        identity = build_identity_loss(cfg, [items[i] for i in groups[square]], loaded[square][0], s.device)
    if cfg.cache_latents != "off" and identity is None:  # the identity loss decodes with the VAE
        memory.offload(comps.vae)
    validation_cond = None
    if instance[0].embeddings:
        if not s.family.keeps_text_encoders:  # never resident while training
            if cfg.validate_every:
                validation_cond = encode_cached(s, [cfg.fill(p) for p in cfg.validation_prompts])
            comps.text_encoder = comps.text_encoder_2 = None
            memory.empty_cache(s.device)
        else:
            for te in comps.text_encoders:
                memory.offload(te)
    release_encoders(s)
    if comps.denoiser is None:  # a run that loads in stages (setup.py): the text encoders are gone, so
        gc.collect()  # their memory is free before the largest part of the model is read
        ready_denoiser(s)
    return TrainingData(instance, classes, identity, validation_cond, generated, identity_group)


def image_weight(item, weights: dict[str, float]) -> float:
    """An image's weight: by its file stem, else (a wider crop) by its photo's stem, else 1."""
    stem = item.image.stem
    return float(weights.get(stem, weights.get(stem.split("__")[0], 1.0)))


def loss_weights(items, cfg, size: tuple[int, int], square_latent: tuple[int, int, int]) -> torch.Tensor:
    """Each image's face mask (cropped like the image to ``size``, (w, h)) at the latent size
    (area-averaged), as background_weight outside the face rising to 1 inside it."""
    import numpy as np
    from PIL import Image

    missing = [str(it.image) for it in items if it.mask is None or not Path(it.mask).is_file()]
    if missing:
        raise cfg.field_error("masked_loss", f"needs a mask for every image (persona prepare writes them); "
                                             f"none for {missing[:3]}")
    from ...core.buckets import cover_crop

    w, h = size
    masks = []
    for it in items:
        with Image.open(it.mask) as im:
            im = im.convert("L")
            scale, left, top = cover_crop(im.width, im.height, size)
            im = im.resize((max(w, round(im.width * scale)), max(h, round(im.height * scale))),
                           Image.Resampling.BILINEAR).crop((left, top, left + w, top + h))
            masks.append(np.asarray(im, np.float32) / 255.0)
    factor = cfg.resolution // square_latent[1]
    m = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.stack(masks))[:, None], (h // factor, w // factor))
    return cfg.background_weight + (1.0 - cfg.background_weight) * m


def batch(s, data: Examples, idx: torch.Tensor, gen: torch.Generator, vary_captions: bool = False):
    """(latents, prompt embeddings) of the items ``idx``; noise for latent sampling from ``gen``;
    ``vary_captions``: caption dropout and tag shuffling (``captions``) for instance images."""
    comps, cfg = s.comps, s.cfg
    if data.latent_mean is not None:
        mean, std = data.latent_mean[idx], data.latent_std[idx]
    else:
        with torch.no_grad():
            mean, std = s.family.encode_pixels(comps.vae, data.pixels[idx].to(s.device, s.dtype))
        mean, std = mean.float().cpu(), std.float().cpu()
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
    if s.family.size_conditioning and data.time_ids is not None:
        cond["time_ids"] = data.time_ids[idx]
    return to_device(latents, s.device), {k: to_device(v, s.device) for k, v in cond.items()}


def step_batch(s, data: TrainingData, gen: torch.Generator) -> Batch:
    """The micro-batch of one micro-step, from one bucket (drawn in proportion to the images
    it holds): instance samples, then as many class samples, with the per-pixel loss weights
    (None without masked_loss) and the per-image ones (None without image_weights); class
    images weigh 1."""
    cfg = s.cfg
    g = 0
    if len(data.instance) > 1:
        counts = torch.tensor([float(e.count) for e in data.instance])
        g = int(torch.multinomial(counts, 1, generator=gen))
    group = data.instance[g]
    idx = torch.randint(0, group.count, (cfg.batch_size,), generator=gen)
    latents, cond = batch(s, group, idx, gen, vary_captions=True)
    weights = group.weights[idx] if group.weights is not None else None
    per_image = group.image_weights[idx] if group.image_weights is not None else None
    if data.classes is not None:
        classes = data.classes[group.size]
        cidx = torch.randint(0, classes.count, (cfg.batch_size,), generator=gen)
        c_lat, c_cond = batch(s, classes, cidx, gen)
        latents, cond = torch.cat([latents, c_lat]), {k: torch.cat([cond[k], c_cond[k]]) for k in cond}
        if weights is not None:
            weights = torch.cat([weights, torch.ones_like(weights[:1]).expand(len(cidx), -1, -1, -1)])
        if per_image is not None:
            per_image = torch.cat([per_image, torch.ones(len(cidx))])
    return Batch(latents, cond, weights, per_image, g)
