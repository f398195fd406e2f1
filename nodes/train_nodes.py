"""Persona Train: dataset + base model + config widgets -> a LoRA that LoraLoader lists."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from ..imaging import images_to_tensor
from ..trainers.config import PRESETS, TrainConfig
from .host import Progress, check_interrupt, interrupt_requested, output_dir
from .widgets import config_from_widgets, widgets

CATEGORY = "Persona/train"

_FIELDS = ["method", "resolution", "steps", "learning_rate", "rank", "alpha", "batch_size",
           "gradient_accumulation", "lr_scheduler", "warmup_steps", "optimizer", "mixed_precision",
           "gradient_checkpointing", "train_text_encoder", "prior_preservation", "num_class_images",
           "prior_loss_weight", "snr_gamma", "seed", "checkpoint_every"]


def base_models() -> list[str]:
    """Diffusers folders in models/diffusers (with model_index.json) and .safetensors
    checkpoints in models/checkpoints."""
    try:
        import folder_paths

        roots = folder_paths.get_folder_paths("diffusers")
        checkpoints = [n for n in folder_paths.get_filename_list("checkpoints")
                       if n.lower().endswith(".safetensors")]
    except (ImportError, KeyError):
        return []
    found = set()
    for root in roots:
        root = Path(root)
        if root.is_dir():
            found.update(p.name for p in root.iterdir() if (p / "model_index.json").is_file())
    return sorted(found) + sorted(checkpoints)


def _model_path(name: str) -> Path:
    import folder_paths

    if name.lower().endswith(".safetensors"):
        path = folder_paths.get_full_path("checkpoints", name)
        if path:
            return Path(path)
        raise FileNotFoundError(f"base_model: checkpoint '{name}' is not in models/checkpoints")
    for root in folder_paths.get_folder_paths("diffusers"):
        candidate = Path(root) / name
        if (candidate / "model_index.json").is_file():
            return candidate
    raise FileNotFoundError(f"base_model: '{name}' is not a diffusers model folder in "
                            f"{folder_paths.get_folder_paths('diffusers')}")


def _loras_dir() -> Path:
    import folder_paths

    return Path(folder_paths.get_folder_paths("loras")[0])


class PersonaTrain:
    """LoRA training in a child process, with progress, cancel and a cache of finished runs."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("PERSONA_LORA", "IMAGE", "STRING")
    RETURN_NAMES = ("lora", "loss_chart", "lora_file")
    OUTPUT_TOOLTIPS = ("The trained LoRA (file, token, class, config).",
                       "Training loss and learning rate against step.",
                       "The LoRA's file name under models/loras, as LoraLoader lists it.")
    DESCRIPTION = ("Train a LoRA on a Persona dataset. Runs in a separate process (a crash or "
                   "out-of-memory cannot stop ComfyUI), frees ComfyUI's loaded models first, "
                   "resumes an interrupted run, and reuses a finished one with the same inputs.")

    @classmethod
    def INPUT_TYPES(cls):
        models = base_models() or ["(no model in models/diffusers or models/checkpoints)"]
        return {"required": {
            "dataset": ("PERSONA_DATASET", {"tooltip": "From Persona Build Dataset."}),
            "base_model": (models, {"tooltip": "SD1.x base model: a folder in models/diffusers or a "
                                               ".safetensors file in models/checkpoints."}),
            "lora_name": ("STRING", {"default": "persona_subject", "tooltip":
                                     "Saved as models/loras/persona/<lora_name>.safetensors."}),
            "preset": (["custom"] + sorted(PRESETS), {"default": "custom", "tooltip":
                                                      "Start from a preset regime; 'custom' uses the widgets below."}),
            **widgets(TrainConfig, _FIELDS, resolution={"step": 64}, learning_rate={"step": 1e-5, "round": 1e-7}),
        }}

    def execute(self, dataset, base_model, lora_name, preset, **values):
        from ..trainers.subprocess_run import TrainingCancelled, train_in_subprocess

        name = lora_name.strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"lora_name: letters, digits, '_', '-' and '.' only, got '{lora_name}'")
        fields = dict(values)
        if preset != "custom":
            fields.update(PRESETS[preset])
        from ..trainers.subprocess_run import run_key

        cfg = config_from_widgets(
            TrainConfig, fields, base_model=str(_model_path(base_model)), dataset=dataset["path"],
            token=dataset["token"], class_noun=dataset["class_noun"])
        # one run folder per (dataset content, config): another lora_name reuses the run
        cfg.output_dir = str(output_dir() / "persona" / "runs" / run_key(cfg))
        _free_comfy_models()
        bar = Progress(cfg.steps)

        def on_event(event):
            if event.get("event") == "log":
                bar.update(event["step"], cfg.steps)

        try:
            outcome = train_in_subprocess(cfg, on_event, interrupt_requested)
        except TrainingCancelled:
            check_interrupt()  # raises ComfyUI's own interrupt exception (the child has stopped)
            raise
        target = _loras_dir() / "persona" / f"{name}.safetensors"
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
        return {"ui": {"text": [text]}, "result": (lora, images_to_tensor([chart]), rel)}


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
        import comfy.sd
        import comfy.utils

        tensors = comfy.utils.load_torch_file(lora["path"], safe_load=True)
        model, clip = comfy.sd.load_lora_for_models(model, clip, tensors, strength_model, strength_clip)
        return (model, clip, f"{lora['token']} {lora['class_noun']}")


def _free_comfy_models() -> None:
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.unload_all_models()
    mm.soft_empty_cache()


NODES = {"PersonaTrain": (PersonaTrain, "Persona Train LoRA"),
         "PersonaApplyLora": (PersonaApplyLora, "Persona Apply LoRA")}
