"""Persona Memory Plan: the memory switches that fit a VRAM budget, shown in the canvas."""
from __future__ import annotations

from ..trainers.config import TrainConfig
from .widgets import widgets

CATEGORY = "Persona/train"

PUBLISHED = "(published architecture of the family)"
MAX_SEARCH_SECONDS = 120.0  # of simulation per plan: a shared server's queue must move


class PersonaMemoryPlan:
    """Shows which memory techniques the trainer's planner would switch on for a budget, the
    predicted peak, and the candidates it simulated; the plan text feeds notes or prompts."""

    CATEGORY = CATEGORY
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "FLOAT")
    RETURN_NAMES = ("plan", "predicted_peak_gb")
    OUTPUT_TOOLTIPS = ("The plan as a Markdown table.", "Predicted peak accelerator memory in GB.")
    DESCRIPTION = ("Plan training memory: simulates a training step of the model on the 'meta' device "
                   "(no memory used) for each candidate set of techniques, fastest first, and keeps the "
                   "first that fits. vram_budget_gb 0 uses the free memory of the GPU.")

    @classmethod
    def INPUT_TYPES(cls):
        from .host import base_models

        return {"required": {
            **widgets(TrainConfig, ["family", "method", "resolution", "batch_size", "gradient_accumulation",
                                    "rank", "train_text_encoder", "vram_budget_gb"],
                      resolution={"step": 64}, vram_budget_gb={"step": 0.5}),
            "base_model": ([PUBLISHED] + base_models(), {
                "tooltip": "Plan for this model's own architecture (a diffusers folder), or for the "
                           "family's published size."}),
        }}

    def execute(self, family, method, resolution, batch_size, gradient_accumulation, rank,
                train_text_encoder, vram_budget_gb, base_model):
        from ..trainers.memory.planner import PlanInterrupted, interruptible, plan_request
        from .host import check_interrupt, interrupt_requested

        model = None
        if base_model != PUBLISHED:
            from .host import base_model_path

            model = str(base_model_path(base_model))
        try:
            # Cancel stops the search between simulations, and so does the bound
            with interruptible(interrupt_requested, MAX_SEARCH_SECONDS):
                result = plan_request(family, method, resolution, batch_size, gradient_accumulation, rank,
                                      train_text_encoder, vram_budget_gb, model)
        except PlanInterrupted:
            check_interrupt()  # ComfyUI's own interrupt exception
            raise
        text = result.describe()
        return {"ui": {"text": [text]}, "result": (text, round(result.predicted_peak_mb / 1024, 3))}


NODES = {"PersonaMemoryPlan": (PersonaMemoryPlan, "Persona Memory Plan")}
