"""Model folders built from config with random weights (shapes in ``architectures``).

No model hub is needed: the tests and the demo train on these. ``tiny`` is seconds-fast
on a CPU; the SD1.5 ``real`` size is what ComfyUI detects as SD1.5, for tests that run
ComfyUI's own loaders and samplers. CLIP tokenizers are the real ones, rebuilt offline.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from ..deps import require
from .tokenizer_files import write_clip_tokenizer

Size = Literal["tiny", "sd15"]


def build_model(folder: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a diffusers-format SD1.x model with random weights to ``folder`` (``sd15``: the
    published SD1.5 architecture, which ComfyUI detects as SD1.5)."""
    return build_family_model(folder, "sd15", "tiny" if size == "tiny" else "real", seed)


def _classic_clip_keys(path: Path) -> None:
    """Rewrite a CLIP text model file with the classic ``text_model.`` key prefix.

    Recent transformers save ``CLIPTextModel`` without it; every SD checkpoint, ComfyUI's
    loaders and older transformers expect it, and recent transformers load both.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    if all(k.startswith("text_model.") for k in tensors):
        return
    save_file({(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in tensors.items()},
              str(path), metadata={"format": "pt"})


_PIPELINES = {
    "sd15": ("StableDiffusionPipeline", {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "feature_extractor": [None, None],
        "safety_checker": [None, None], "requires_safety_checker": False}),
    "sdxl": ("StableDiffusionXLPipeline", {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"],
        "force_zeros_for_empty_prompt": True}),
    "flux": ("FluxPipeline", {
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}),
}


def build_family_model(folder: str | Path, family: str, size: str = "tiny", seed: int = 0) -> Path:
    """Write a diffusers folder of ``family`` at ``size`` with random weights (see architectures)."""
    diffusers = require("diffusers", "Building a model from config")
    from .architectures import instantiate

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    comps = instantiate(family, size, seed=seed)
    tmp = folder.with_name(folder.name + ".partial")
    comps.unet.save_pretrained(tmp / ("transformer" if family == "flux" else "unet"))
    comps.vae.save_pretrained(tmp / "vae")
    comps.text_encoder.save_pretrained(tmp / "text_encoder")
    _classic_clip_keys(tmp / "text_encoder" / "model.safetensors")
    if comps.text_encoder_2 is not None:
        comps.text_encoder_2.save_pretrained(tmp / "text_encoder_2")
        if family == "sdxl":
            _classic_clip_keys(tmp / "text_encoder_2" / "model.safetensors")
    write_clip_tokenizer(tmp / "tokenizer")
    if family == "sdxl":
        write_clip_tokenizer(tmp / "tokenizer_2", pad_token="!")
    elif comps.tokenizer_2 is not None:
        comps.tokenizer_2.save_pretrained(tmp / "tokenizer_2")
    comps.scheduler.save_pretrained(tmp / "scheduler")
    name, parts = _PIPELINES[family]
    (tmp / "model_index.json").write_text(json.dumps(
        {"_class_name": name, "_diffusers_version": diffusers.__version__, **parts}, indent=2))
    (tmp / "persona_model.json").write_text(json.dumps({"random_weights": True, "size": size, "seed": seed,
                                                        "family": family}))
    tmp.rename(folder)
    return folder
