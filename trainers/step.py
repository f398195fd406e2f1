"""One training step, shared by the loop, the benchmark and the memory planner's simulation:
what is trained (LoRA adapters or the whole denoiser), how the frozen base is stored, and
the micro-step (predict, loss, backward)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import memory
from .families import Prediction, get_family


def add_lora(model, cfg, targets: list[str]) -> None:
    from ..deps import require
    from .quantize import restore_adapter_precision

    peft = require("peft", "LoRA training")
    config = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, init_lora_weights="gaussian")
    model.add_adapter(config)
    restore_adapter_precision(model)


def make_trainable(comps, cfg, device, dtype) -> list[dict]:
    """Quantize (optionally), place and cast the frozen denoiser, add what trains, and switch
    on checkpointing and the attention kernel. Returns the optimizer's parameter groups."""
    from .quantize import quantize_linears

    fam = get_family(comps.family)
    model = comps.unet
    memory.freeze(model)
    if cfg.quantize_base != "off":
        if cfg.method != "lora":
            raise ValueError("quantize_base: a quantized base needs method 'lora' (its weights are frozen)")
        quantize_linears(model, cfg.quantize_base, dtype if dtype != torch.float32 else torch.bfloat16)
    model.to(device)
    memory.cast_frozen(model, dtype)
    if cfg.method == "lora":
        add_lora(model, cfg, cfg.lora_targets)
    else:
        model.requires_grad_(True)
    groups = [{"params": memory.trainable_parameters(model), "lr": cfg.learning_rate}]
    if cfg.train_text_encoder:
        for te in comps.text_encoders:
            if cfg.method == "lora":
                add_lora(te, cfg, fam.text_encoder_targets)
            else:
                te.requires_grad_(True)
            groups.append({"params": memory.trainable_parameters(te), "lr": cfg.text_encoder_lr})
            memory.trainable_to_fp32(te)
            if cfg.gradient_checkpointing:
                te.gradient_checkpointing_enable()
    memory.trainable_to_fp32(model)
    memory.set_gradient_checkpointing(model, cfg.gradient_checkpointing)
    if comps.family != "flux":
        memory.set_attention(model, cfg.attention)
    return groups


def loss_of(p: Prediction, n_instance: int, prior_weight: float):
    per_sample = F.mse_loss(p.pred.float(), p.target.float(), reduction="none")
    per_sample = per_sample.mean(dim=tuple(range(1, per_sample.ndim)))
    if p.weight is not None:
        per_sample = per_sample * p.weight
    instance = per_sample[:n_instance].mean()
    parts = {"loss_instance": instance}
    loss = instance
    if len(per_sample) > n_instance:
        prior = per_sample[n_instance:].mean()
        parts["loss_prior"] = prior
        loss = instance + prior_weight * prior
    return loss, parts
