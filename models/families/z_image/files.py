"""Z-Image from the files ComfyUI users have: the transformer (``models/diffusion_models``,
in the original layout ComfyUI's own files use, or diffusers' layout; bf16 or fp8), the Qwen3
text encoder (``models/text_encoders/qwen_3_4b.safetensors``) and FLUX.1's VAE
(``models/vae/ae.safetensors``), read with the configs in ``configs/z_image``.
"""
from __future__ import annotations

from pathlib import Path

from ....core.deps import require
from ..separate_files import build_on_meta, load_text_model, load_vae, model_config, require_companions, \
    strip_prefix, transformer_loader


def load_separate_files(path: Path, config: Path, llm, vae, text_skip: tuple[str, ...] = ()):
    """(the transformer's loader, Qwen3 text encoder, VAE) from ComfyUI's separate files."""
    transformers = require("transformers", "Training Z-Image")
    require_companions(path, "Z-Image", llm=llm, vae=vae)
    transformer = transformer_loader(load_transformer_file, path, config / "transformer")
    text_encoder = load_text_model(transformers.Qwen3Model, transformers.Qwen3Config, config / "text_encoder", llm,
                                   fp8_skip=text_skip)
    return transformer, text_encoder, load_vae(config / "vae", vae)


def shape_from_weights(tensors) -> dict:
    """The config entries a file's own shapes fix (diffusers' layout)."""
    dim, cap = tensors["cap_embedder.1.weight"].shape
    blocks = {k.split(".")[1] for k in tensors if k.startswith("layers.")}
    refiners = {k.split(".")[1] for k in tensors if k.startswith("noise_refiner.")}
    head = tensors["layers.0.attention.norm_q.weight"].shape[0]
    return dict(dim=dim, cap_feat_dim=cap, n_layers=len(blocks), n_refiner_layers=len(refiners),
                n_heads=dim // head, n_kv_heads=dim // head)


def load_transformer_file(path: Path, config: Path, keep_fp8: tuple[str, ...] | None = None):
    """The Z-Image transformer from one .safetensors file in the original or diffusers layout
    (``keep_fp8``: see ``build_on_meta``)."""
    diffusers = require("diffusers", "Training Z-Image")
    from ...file_weights import convert_keeping_fp8, read_weights
    from .keys import original_to_diffusers

    tensors = strip_prefix(read_weights(path, keep_fp8 is not None))
    if any(".attention.qkv." in k for k in tensors):
        tensors = convert_keeping_fp8(original_to_diffusers, tensors)
    cfg = model_config(config)
    try:
        cfg.update(shape_from_weights(tensors))
    except KeyError as e:
        raise ValueError(f"base_model: '{path}' is not a Z-Image transformer (no {e})") from None
    if cfg["dim"] // cfg["n_heads"] != sum(cfg["axes_dims"]):
        raise ValueError(f"base_model: '{path}': heads of {cfg['dim'] // cfg['n_heads']} channels do not fit "
                         f"Z-Image's rotary axes {cfg['axes_dims']}")
    return build_on_meta(diffusers.ZImageTransformer2DModel, cfg, tensors, path, "Z-Image transformer",
                         keep_fp8=keep_fp8)
