"""Phase 4 of a run, finish: the memory plan's prediction next to the measured peak in the
log, the loss chart, and the results (the LoRA in kohya and diffusers formats, or the
DreamBooth model folder and single file) with their metadata."""
from __future__ import annotations

import json
from pathlib import Path

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


def export(s, result, denoiser, text_encoders, weights: str = "raw", suffix: str = "",
           folder: Path | None = None) -> Path:
    """Write the trained weights now in the models (``weights``: 'raw' or 'ema', recorded in
    the metadata) as ``lora<suffix>.safetensors`` + ``diffusers_lora<suffix>/`` (LoRA), or
    ``model<suffix>/`` + ``model<suffix>.safetensors`` (DreamBooth), in ``folder`` (default:
    the run directory; another folder leaves the result's paths alone). Returns the main file."""
    from ..outputs.export import export_dreambooth, save_kohya_lora, save_peft_lora

    cfg, comps = s.cfg, s.comps
    meta = {**lora_metadata(s, result), "persona.weights": weights}
    main = folder is None and not suffix
    folder = folder or s.run_dir
    if cfg.method == "lora":
        path = save_kohya_lora(folder / f"lora{suffix}.safetensors", lora_state(denoiser),
                               [lora_state(t) for t in text_encoders], cfg.alpha, meta,
                               family=cfg.family, model=denoiser)
        peft_folder = save_peft_lora(folder / f"diffusers_lora{suffix}", denoiser, text_encoders, cfg.family)
        if main:
            result.lora_path, result.diffusers_lora_dir = path, peft_folder
        return path
    model_dir, path = export_dreambooth(folder, comps, denoiser, comps.text_encoder, meta, name=f"model{suffix}")
    if main:
        result.model_dir, result.checkpoint_path = model_dir, path
    return path


def export_all(s, result, denoiser, text_encoders, ema) -> None:
    """The raw weights, or (EMA) the EMA weights instead of them or beside them."""
    if ema is None:
        export(s, result, denoiser, text_encoders)
    elif s.cfg.ema_export == "instead":
        with ema.applied():
            export(s, result, denoiser, text_encoders, "ema")
    else:
        export(s, result, denoiser, text_encoders)
        with ema.applied():
            result.ema_path = export(s, result, denoiser, text_encoders, "ema", "_ema")


def finish(s, result, denoiser, text_encoders, ema=None) -> None:
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
        export_all(s, result, denoiser, text_encoders, ema)


def lora_metadata(s, result) -> dict:
    cfg, comps, fam = s.cfg, s.comps, s.family
    return {
        "persona.base_model": comps.source, "persona.base_model_hash": comps.model_hash,
        "persona.base_model_random_weights": str(comps.random_weights).lower(),
        "persona.token": cfg.token, "persona.class": cfg.class_noun,
        "persona.rank": str(cfg.rank), "persona.alpha": str(cfg.alpha),
        "persona.adapter": "dora" if cfg.use_dora else "lora",
        "persona.ema": f"decay={cfg.ema_decay},every={cfg.ema_every}" if cfg.ema else "off",
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
