"""Persona Train: dataset + base model + config widgets -> a LoRA that LoraLoader lists."""
from __future__ import annotations

import logging
import shutil

from ..core.imaging import images_to_tensor
from ..trainers.config import PRESETS, TrainConfig, with_preset
from . import carried
from .host import (Progress, apply_lora, base_model_path, base_models, check_interrupt, datasets_folder,
                   free_models, interrupt_requested, lora_folders, loras_dir, model_file_path, model_files,
                   output_dir, safe_name, show_text)
from .widgets import config_from_widgets, widgets

CATEGORY = "Persona/train"
log = logging.getLogger(__name__)

_FIELDS = ["method", "resolution", "steps", "learning_rate", "rank", "alpha", "batch_size",
           "gradient_accumulation", "lr_scheduler", "warmup_steps", "optimizer", "mixed_precision",
           "gradient_checkpointing", "train_text_encoder", "prior_preservation", "num_class_images",
           "prior_loss_weight", "snr_gamma", "seed", "checkpoint_every"]
# optional inputs, after the required ones so that saved workflows keep their widget values
_MORE = ["masked_loss", "background_weight", "caption_dropout", "shuffle_tags", "ema", "ema_decay",
         "use_dora", "loraplus_lr_ratio", "aspect_buckets", "validate_every", "checkpoint_blocks", "fused_backward",
         "full_bf16", "stream_blocks", "compile", "cuda_graphs", "fused_optimizer", "channels_last", "memory"]
NONE = "(none)"
# the files a run reads beside its base (a single-file FLUX, Z-Image, FLUX.2 or Qwen-Image base's text encoders and
# VAE, a training adapter): TrainConfig field -> ComfyUI folder
SEPARATE = {"clip_l": "text_encoders", "t5": "text_encoders", "vae": "vae", "llm": "text_encoders",
            "training_adapter": "loras"}
# added after workflows were saved: listed last, so saved widget values keep their places
LAST = ("llm", "training_adapter")


def _file_choice(name: str, folder: str):
    return ([NONE] + model_files(folder), {"default": NONE, "tooltip": TrainConfig.model_fields[name].description
                                           + f" From models/{folder}."})


