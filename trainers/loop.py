"""The training loop: ``train(cfg, callbacks) -> TrainResult``.

Reference 000 Algorithm 1 (memory-optimised DreamBooth) and reference 002's prior
preservation, on diffusers + peft + accelerate. The UI stays out: progress, log records,
validation results and cancellation go through :class:`Callbacks`.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..config_base import ConfigError
from ..deps import require
from . import memory
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .families import get_family
from .step import loss_of, make_trainable
from .run_dir import append_log, plot_loss, prepare_run_dir, truncate_log

log = logging.getLogger(__name__)


class TrainingStopped(Exception):
    """Raised inside the loop when ``Callbacks.should_stop`` says so (after a checkpoint)."""


@dataclass
class Callbacks:
    on_start: Callable[[dict], None] | None = None
    on_log: Callable[[dict], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    on_validation: Callable[[int, Path, dict], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class TrainResult:
    run_dir: Path
    lora_path: Path | None
    diffusers_lora_dir: Path | None
    steps_done: int
    first_loss: float | None
    final_loss: float | None
    peak_memory_mb: float
    stopped: bool = False
    resumed_from: int = 0
    class_images_generated: int = 0
    model_dir: Path | None = None  # DreamBooth: diffusers folder
    checkpoint_path: Path | None = None  # DreamBooth: single-file checkpoint
    records: list[dict] = field(default_factory=list)
    plan: object = None  # the memory plan (memory="auto")


@dataclass
class _Data:
    """Everything a step samples from: latents (or pixels) and prompt embeddings (or ids)."""

    count: int
    latent_mean: torch.Tensor | None = None
    latent_std: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    prompts: list[str] = field(default_factory=list)
    embeddings: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def _step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed((seed * 1_000_003 + step * 1009 + micro * 31 + rank) % (2 ** 63))


def _encode_latent_dist(vae, pixels: torch.Tensor, device, dtype, slicing: bool):
    means, stds = [], []
    chunk = 1 if slicing else len(pixels)
    with torch.no_grad():
        for i in range(0, len(pixels), chunk):
            dist = vae.encode(pixels[i:i + chunk].to(device, dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def _prepare_data(comps, cfg, pixels, prompts, device, dtype, cache_dir: Path | None) -> _Data:
    data = _Data(count=len(pixels), prompts=prompts)
    if cfg.cache_latents != "off":
        cache_file = cache_dir / "latents.safetensors" if cache_dir else None
        if cache_file is not None and cache_file.is_file():
            from safetensors.torch import load_file

            cached = load_file(str(cache_file))
            if cached["mean"].shape[0] == len(pixels):
                data.latent_mean, data.latent_std = cached["mean"], cached["std"]
        if data.latent_mean is None:
            data.latent_mean, data.latent_std = _encode_latent_dist(
                comps.vae, pixels, device, dtype, cfg.vae_slicing)
            if cache_file is not None:
                from safetensors.torch import save_file

                cache_file.parent.mkdir(parents=True, exist_ok=True)
                save_file({"mean": data.latent_mean, "std": data.latent_std}, str(cache_file))
    else:
        data.pixels = pixels
    if cfg.cache_text_embeddings and not cfg.train_text_encoder:
        data.embeddings = encode_cached(comps, cfg, prompts, device)
    return data


def encode_cached(comps, cfg, prompts: list[str], device) -> dict[str, dict[str, torch.Tensor]]:
    """Each distinct prompt's conditioning, on the CPU, computed once."""
    family = get_family(comps.family)
    out = {}
    with torch.no_grad():
        for p in sorted(set(prompts)):
            cond = family.encode(comps, [p], device, cfg)
            out[p] = {k: v[0].float().cpu() for k, v in cond.items()}
    return out


