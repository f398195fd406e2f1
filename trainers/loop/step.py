"""Phase 3 of a run, the step, shared by the loop, the benchmark and the memory planner's
simulation: what is trained (LoRA adapters or the whole denoiser) and how the frozen base is
stored (:func:`make_trainable`), and one micro-step (predict, loss, backward:
:func:`forward_backward`)."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from ..memory import techniques as memory
from ...core.transfer import to_device
from ...models.families import Prediction, get_family


def add_lora(model, cfg, targets: list[str]) -> None:
    from ...core.deps import require
    from ..memory.quantize import restore_adapter_precision

    peft = require("peft", "LoRA training")
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, init_lora_weights="gaussian",
                             use_dora=getattr(cfg, "use_dora", False))
    # a shape-only model (the memory planner's simulation): its adapters are made on ``meta``
    # too, rather than made and initialised in CPU memory and then moved there (a fifth of a
    # large model's simulated plan)
    place = torch.device("meta") if _shape_only(model) else nullcontext()
    with place:
        if type(model).__module__.startswith("diffusers"):
            model.add_adapter(config)  # diffusers' bookkeeping, which its pipelines use
        else:  # text encoders: peft itself (transformers' add_adapter may ask for a newer peft)
            peft.inject_adapter_in_model(config, model, adapter_name="default")
    restore_adapter_precision(model)


def _shape_only(model) -> bool:
    """Every weight and buffer of ``model`` is on the ``meta`` device."""
    tensors = [*model.parameters(), *model.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


def make_trainable(comps, cfg, device, dtype, recompute_context=None) -> list[dict]:
    """Quantize (optionally), place and cast the frozen denoiser, add what trains, stream
    blocks, switch on checkpointing, the attention kernel and the speed switches. Returns the
    optimizer's parameter groups. ``recompute_context``: see ``set_gradient_checkpointing``."""
    from ..memory.blocks import checkpoint_first, stream_last
    from ..memory.quantize import quantize_linears
    from ..speed.switches import apply_speed_switches

    fam = get_family(comps.family)
    model = comps.denoiser
    memory.freeze(model)
    if cfg.quantize_base != "off":
        if cfg.method != "lora":
            raise ValueError("quantize_base: a quantized base needs method 'lora' (its weights are frozen)")
        quantize_linears(model, cfg.quantize_base, dtype if dtype != torch.float32 else torch.bfloat16,
                         skip=fam.quantize_skip)
    streaming = cfg.stream_blocks > 0
    if not streaming:  # streamed weights never reach the device whole
        model.to(device)
    if cfg.method == "lora" or cfg.full_bf16:  # a whole model trained in fp32 starts from its own weights, unrounded
        memory.cast_frozen(model, dtype)
    if cfg.method == "lora":
        add_lora(model, cfg, cfg.lora_targets)
    else:
        model.requires_grad_(True)
    groups = adapter_groups(model, cfg.learning_rate, cfg.loraplus_lr_ratio)
    if cfg.train_text_encoder:
        for te in comps.text_encoders:
            if cfg.method == "lora":
                add_lora(te, cfg, fam.text_encoder_targets)
            else:
                te.requires_grad_(True)
            groups += adapter_groups(te, cfg.text_encoder_lr, cfg.loraplus_lr_ratio)
            memory.trainable_to_fp32(te)
            if cfg.gradient_checkpointing:
                te.gradient_checkpointing_enable()
    if not cfg.full_bf16:
        memory.trainable_to_fp32(model)
    blocks = fam.repeated_blocks(model) if (cfg.checkpoint_blocks or streaming or cfg.compile != "off") else []
    if cfg.gradient_checkpointing and cfg.checkpoint_blocks:
        if cfg.checkpoint_blocks > len(blocks):
            raise ValueError(f"checkpoint_blocks: {cfg.checkpoint_blocks} is more than the denoiser's "
                             f"{len(blocks)} repeated blocks")
        memory.set_gradient_checkpointing(model, False)
        checkpoint_first(blocks, cfg.checkpoint_blocks, recompute_context)
    else:
        memory.set_gradient_checkpointing(model, cfg.gradient_checkpointing, recompute_context)
    if fam.uses_attention_processors:
        memory.set_attention(model, cfg.attention)
    streamer = stream_last(blocks, cfg.stream_blocks, device, model) if streaming else None
    if streaming:
        model.to(device)  # everything but the streamed weights
    model._persona_streamer = streamer
    apply_speed_switches(model, fam, cfg, device, skip=tuple(streamer.blocks) if streamer else ())
    return groups


