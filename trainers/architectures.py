"""Architectures of every family at two sizes, built from config with random weights.

``tiny``: seconds-fast on a CPU, for tests and the demo. ``real``: the published sizes
(SD1.5, SDXL base 1.0, FLUX.1-dev), for the memory benchmark and the planner; built on the
``meta`` device they cost no memory, which is how the planner simulates a training step.
No model hub is contacted: every config is written out here.
"""
from __future__ import annotations

from typing import Literal

from ..deps import require

Size = Literal["tiny", "real"]

_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               projection_dim=768, hidden_act="quick_gelu")
_CLIP_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
               projection_dim=1280, hidden_act="gelu")
_CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  projection_dim=32, hidden_act="quick_gelu")
_VAE_REAL = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=512)
_VAE_TINY = dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, sample_size=128)

ARCHITECTURES: dict[tuple[str, str], dict] = {
    ("sd15", "tiny"): dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                  cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8),
        vae=dict(_VAE_TINY, latent_channels=4), text=_CLIP_TINY),
    ("sd15", "real"): dict(
        unet=dict(sample_size=64, cross_attention_dim=768),
        vae=dict(_VAE_REAL, latent_channels=4), text=_CLIP_L),
    ("sdxl", "tiny"): dict(
        unet=dict(sample_size=16, block_out_channels=(32, 64), layers_per_block=1,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                  attention_head_dim=(2, 4), cross_attention_dim=64, use_linear_projection=True,
                  addition_embed_type="text_time", addition_time_embed_dim=8,
                  projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8),
        vae=dict(_VAE_TINY, latent_channels=4, scaling_factor=0.13025), text=_CLIP_TINY, text_2=_CLIP_TINY),
    ("sdxl", "real"): dict(
        unet=dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                  cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
                  addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
        vae=dict(_VAE_REAL, latent_channels=4, sample_size=1024, scaling_factor=0.13025, force_upcast=True),
        text=_CLIP_L, text_2=_CLIP_G),
    ("flux", "tiny"): dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
                         num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                         guidance_embeds=True, axes_dims_rope=(4, 6, 6)),
        vae=dict(_VAE_TINY, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
        text=_CLIP_TINY,
        t5=dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)),
    ("flux", "real"): dict(
        transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        vae=dict(_VAE_REAL, latent_channels=16, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
        text=_CLIP_L,
        t5=dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32)),
}


def architecture(family: str, size: str) -> dict:
    try:
        return ARCHITECTURES[(family, size)]
    except KeyError:
        raise ValueError(f"architecture: no '{size}' {family} (families sd15/sdxl/flux, sizes tiny/real)") from None


def scheduler_for(family: str):
    diffusers = require("diffusers", "Building a model from config")
    if family == "flux":
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                         max_shift=1.15, base_image_seq_len=256,
                                                         max_image_seq_len=4096)
    return diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, clip_sample=False, steps_offset=1)


def instantiate(family: str, size: str = "tiny", device="cpu", dtype=None, seed: int = 0,
                text_encoders: bool = True, tokenizers: bool = True):
    """Components of ``family`` at ``size`` with random weights, in memory on ``device``
    (``meta``: shapes only). Without ``text_encoders`` they are left out (cached-embedding
    training never holds them)."""
    import torch

    diffusers = require("diffusers", "Building a model from config")
    transformers = require("transformers", "Building a model from config")
    from .models import Components

    arch = architecture(family, size)
    torch.manual_seed(seed)
    dtype = dtype or torch.float32
    with torch.device(device):
        if family == "flux":
            denoiser = diffusers.FluxTransformer2DModel(**arch["transformer"])
        else:
            denoiser = diffusers.UNet2DConditionModel(**arch["unet"])
        vae = diffusers.AutoencoderKL(**arch["vae"])
        te = te2 = None
        if text_encoders:
            te = transformers.CLIPTextModel(clip_config(arch["text"]))
            if family == "sdxl":
                te2 = transformers.CLIPTextModelWithProjection(clip_config(arch["text_2"]))
            elif family == "flux":
                te2 = transformers.T5EncoderModel(transformers.T5Config(**arch["t5"]))
    for m in (denoiser, vae, te, te2):
        if m is not None and dtype != torch.float32:
            m.to(dtype)
    tok = tok2 = None
    if tokenizers:
        tok, tok2 = _tokenizers(family)
    return Components(family, tok, te, vae, denoiser, scheduler_for(family), f"random:{family}-{size}",
                      f"random-{family}-{size}-{seed}", True, tokenizer_2=tok2, text_encoder_2=te2)


def clip_config(shape: dict):
    transformers = require("transformers", "Building a model from config")
    return transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **shape)


def _tokenizers(family: str):
    import os
    from pathlib import Path

    transformers = require("transformers", "Building a model from config")
    from .tokenizer_files import write_clip_tokenizer, write_t5_tokenizer

    cache = Path(os.environ.get("PERSONA_CACHE", Path.home() / ".cache" / "comfyui-persona")) / "tokenizers"
    clip = cache / "clip"
    if not (clip / "vocab.json").is_file():
        write_clip_tokenizer(clip)
    tok = transformers.CLIPTokenizer.from_pretrained(clip)
    if family == "sdxl":
        clip_g = cache / "clip-g"
        if not (clip_g / "vocab.json").is_file():
            write_clip_tokenizer(clip_g, pad_token="!")
        return tok, transformers.CLIPTokenizer.from_pretrained(clip_g)
    if family == "flux":
        t5 = cache / "t5-bytes"
        if not (t5 / "tokenizer.json").is_file():
            write_t5_tokenizer(t5)
        return tok, transformers.T5TokenizerFast.from_pretrained(t5)
    return tok, None


def meta_components(family: str, base_model: str | None = None, size: str = "real"):
    """Shapes-only components: of the model at ``base_model`` when it is a diffusers folder
    (its own configs), else of the ``size`` architecture of ``family``."""
    from pathlib import Path

    import torch

    folder = Path(base_model) if base_model else None
    if folder is None or not (folder / "model_index.json").is_file():
        return instantiate(family, size, device="meta", tokenizers=False)
    diffusers = require("diffusers", "Planning memory")
    transformers = require("transformers", "Planning memory")
    from .models import Components

    with torch.device("meta"):
        if family == "flux":
            denoiser = diffusers.FluxTransformer2DModel.from_config(
                diffusers.FluxTransformer2DModel.load_config(folder / "transformer"))
        else:
            denoiser = diffusers.UNet2DConditionModel.from_config(
                diffusers.UNet2DConditionModel.load_config(folder / "unet"))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder / "vae"))
        te = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        te2 = None
        if family == "sdxl":
            te2 = transformers.CLIPTextModelWithProjection(
                transformers.CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
        elif family == "flux":
            te2 = transformers.T5EncoderModel(transformers.T5Config.from_pretrained(folder / "text_encoder_2"))
    return Components(family, None, te, vae, denoiser, scheduler_for(family), str(folder), "meta", True,
                      text_encoder_2=te2)