class PersonaTrain:
    """LoRA training in a child process, with progress, cancel and a cache of finished runs."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("PERSONA_LORA", "IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("lora", "loss_chart", "lora_file", "best_lora_file")
    OUTPUT_TOOLTIPS = ("The trained LoRA (file, token, class, config).",
                       "Training loss and learning rate against step.",
                       "The LoRA's file name under models/loras, as LoraLoader lists it.",
                       "The best validation step's LoRA by identity (held-out photos when the dataset has "
                       "them; validate_every in a config), as LoraLoader lists it; the final LoRA when "
                       "validation did not run.")
    DESCRIPTION = ("Train a LoRA on a Persona dataset. Runs in a separate process (a crash or "
                   "out-of-memory cannot stop ComfyUI), frees ComfyUI's loaded models first, "
                   "resumes an interrupted run, and reuses a finished one with the same inputs.")

    @classmethod
    def INPUT_TYPES(cls):
        models = base_models() or ["(no model in models/diffusers or models/checkpoints)"]
        return {"required": {
            "dataset": ("PERSONA_DATASET", {"tooltip": "From Persona Build Dataset."}),
            "base_model": (models, {"tooltip": "Base model of the family below: a folder in models/diffusers, "
                                               "a .safetensors file in models/checkpoints, or (FLUX, Z-Image, FLUX.2, Qwen-Image) "
                                               "the transformer file in models/diffusion_models with its text "
                                               "encoder and VAE files chosen below."}),
            "lora_name": ("STRING", {"default": "persona_subject", "tooltip":
                                     "Saved as models/loras/persona/<lora_name>.safetensors."}),
            "preset": (["custom"] + sorted(PRESETS), {"default": "custom", "tooltip":
                                                      "Start from a preset regime; 'custom' uses the widgets below."}),
            **widgets(TrainConfig, _FIELDS, resolution={"step": 64}, learning_rate={"step": 1e-5, "round": 1e-7}),
        }, "optional": {
            **widgets(TrainConfig, ["family"]),
            **{name: _file_choice(name, folder) for name, folder in SEPARATE.items() if name not in LAST},
            "vram_budget_gb": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip":
                                         "With memory 'auto': 0 fits the GPU's free memory, more than 0 fits "
                                         "this many GB (the card's size, say): the memory planner sets "
                                         "precision, checkpointing, optimizer, quantized base, streaming and "
                                         "micro-batch at the best predicted speed, keeping room for the CUDA "
                                         "context and the allocator; the plan shows on the node before the "
                                         "first step. On a CPU with 0, the switches as set."}),
            **widgets(TrainConfig, _MORE, background_weight={"step": 0.05}, caption_dropout={"step": 0.05},
                      ema_decay={"step": 0.001, "round": 1e-4}, loraplus_lr_ratio={"step": 1.0}),
            **{name: _file_choice(name, SEPARATE[name]) for name in LAST},
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def execute(self, dataset, base_model, lora_name, preset, vram_budget_gb=0.0, unique_id=None, **values):
        from ..trainers.subprocess_run import TrainingCancelled, train_in_subprocess

        name = safe_name(lora_name, "lora_name")
        dataset = carried.dataset(dataset, datasets_folder())
        from ..trainers import events
        from ..trainers.subprocess_run import run_key

        files = {field: str(model_file_path(folder, values[field], field))
                 for field, folder in SEPARATE.items() if values.get(field, NONE) != NONE}
        for field in SEPARATE:
            values.pop(field, None)
        memory = {"vram_budget_gb": vram_budget_gb}
        cfg = config_from_widgets(
            TrainConfig, with_preset(values, preset), base_model=str(base_model_path(base_model)), dataset=dataset["path"],
            token=dataset["token"], class_noun=dataset["class_noun"], **files, **memory)
        # one run folder per (dataset content, config): another lora_name reuses the run
        cfg.output_dir = str(output_dir() / "persona" / "runs" / run_key(cfg))
        free_models()
        bar = Progress(cfg.steps)

        planned = {}

        def on_event(event):
            if event.get("event") == events.LOG:
                bar.update(event["step"], cfg.steps)
            elif event.get("event") == events.PLAN:  # before the first step: shown on the node, and logged
                planned.update(event)
                log.info("Persona Train: %s", event["text"])
                show_text(unique_id, event["text"])

        try:
            outcome = train_in_subprocess(cfg, on_event, interrupt_requested)
        except TrainingCancelled:
            check_interrupt()  # raises ComfyUI's own interrupt exception (the child has stopped)
            raise
        target = loras_dir() / "persona" / f"{name}.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(outcome.lora_path, target)
        from PIL import Image
        import numpy as np

        chart_path = outcome.run_dir / "loss.png"
        chart = np.asarray(Image.open(chart_path).convert("RGB")) if chart_path.is_file() \
            else np.zeros((64, 64, 3), np.uint8)
        lora = {"path": str(target), "run_dir": str(outcome.run_dir), "token": cfg.token,
                "class_noun": cfg.class_noun, "cached": outcome.cached, "summary": outcome.summary}
        rel = f"persona/{name}.safetensors"
        text = (f"{'reused finished run' if outcome.cached else 'trained'}: {rel}\n"
                f"steps {outcome.summary.get('steps')}, loss {outcome.summary.get('first_loss')} -> "
                f"{outcome.summary.get('final_loss')}")
        if planned:
            text += (f"\nmemory plan: predicted peak {planned['whole_run_peak_mb'] / 1024:.2f} GB of "
                     f"{planned['budget_mb'] / 1024:.2f} GB ({planned['summary']})")
        best_rel = rel
        if outcome.summary.get("best"):
            best_rel = f"persona/{name}_best.safetensors"
            shutil.copy2(outcome.summary["best"], loras_dir() / best_rel)
            text += f"\nbest by identity: step {outcome.summary.get('best_step')} -> {best_rel}"
        lora["best_path"] = str(loras_dir() / best_rel)
        return {"ui": {"text": [text]}, "result": (lora, images_to_tensor([chart]), rel, best_rel)}


class PersonaApplyLora:
    """Apply a LoRA from Persona Train to a MODEL and CLIP (ComfyUI's own LoRA code), so
    training and generation can sit in one graph."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING")
    RETURN_NAMES = ("model", "clip", "token")
    OUTPUT_TOOLTIPS = ("The model with the LoRA.", "The text encoder with the LoRA.",
                       "The subject's token and class, e.g. 'sks person', for prompts.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The base model (the one the LoRA was trained on)."}),
            "clip": ("CLIP", {"tooltip": "The base model's text encoder."}),
            "lora": ("PERSONA_LORA", {"tooltip": "From Persona Train LoRA."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip": "LoRA strength on the UNet."}),
            "strength_clip": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.05, "tooltip": "LoRA strength on the text encoder."}),
        }}

    def execute(self, model, clip, lora, strength_model, strength_clip):
        lora = carried.lora(lora, lora_folders())
        model, clip = apply_lora(model, clip, lora["path"], strength_model, strength_clip)
        return (model, clip, f"{lora['token']} {lora['class_noun']}")


NODES = {"PersonaTrain": (PersonaTrain, "Persona Train LoRA"),
         "PersonaApplyLora": (PersonaApplyLora, "Persona Apply LoRA")}
