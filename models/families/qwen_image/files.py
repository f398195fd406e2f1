"""Qwen-Image from the files ComfyUI users have: the transformer (``models/diffusion_models``:
``qwen_image_bf16.safetensors`` or ``qwen_image_fp8_e4m3fn.safetensors``, diffusers' names,
which are ComfyUI's), Qwen2.5-VL (``models/text_encoders/qwen_2.5_vl_7b.safetensors``, plain or
fp8-scaled: the language model is read, the vision tower is not) and the VAE
(``models/vae/qwen_image_vae.safetensors``, in the original Wan 2.1 layout, or diffusers'),
read with the configs in ``configs/qwen_image``.
"""
from __future__ import annotations

from pathlib import Path

from ....core.deps import require
from ..separate_files import build_on_meta, load_text_model, model_config, require_companions, strip_prefix, \
    transformer_loader


def load_separate_files(path: Path, config: Path, llm, vae, text_skip: tuple[str, ...] = ()):
    """(the transformer's loader, Qwen2.5-VL's language model, VAE) from ComfyUI's separate files."""
    transformers = require("transformers", "Training Qwen-Image")
    require_companions(path, "Qwen-Image", llm=llm, vae=vae)
    transformer = transformer_loader(load_transformer_file, path, config / "transformer")
    text_encoder = load_text_model(transformers.Qwen2_5_VLTextModel, transformers.Qwen2_5_VLTextConfig,
                                   config / "text_encoder", llm, fp8_skip=text_skip)
    return transformer, text_encoder, load_vae_file(config / "vae", vae)


def shape_from_weights(tensors) -> dict:
    """The config entries a file's own shapes fix."""
    inner, in_channels = tensors["img_in.weight"].shape
    head = tensors["transformer_blocks.0.attn.norm_q.weight"].shape[0]
    blocks = {k.split(".")[1] for k in tensors if k.startswith("transformer_blocks.")}
    return dict(in_channels=in_channels, num_layers=len(blocks), attention_head_dim=head,
                num_attention_heads=inner // head, joint_attention_dim=tensors["txt_in.weight"].shape[1],
                out_channels=tensors["proj_out.weight"].shape[0] // 4)


def load_transformer_file(path: Path, config: Path, keep_fp8: tuple[str, ...] | None = None):
    """The Qwen-Image transformer from one .safetensors file (bf16, or fp8 dequantized; with
    ``keep_fp8``, see ``build_on_meta``, fp8 as stored)."""
    diffusers = require("diffusers", "Training Qwen-Image")
    from ...file_weights import read_weights

    tensors = strip_prefix(read_weights(path, keep_fp8 is not None))
    cfg = model_config(config)
    try:
        cfg.update(shape_from_weights(tensors))
    except KeyError as e:
        raise ValueError(f"base_model: '{path}' is not a Qwen-Image transformer (no {e})") from None
    if cfg["attention_head_dim"] != sum(cfg["axes_dims_rope"]):
        raise ValueError(f"base_model: '{path}': heads of {cfg['attention_head_dim']} channels do not fit "
                         f"Qwen-Image's rotary axes {cfg['axes_dims_rope']}")
    model = build_on_meta(diffusers.QwenImageTransformer2DModel, cfg, tensors, path, "Qwen-Image transformer",
                          keep_fp8=keep_fp8)
    import torch

    with torch.device("cpu"):  # its rotary tables are computed when built, held by no file
        model.pos_embed = type(model.pos_embed)(theta=10000, axes_dim=list(cfg["axes_dims_rope"]), scale_rope=True)
    return model


def load_vae_file(config: Path, file):
    """Qwen-Image's VAE from one file: the original (Wan 2.1) layout ComfyUI's
    ``qwen_image_vae.safetensors`` uses (``encoder.conv1``, ``decoder.head``), converted to
    diffusers' names, or diffusers' own layout."""
    diffusers = require("diffusers", "Loading a VAE file")
    from ...file_weights import read_weights

    tensors = strip_prefix(read_weights(file))
    if "encoder.conv1.weight" in tensors:
        from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

        tensors = convert_wan_vae_to_diffusers(tensors)
    cfg = model_config(config)
    return build_on_meta(diffusers.AutoencoderKLQwenImage, cfg, tensors, file, "Qwen-Image VAE", "vae")