def _batch(comps, cfg, data: _Data, idx: torch.Tensor, gen: torch.Generator, device, dtype):
    """(latents, prompt embeddings) of the items ``idx``; noise for latent sampling from ``gen``."""
    if data.latent_mean is not None:
        mean, std = data.latent_mean[idx], data.latent_std[idx]
    else:
        with torch.no_grad():
            dist = comps.vae.encode(data.pixels[idx].to(device, dtype)).latent_dist
        mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
    latents = (mean + std * torch.randn(mean.shape, generator=gen) - comps.vae_shift) * comps.vae_scale
    prompts = [data.prompts[i] for i in idx.tolist()]
    if data.embeddings:
        cond = {k: torch.stack([data.embeddings[p][k] for p in prompts]) for k in data.embeddings[prompts[0]]}
    else:
        ctx = torch.enable_grad() if cfg.train_text_encoder else torch.no_grad()
        with ctx:
            cond = get_family(comps.family).encode(comps, prompts, device, cfg)
    return latents.to(device), {k: v.to(device) for k, v in cond.items()}


def _cat_cond(a: dict, b: dict) -> dict:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _make_accelerator(cfg: TrainConfig, device: torch.device):
    accelerate = require("accelerate", "Training")
    if cfg.mixed_precision == "fp16" and device.type != "cuda":
        raise ConfigError("invalid TrainConfig:\n  mixed_precision: fp16 needs a CUDA device; "
                          "use 'bf16' or 'no' on the CPU")
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # Accelerate keeps one state per process; several runs in one process (the library
        # API, tests) may differ in precision. A distributed launch keeps the launcher's state.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    return accelerate.Accelerator(mixed_precision=cfg.mixed_precision, cpu=device.type == "cpu")


