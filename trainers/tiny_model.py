"""Small Stable-Diffusion-1.x-shaped models built from config with random weights.

No model hub is needed: the tests and the demo train on these. ``tiny`` is seconds-fast
on a CPU; ``sd15`` is the full SD1.5 architecture (what ComfyUI detects as SD1.5), for
tests that run ComfyUI's own loaders and samplers. The tokenizer is the real CLIP one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from ..deps import require
from .tokenizer_files import write_clip_tokenizer

Size = Literal["tiny", "sd15"]

_SHAPES = {
    "tiny": dict(unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                           cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8),
                 vae=dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                          norm_num_groups=8, sample_size=128),
                 text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4)),
    "sd15": dict(unet=dict(sample_size=64, cross_attention_dim=768),
                 vae=dict(block_out_channels=(128, 256, 512, 512),
                          down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                          layers_per_block=2, sample_size=512),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                           num_attention_heads=12)),
}


def build_model(folder: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a diffusers-format SD1.x model with random weights to ``folder``."""
    import torch

    diffusers = require("diffusers", "Building a model from config")
    transformers = require("transformers", "Building a model from config")
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    shapes = _SHAPES[size]
    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(**shapes["unet"])
    vae = diffusers.AutoencoderKL(**shapes["vae"])
    text_cfg = transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77,
                                           hidden_act="quick_gelu", projection_dim=768,
                                           **shapes["text"])
    text = transformers.CLIPTextModel(text_cfg)
    scheduler = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear", num_train_timesteps=1000,
                                        clip_sample=False, steps_offset=1)
    tmp = folder.with_name(folder.name + ".partial")
    unet.save_pretrained(tmp / "unet")
    vae.save_pretrained(tmp / "vae")
    text.save_pretrained(tmp / "text_encoder")
    _classic_clip_keys(tmp / "text_encoder" / "model.safetensors")
    scheduler.save_pretrained(tmp / "scheduler")
    write_clip_tokenizer(tmp / "tokenizer")
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "DDPMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    (tmp / "persona_model.json").write_text(json.dumps({"random_weights": True, "size": size, "seed": seed}))
    tmp.rename(folder)
    return folder


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
    """Write an SDXL- or FLUX-shaped diffusers folder with random weights (see architectures)."""
    diffusers = require("diffusers", "Building a model from config")
    from .architectures import instantiate

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    if family == "sd15":
        return build_model(folder, "tiny" if size == "tiny" else "sd15", seed)
    comps = instantiate(family, size, seed=seed)
    tmp = folder.with_name(folder.name + ".partial")
    comps.unet.save_pretrained(tmp / ("transformer" if family == "flux" else "unet"))
    comps.vae.save_pretrained(tmp / "vae")
    comps.text_encoder.save_pretrained(tmp / "text_encoder")
    _classic_clip_keys(tmp / "text_encoder" / "model.safetensors")
    comps.text_encoder_2.save_pretrained(tmp / "text_encoder_2")
    if family == "sdxl":
        _classic_clip_keys(tmp / "text_encoder_2" / "model.safetensors")
    comps.tokenizer.save_pretrained(tmp / "tokenizer")
    comps.tokenizer_2.save_pretrained(tmp / "tokenizer_2")
    comps.scheduler.save_pretrained(tmp / "scheduler")
    name, parts = _PIPELINES[family]
    (tmp / "model_index.json").write_text(json.dumps(
        {"_class_name": name, "_diffusers_version": diffusers.__version__, **parts}, indent=2))
    (tmp / "persona_model.json").write_text(json.dumps({"random_weights": True, "size": size, "seed": seed,
                                                        "family": family}))
    tmp.rename(folder)
    return folder
