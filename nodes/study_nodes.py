"""Persona Sweep: a study (grid, variants, regimes, token ablation) in the canvas, run by the
same ``studies.sweep`` as ``persona sweep``."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..core.imaging import images_to_tensor
from ..trainers.config import PRESETS
from . import carried
from .host import (Progress, base_model_path, base_models, check_interrupt, datasets_folder, free_models,
                   interrupt_requested, loras_dir, output_dir, safe_name)

CATEGORY = "Persona/train"


class PersonaSweep:
    """Train and measure several runs on one dataset, one table, the best LoRA picked."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING", "IMAGE")
    RETURN_NAMES = ("table", "best_lora_file", "chart")
    OUTPUT_TOOLTIPS = ("Every run: its changes, time, peak memory, loss, identity (train, held-out), "
                       "copy-paste, CLIP-T, diversity, Q_global and score.",
                       "The best run's LoRA under models/loras (persona/<sweep_name>_best.safetensors).",
                       "The chart of the first axis (score and identity against its values).")
    DESCRIPTION = ("A study like `persona sweep`: a grid over any training fields, a list of variants, the "
                   "underfit/balanced/overfit regimes, or a token ablation. Runs train one after another in a "
                   "child process; a finished run is skipped when the sweep runs again, an interrupted one "
                   "resumes. Tables and charts go to output/persona/sweeps/<sweep_name>.")

    @classmethod
    def INPUT_TYPES(cls):
        models = base_models() or ["(no model in models/diffusers or models/checkpoints)"]
        return {"required": {
            "dataset": ("PERSONA_DATASET", {"tooltip": "From Persona Build Dataset (its held-out photos are "
                                                       "measured too)."}),
            "base_model": (models, {"tooltip": "Base model of every run (SD1.x folder or checkpoint)."}),
            "sweep_name": ("STRING", {"default": "persona_sweep", "tooltip":
                                      "Folder output/persona/sweeps/<name>; the same name resumes the sweep."}),
            "study": (["sweep", "regimes", "tokens"], {"tooltip":
                      "sweep: the runs below; regimes: underfit/balanced/overfit presets; tokens: each token "
                      "below and the class noun alone."}),
            "runs": ("STRING", {"multiline": True, "default": "learning_rate: [0.0001, 0.0005]\nrank: [8, 16]",
                                "tooltip": "study 'sweep' (YAML): a mapping field -> values is a grid; a list "
                                           "of mappings is one run each (optional 'name')."}),
            "preset": (["custom"] + sorted(PRESETS), {"default": "custom", "tooltip": "Preset under every run."}),
            "overrides": ("STRING", {"multiline": True, "default": "steps: 400", "tooltip":
                                     "YAML fields set on every run after its preset and axes."}),
            "tokens": ("STRING", {"default": "sks, vrelk", "tooltip": "study 'tokens': the identifiers compared."}),
            "prompts": ("STRING", {"multiline": True, "default": "a photo of {token} {class}\n"
                                                                 "a photo of {token} {class} on the beach",
                                   "tooltip": "Evaluation prompts, one per line ({token}, {class} filled in)."}),
            "seeds": ("STRING", {"default": "0, 1", "tooltip": "Evaluation seeds of each prompt."}),
            "eval_steps": ("INT", {"default": 20, "min": 1, "max": 500, "tooltip": "Sampling steps of the evaluation."}),
            "embedder": (["dlib", "facenet"], {"tooltip": "Identity embedder of the evaluation."}),
        }}

    def execute(self, dataset, base_model, sweep_name, study, runs, preset, overrides, tokens, prompts, seeds,
                eval_steps, embedder):
        import numpy as np
        from PIL import Image

        from ..studies.config import sweep_from_text
        from ..studies.sweep import load_checked, run_sweep

        name = safe_name(sweep_name, "sweep_name")
        dataset = carried.dataset(dataset, datasets_folder())
        out = output_dir() / "persona" / "sweeps" / name
        cfg = sweep_from_text(
            {"base_model": str(base_model_path(base_model)), "dataset": dataset["path"], "token": dataset["token"],
             "class_noun": dataset["class_noun"]}, study, runs, None if preset == "custom" else preset, overrides,
            tokens, prompts, seeds, eval_steps, embedder, str(out))
        planned = load_checked(cfg)
        free_models()
        bar = Progress(len(planned))
        lines: list[str] = []
        try:
            data = run_sweep(cfg, log=lines.append, progress=lambda done, total: bar.update(done, total),
                             should_cancel=interrupt_requested)
        except Exception:
            check_interrupt()  # an interrupt surfaces as ComfyUI's own exception
            raise
        best_rel = ""
        best = next((r for r in data["runs"] if r["run"] == data["best"]), None)
        if best and best.get("lora"):
            best_rel = f"persona/{name}_best.safetensors"
            (loras_dir() / "persona").mkdir(parents=True, exist_ok=True)
            shutil.copy2(best["lora"], loras_dir() / best_rel)
        charts = sorted(Path(out).glob("chart-*.png"))
        chart = np.asarray(Image.open(charts[0]).convert("RGB")) if charts else np.zeros((64, 64, 3), np.uint8)
        text = data["table"] + f"\n\nbest: {data['best']} ({data['rule']})" + \
            (f" -> {best_rel}" if best_rel else "") + f"\ntables: {out}"
        return {"ui": {"text": [text + "\n\n" + "\n".join(lines)]},
                "result": (data["table"], best_rel, images_to_tensor([chart]))}


NODES = {"PersonaSweep": (PersonaSweep, "Persona Sweep (study)")}