def train(cfg: TrainConfig, callbacks: Callbacks | None = None, resume: bool = False) -> TrainResult:
    """Train ``cfg`` into ``cfg.output_dir``; with ``resume``, continue from its last checkpoint."""
    cb = callbacks or Callbacks()
    cfg.check_paths()  # every config error surfaces before any model loads
    from diffusers.optimization import get_scheduler

    requested = cfg
    plan = None
    if cfg.memory == "auto":
        from .planner import plan_for_config

        plan = plan_for_config(cfg, memory.resolve_device(cfg.device))
        cfg = plan.apply(cfg)
        log.info("memory plan:\n%s", plan.describe())

    from ..faces.dataset import read_dataset
    from .models import load_components
    from .prior import class_images, load_images

    run_dir = Path(cfg.output_dir)
    prepare_run_dir(run_dir, requested, resume)
    device = memory.resolve_device(cfg.device)
    accelerator = _make_accelerator(cfg, device)
    device = accelerator.device
    rank = accelerator.process_index
    dtype = memory.weight_dtype(cfg.mixed_precision, device)
    digest = requested.digest()
    torch.manual_seed(cfg.seed)
    family = get_family(cfg.family)

    comps = load_components(cfg.family, cfg.base_model,
                            **({"clip_l": cfg.clip_l, "t5": cfg.t5, "vae": cfg.vae} if cfg.clip_l else {}))
    for module in [comps.vae, *comps.text_encoders]:
        memory.freeze(module)
        module.to(device)
    memory.freeze(comps.unet)
    if cfg.prior_preservation:  # class images are sampled by the full-precision base
        comps.unet.to(device)
    memory.configure_vae(comps.vae, cfg.vae_slicing, cfg.vae_tiling)

    # --- data ------------------------------------------------------------------------------
    items = read_dataset(cfg.dataset)
    pixels = load_images([it.image for it in items], cfg.resolution)
    if cfg.caption_source == "dataset":
        prompts = [it.caption or cfg.fill(cfg.instance_prompt) for it in items]
    else:
        prompts = [cfg.fill(cfg.instance_prompt)] * len(items)
    generated = 0
    class_data = None
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else run_dir.parent / ".class_cache"
    if cfg.prior_preservation:
        class_prompt = cfg.fill(cfg.class_prompt)
        with accelerator.main_process_first():  # one process fills the shared cache
            paths, generated = class_images(comps, class_prompt, cfg.num_class_images, cfg.resolution,
                                            cfg.seed, cfg.class_images_steps, cache_root, device,
                                            torch.float32)
        class_pixels = load_images(paths, cfg.resolution)
    for module in [comps.vae, *comps.text_encoders]:
        memory.cast_frozen(module, dtype)
    latent_cache = run_dir / "cache" if cfg.cache_latents == "disk" else None
    data = _prepare_data(comps, cfg, pixels, prompts, device, dtype, latent_cache)
    if cfg.prior_preservation:
        class_cache = (cache_root / "latents" / digest) if cfg.cache_latents == "disk" else None
        class_data = _prepare_data(comps, cfg, class_pixels, [cfg.fill(cfg.class_prompt)] * len(class_pixels),
                                   device, dtype, class_cache)
    identity = None
    if cfg.identity_loss_weight > 0:
        from .identity_loss import build_identity_loss

        identity = build_identity_loss(cfg, items, pixels, device)
    if cfg.cache_latents != "off" and identity is None:  # the identity loss decodes with the VAE
        memory.offload(comps.vae)
    validation_cond = None
    if data.embeddings:
        if cfg.family == "flux":  # text encoders are never resident while FLUX trains
            if cfg.validate_every:
                validation_cond = encode_cached(comps, cfg, [cfg.fill(p) for p in cfg.validation_prompts], device)
            comps.text_encoder = comps.text_encoder_2 = None
            memory.empty_cache(device)
        else:
            for te in comps.text_encoders:
                memory.offload(te)

    # --- what trains: LoRA adapters, or (DreamBooth) the whole denoiser -----------------------
    groups = make_trainable(comps, cfg, device, dtype)
    comps.unet.train()
    trained = [comps.unet]
    if cfg.train_text_encoder:
        for te in comps.text_encoders:
            te.train()
        trained += comps.text_encoders
    optimizer = memory.make_optimizer(groups, cfg.optimizer, cfg.weight_decay)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps,
                                 num_training_steps=cfg.steps)
    prepared = accelerator.prepare(*trained, optimizer)
    unet_ddp, optimizer = prepared[0], prepared[-1]
    te_ddp = list(prepared[1:-1])

    start_step = 0
    if resume:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise ConfigError(f"cannot resume: '{run_dir}' has no checkpoint yet (checkpoint_every="
                              f"{cfg.checkpoint_every}); start the run again instead")
        state = load_checkpoint(ckpt, digest)
        _load_trainable(comps, state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["scheduler"])
        start_step = state["step"]
        truncate_log(run_dir, start_step)
        log.info("resumed %s at step %d", run_dir, start_step)

    if cb.on_start:
        cb.on_start({"unet": comps.unet, "text_encoder": comps.text_encoder, "vae": comps.vae,
                     "text_encoder_2": comps.text_encoder_2, "plan": plan,
                     "optimizer": optimizer, "start_step": start_step, "device": device,
                     "trainable_parameters": sum(p.numel() for g in groups for p in g["params"])})

    # --- loop -------------------------------------------------------------------------------
    result = TrainResult(run_dir, None, None, start_step, None, None, 0.0, resumed_from=start_step,
                         class_images_generated=generated)
    memory.reset_peak_memory(device)
    params = [p for g in groups for p in g["params"]]
    try:
        for step in range(start_step + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            parts_sum: dict[str, float] = {}
            for micro in range(cfg.gradient_accumulation):
                gen = _step_generator(cfg.seed, step, micro, rank)
                torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=gen)))  # dropout
                idx = torch.randint(0, data.count, (cfg.batch_size,), generator=gen)
                latents, cond = _batch(comps, cfg, data, idx, gen, device, dtype)
                if class_data is not None:
                    cidx = torch.randint(0, class_data.count, (cfg.batch_size,), generator=gen)
                    c_lat, c_cond = _batch(comps, cfg, class_data, cidx, gen, device, dtype)
                    latents, cond = torch.cat([latents, c_lat]), _cat_cond(cond, c_cond)
                sync = micro == cfg.gradient_accumulation - 1
                ctx = accelerator.no_sync(unet_ddp) if not sync and accelerator.num_processes > 1 \
                    else _null()
                with ctx, accelerator.autocast():
                    p = family.predict(comps, unet_ddp, latents, cond, gen, cfg, dtype)
                    loss, parts = loss_of(p, cfg.batch_size, cfg.prior_loss_weight)
                    if identity is not None and step % cfg.identity_every == 0:
                        n = cfg.batch_size  # instance samples only
                        id_loss, used = identity(comps, p.noisy[:n], p.pred[:n], p.timesteps[:n])
                        if id_loss is not None:
                            loss = loss + cfg.identity_loss_weight * id_loss
                            parts["loss_identity"] = id_loss
                            parts["identity_samples"] = torch.tensor(float(used))
                accelerator.backward(loss / cfg.gradient_accumulation)
                parts_sum["loss"] = parts_sum.get("loss", 0.0) + loss.item() / cfg.gradient_accumulation
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v.item() / cfg.gradient_accumulation
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            lr_used = lr_scheduler.get_last_lr()[0]
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=cfg.grad_set_to_none)
            if not math.isfinite(parts_sum["loss"]):
                raise FloatingPointError(f"loss became {parts_sum['loss']} at step {step}; "
                                         f"lower learning_rate or use bf16 instead of fp16")
            if accelerator.num_processes > 1:  # the log shows the mean over all processes
                keys = sorted(parts_sum)
                mean = accelerator.reduce(torch.tensor([parts_sum[k] for k in keys], device=device), "mean")
                parts_sum = dict(zip(keys, mean.tolist()))
            seconds = time.perf_counter() - t0
            record = {"step": step, **{k: round(v, 6) for k, v in parts_sum.items()},
                      "batch": {"instance": cfg.batch_size,
                                "class": cfg.batch_size if class_data is not None else 0},
                      "lr": lr_used,
                      "peak_memory_mb": round(memory.peak_memory_mb(device), 1),
                      "step_seconds": round(seconds, 4), "processes": accelerator.num_processes,
                      "samples_per_s": round(cfg.batch_size * cfg.gradient_accumulation
                                             * accelerator.num_processes / seconds, 3)}
            result.records.append(record)
            result.first_loss = result.first_loss if result.first_loss is not None else record["loss"]
            result.final_loss = record["loss"]
            result.steps_done = step
            if accelerator.is_main_process and (step % cfg.log_every == 0 or step == cfg.steps):
                append_log(run_dir, record)
            if cb.on_log and accelerator.is_main_process:
                cb.on_log(record)
            if cb.on_progress and accelerator.is_main_process:
                cb.on_progress(step, cfg.steps)
            last = step == cfg.steps
            stopping = bool(cb.should_stop and cb.should_stop())
            if accelerator.is_main_process and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
                                                or last or stopping):
                save_checkpoint(run_dir, step, _trainable_state(comps, cfg), optimizer, lr_scheduler,
                                digest, cfg.keep_checkpoints)
            if cfg.validate_every and (step % cfg.validate_every == 0 or last) and accelerator.is_main_process:
                from .validation import validate

                info = validate(comps, cfg, run_dir, step, device, dtype, validation_cond)
                append_log(run_dir, {"step": step, "validation": info})
                if cb.on_validation:
                    cb.on_validation(step, Path(info["grid"]), info)
            if stopping and not last:
                raise TrainingStopped(f"stopped at step {step}")
    except TrainingStopped:
        result.stopped = True
    accelerator.wait_for_everyone()
    result.peak_memory_mb = memory.peak_memory_mb(device)
    if plan is not None:
        result.plan = plan
        measured = round(result.peak_memory_mb, 1) if device.type == "cuda" else None
        if accelerator.is_main_process:
            append_log(run_dir, {"step": result.steps_done, "memory_plan": {
                "switches": plan.switches, "predicted_peak_mb": round(plan.predicted_peak_mb, 1),
                "measured_peak_mb": measured, "budget_mb": round(plan.budget_mb, 1),
                "measured_by": "torch.cuda.max_memory_allocated" if measured is not None else
                "not measured (CPU: no allocator peak; the benchmark measures live tensors)"}})
    if accelerator.is_main_process:
        plot_loss(run_dir)
        if not result.stopped:
            from .export import export_dreambooth, save_kohya_lora, save_peft_lora

            unet = accelerator.unwrap_model(unet_ddp)
            tes = [accelerator.unwrap_model(t) for t in te_ddp]
            meta = lora_metadata(cfg, comps, result)
            if cfg.method == "lora":
                result.lora_path = save_kohya_lora(run_dir / "lora.safetensors", _lora_of(unet),
                                                   [_lora_of(t) for t in tes], cfg.alpha, meta,
                                                   family=cfg.family, model=unet)
                result.diffusers_lora_dir = save_peft_lora(run_dir / "diffusers_lora", unet, tes, cfg.family)
            else:
                result.model_dir, result.checkpoint_path = export_dreambooth(
                    run_dir, comps, unet, comps.text_encoder, meta)
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _lora_of(model) -> dict[str, torch.Tensor]:
    from .export import lora_state

    return lora_state(model)


