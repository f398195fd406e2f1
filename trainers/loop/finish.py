"""Phase 4 of a run, finish: the memory plan's prediction next to the measured peak in the
log, the loss chart, and the results (the LoRA in kohya and diffusers formats, or the
DreamBooth model folder and single file) with their metadata."""
from __future__ import annotations

import json

from ...faces.consent import lora_metadata as consent_metadata
from ...models.keys.kohya import lora_state
from ..memory import techniques as memory


def log_plan(s, result) -> None:
    """The plan, its predicted peak and (on CUDA) the measured peak, as the log's last line."""
    from ..outputs.run_dir import append_log

    plan = s.plan
    measured = round(result.peak_memory_mb, 1) if s.device.type == "cuda" else None
    append_log(s.run_dir, {"step": result.steps_done, "memory_plan": {
        "switches": plan.switches, "predicted_peak_mb": round(plan.predicted_peak_mb, 1),
        "measured_peak_mb": measured, "budget_mb": round(plan.budget_mb, 1),
        "measured_by": "torch.cuda.max_memory_allocated" if measured is not None else
        "not measured (CPU: no allocator peak; the benchmark measures live tensors)"}})


def export(s, result, denoiser, text_encoders) -> None:
    from ..outputs.export import export_dreambooth, save_kohya_lora, save_peft_lora

    cfg, comps = s.cfg, s.comps
    meta = lora_metadata(s, result)
    if cfg.method == "lora":
        result.lora_path = save_kohya_lora(s.run_dir / "lora.safetensors", lora_state(denoiser),
                                           [lora_state(t) for t in text_encoders], cfg.alpha, meta,
                                           family=cfg.family, model=denoiser)
        result.diffusers_lora_dir = save_peft_lora(s.run_dir / "diffusers_lora", denoiser, text_encoders,
                                                   cfg.family)
    else:
        result.model_dir, result.checkpoint_path = export_dreambooth(
            s.run_dir, comps, denoiser, comps.text_encoder, meta)


def finish(s, result, denoiser, text_encoders) -> None:
    from ..outputs.run_dir import plot_loss

    s.accelerator.wait_for_everyone()
    result.peak_memory_mb = memory.peak_memory_mb(s.device)
    result.plan = s.plan
    if not s.main:
        return
    if s.plan is not None:
        log_plan(s, result)
    plot_loss(s.run_dir)
    if not result.stopped:
        export(s, result, denoiser, text_encoders)


def lora_metadata(s, result) -> dict:
    cfg, comps, fam = s.cfg, s.comps, s.family
    return {
        "persona.base_model": comps.source, "persona.base_model_hash": comps.model_hash,
        "persona.base_model_random_weights": str(comps.random_weights).lower(),
        "persona.token": cfg.token, "persona.class": cfg.class_noun,
        "persona.rank": str(cfg.rank), "persona.alpha": str(cfg.alpha),
        "persona.steps": str(result.steps_done), "persona.resolution": str(cfg.resolution),
        "persona.config": json.dumps(cfg.to_json()),
        # the names kohya / A1111 read
        "ss_network_module": "networks.lora", "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.alpha), "ss_base_model_version": fam.kohya_version,
        "ss_resolution": f"({cfg.resolution}, {cfg.resolution})", "ss_steps": str(result.steps_done),
        "ss_sd_model_hash": comps.model_hash,
        "modelspec.architecture": fam.architecture + ("/lora" if cfg.method == "lora" else ""),
        "modelspec.title": f"{cfg.token} {cfg.class_noun}",
        **consent_metadata(cfg.dataset_consent(), cfg.consent_in_metadata),
    }
