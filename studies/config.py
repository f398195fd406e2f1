"""SweepConfig: the one config of a study (CLI, tests; a YAML or JSON file).

A base TrainConfig (``base``, optionally a ``preset`` over it), then the runs: a grid over
``axes`` (every combination of the listed values of any TrainConfig field, presets included
as the axis ``preset``), or an explicit list of ``variants`` (each a set of fields, with an
optional ``name``), or ``study: regimes``, the underfit / balanced / overfit presets of the
DreamBooth reproduction study on the same data and prompts, or ``study: tokens``, the token
ablation of the FLUX/LoRA study: the same data captioned ``a photo of <token> <class>`` for
each token, and ``a photo of <class>`` with no identifier. Every run trains into
``output_dir/<run name>`` and samples ``evaluation.prompts`` x ``evaluation.seeds`` at its last
step; those images are measured against the dataset (and its held-out photos).
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..core.config import JobConfig
from ..trainers.config import TrainConfig

REGIMES = ["underfit", "balanced", "overfit"]


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompts: list[str] = Field(default_factory=lambda: ["a photo of {token} {class}",
                                                        "a photo of {token} {class} on the beach"],
                               description="Prompts sampled at each run's last step ({token}/{class} filled in).")
    seeds: list[int] = Field(default_factory=lambda: [0, 1], description="Seeds of each prompt.")
    steps: int = Field(20, ge=1, le=500, description="Sampling steps.")
    embedder: Literal["dlib", "facenet"] = Field("dlib", description="Identity embedder (the ones training "
                                                                     "validation scores with).")


# What a sweep's axes, variants and overrides may set: the training fields, never a path (the
# model, dataset, VAE and encoder files, output and cache folders come from the sweep's base
# and folder), the device or the consent switch. An explicit list: a field added to
# TrainConfig is not sweepable until it is named here.
RUN_FIELDS = frozenset({
    "alpha", "aspect_buckets", "attention", "background_weight", "batch_size", "cache_latents",
    "cache_text_embeddings", "caption_dropout", "caption_dropout_to", "caption_source", "channels_last",
    "checkpoint_blocks", "checkpoint_every", "class_images_steps", "class_noun", "class_prompt", "compile",
    "cuda_graphs", "ema", "ema_decay", "ema_every", "ema_export", "ema_on_cpu", "family", "full_bf16",
    "fused_backward", "fused_optimizer", "grad_set_to_none", "gradient_accumulation", "gradient_checkpointing",
    "guidance", "identity_every", "identity_loss_weight", "identity_max_timestep", "identity_weights",
    "image_weights", "instance_prompt", "keep_checkpoints", "learning_rate", "log_every", "lora_dropout",
    "loraplus_lr_ratio", "lr_scheduler", "masked_loss", "max_grad_norm", "memory", "method", "mixed_precision",
    "noise_offset", "num_class_images", "optimizer", "prior_loss_weight", "prior_preservation", "quantize_base",
    "rank", "resolution", "seed", "shuffle_tags", "snr_gamma", "steps", "stream_blocks", "t5_max_length",
    "target_modules", "text_encoder_lr", "tf32", "timestep_shift", "token", "train_text_encoder", "use_dora",
    "vae_slicing", "vae_tiling", "validate_every", "validation_identity", "validation_prompts",
    "validation_seeds", "validation_steps", "vram_budget_gb", "warmup_steps", "weight_decay",
})


class SweepConfig(JobConfig):
    version: Literal[1] = Field(1, description="Config format version.")
    study: Literal["sweep", "regimes", "tokens"] = Field(
        "sweep", description="'sweep': axes or variants; 'regimes': the underfit / balanced / overfit presets; "
                             "'tokens': the same data trained with each identifier in tokens, and with the class "
                             "noun alone (no identifier).")
    tokens: list[str] = Field(default_factory=lambda: ["sks", "vrelk"],
                              description="study 'tokens': the identifiers compared (a rare token such as sks, a "
                                          "made-up word, the person's name); a class-only run is always added.")
    base: dict[str, Any] = Field(..., description="TrainConfig fields every run shares (base_model, dataset, ...).")
    preset: str | None = Field(None, description="A training preset applied over base.")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="Grid: TrainConfig field -> values.")
    variants: list[dict[str, Any]] = Field(default_factory=list, description="Explicit runs: fields (and a name).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Fields set on every run after its preset "
                                                                        "and axes (e.g. fewer steps for a quick look).")
    evaluation: Evaluation = Field(default_factory=Evaluation, description="How every run is measured.")
    output_dir: str = Field("runs/sweep", min_length=1, description="Where the runs and the tables go.")
    jobs: int = Field(1, ge=1, le=64, description="Runs trained at once (processes).")
    gpus: list[int] = Field(default_factory=list, description="GPU indices the jobs take in turn "
                                                              "(CUDA_VISIBLE_DEVICES); empty: as the system has it.")

    @model_validator(mode="after")
    def _one_kind_of_runs(self):
        if self.study in ("regimes", "tokens") and (self.axes or self.variants):
            raise ValueError(f"study: '{self.study}' defines its own runs; leave axes and variants empty")
        if self.study == "tokens" and not all(t.strip() and " " not in t.strip() for t in self.tokens):
            raise ValueError("tokens: one word each (the class-only run is added by the study)")
        if self.study == "sweep" and bool(self.axes) == bool(self.variants):
            raise ValueError("axes/variants: a sweep needs axes (a grid) or variants (a list), one of them")
        for name, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"axes.{name}: a non-empty list of values")
        for where, fields in [("axes", self.axes), ("overrides", self.overrides),
                              *((f"variants[{i}]", v) for i, v in enumerate(self.variants))]:
            if not isinstance(fields, dict):
                raise ValueError(f"{where}: a mapping of training fields")
            refused = sorted((set(fields) - RUN_FIELDS) & set(TrainConfig.model_fields))  # typos: TrainConfig
            if refused:
                raise ValueError(f"{where}: {', '.join(map(repr, refused))} cannot be set per run (runs vary "
                                 f"training fields; files, folders and the device come from the sweep's base)")
        return self


def sweep_from_text(base: dict[str, Any], study: str, runs: str, preset: str | None, overrides: str, tokens: str,
                    prompts: str, seeds: str, steps: int, embedder: str, output_dir: str) -> SweepConfig:
    """A SweepConfig from the text fields of a form (the Persona Sweep node): ``runs`` and
    ``overrides`` are YAML (for study 'sweep', a mapping field -> values is a grid, a list of
    mappings the variants), ``tokens`` and ``seeds`` comma-separated, ``prompts`` one per line."""
    import yaml

    def parse(text: str, name: str):
        try:
            return yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"{name}: not valid YAML ({' '.join(str(exc).split())})") from None

    spec = parse(runs, "runs") if study == "sweep" else None
    if study == "sweep" and not isinstance(spec, (dict, list)):
        raise ValueError("runs: a YAML mapping (field: [values]) or a list of runs, for study 'sweep'")
    extra = parse(overrides, "overrides") or {}
    if not isinstance(extra, dict):
        raise ValueError("overrides: a YAML mapping of training fields")
    try:
        seed_list = [int(v) for v in seeds.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"seeds: comma-separated integers, got '{seeds}'") from None
    return SweepConfig.from_dict({
        "study": study, "preset": preset, "base": base,
        **({"axes": spec} if isinstance(spec, dict) else {"variants": spec} if spec else {}),
        "tokens": [t.strip() for t in tokens.split(",") if t.strip()], "overrides": extra,
        "evaluation": {"prompts": [line for line in prompts.splitlines() if line.strip()], "seeds": seed_list,
                       "steps": steps, "embedder": embedder},
        "output_dir": output_dir}, source="Persona Sweep")