def release_streaming(model) -> None:
    """Stop block streaming of ``model`` (the end of a run), if it streams."""
    streamer = getattr(model, "_persona_streamer", None)
    if streamer is not None:
        streamer.close()
        model._persona_streamer = None


def adapter_groups(model, lr: float, loraplus_ratio: float = 1.0) -> list[dict]:
    """The optimizer's parameter groups of ``model``'s trainable weights; with LoRA+
    (``loraplus_ratio`` > 1) the B (up) matrices in a group of their own at ``lr * ratio``."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if loraplus_ratio == 1.0:
        return [{"params": [p for _, p in params], "lr": lr}]
    up = [p for n, p in params if ".lora_B." in n]
    rest = [p for n, p in params if ".lora_B." not in n]
    return [g for g in ({"params": rest, "lr": lr}, {"params": up, "lr": lr * loraplus_ratio}) if g["params"]]


def loss_of(p: Prediction, n_instance: int, prior_weight: float, pixel_weight: torch.Tensor | None = None,
            image_weight: torch.Tensor | None = None):
    """The batch loss: per-sample MSE (a weighted mean over pixels when ``pixel_weight`` is
    given, shaped like the prediction or broadcastable to it), Min-SNR weights, each image's
    ``image_weight``, instance mean plus ``prior_weight`` times the class images' mean."""
    per_pixel = F.mse_loss(p.pred.float(), p.target.float(), reduction="none")
    dims = tuple(range(1, per_pixel.ndim))
    if pixel_weight is None:
        per_sample = per_pixel.mean(dim=dims)
    else:
        w = pixel_weight.float().expand_as(per_pixel)
        per_sample = (per_pixel * w).sum(dim=dims) / w.sum(dim=dims).clamp(min=1e-8)
    if p.weight is not None:
        per_sample = per_sample * p.weight
    if image_weight is not None:
        per_sample = per_sample * to_device(image_weight, per_sample.device, per_sample.dtype)
    instance = per_sample[:n_instance].mean()
    parts = {"loss_instance": instance}
    loss = instance
    if len(per_sample) > n_instance:
        prior = per_sample[n_instance:].mean()
        parts["loss_prior"] = prior
        loss = instance + prior_weight * prior
    return loss, parts


def forward_backward(comps, model, latents, cond, gen, cfg, dtype, autocast, accumulation: int = 1,
                     extra_loss=None, backward=None, pixel_weight: torch.Tensor | None = None,
                     image_weight: torch.Tensor | None = None):
    """One micro-step: the family's prediction under ``autocast``, the loss (plus what
    ``extra_loss(prediction, loss, parts)`` adds: the identity term), then ``backward`` of
    ``loss / accumulation`` (default ``Tensor.backward``; the loop passes accelerate's, which scales
    fp16 losses). Returns (loss, parts), detached."""
    fam = get_family(comps.family)
    with autocast:
        p = fam.predict(comps, model, latents, cond, gen, cfg, dtype)
        weight = fam.pixel_weight(pixel_weight, p.pred) if pixel_weight is not None else None
        loss, parts = loss_of(p, cfg.batch_size, cfg.prior_loss_weight, weight, image_weight)
        if extra_loss is not None:
            loss, parts = extra_loss(p, loss, parts)
    (backward or torch.Tensor.backward)(loss / accumulation)
    return loss.detach(), {k: v.detach() for k, v in parts.items()}