def _trainable_state(comps, cfg) -> dict[str, torch.Tensor]:
    """Every trained tensor (LoRA adapters, or the whole UNet for DreamBooth), by name."""
    state = {f"unet.{n}": p for n, p in comps.unet.named_parameters() if p.requires_grad}
    if cfg.train_text_encoder:
        for prefix, te in (("text_encoder.", comps.text_encoder), ("text_encoder_2.", comps.text_encoder_2)):
            if te is not None:
                state.update({f"{prefix}{n}": p for n, p in te.named_parameters() if p.requires_grad})
    return state


def _load_trainable(comps, tensors: dict[str, torch.Tensor]) -> None:
    for prefix, model in (("unet.", comps.unet), ("text_encoder.", comps.text_encoder),
                          ("text_encoder_2.", comps.text_encoder_2)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not part:
            continue
        own = model.state_dict()
        unknown = [k for k in part if k not in own]
        if unknown:
            raise RuntimeError(f"checkpoint tensors do not fit the model: {unknown[:3]}")
        with torch.no_grad():
            for k, v in part.items():
                own[k].copy_(v)


def lora_metadata(cfg: TrainConfig, comps, result: TrainResult) -> dict:
    import json

    return {
        "persona.base_model": comps.source, "persona.base_model_hash": comps.model_hash,
        "persona.base_model_random_weights": str(comps.random_weights).lower(),
        "persona.token": cfg.token, "persona.class": cfg.class_noun,
        "persona.rank": str(cfg.rank), "persona.alpha": str(cfg.alpha),
        "persona.steps": str(result.steps_done), "persona.resolution": str(cfg.resolution),
        "persona.config": json.dumps(cfg.to_json()),
        # the names kohya / A1111 read
        "ss_network_module": "networks.lora", "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.alpha), "ss_base_model_version": get_family(cfg.family).kohya_version,
        "ss_resolution": f"({cfg.resolution}, {cfg.resolution})", "ss_steps": str(result.steps_done),
        "ss_sd_model_hash": comps.model_hash,
        "modelspec.architecture": get_family(cfg.family).architecture + ("/lora" if cfg.method == "lora" else ""),
        "modelspec.title": f"{cfg.token} {cfg.class_noun}",
    }
