"""FLUX from the files ComfyUI users have: the separate transformer
(``models/unet`` / ``models/diffusion_models``), CLIP-L and T5-XXL (``models/clip`` /
``models/text_encoders``) and VAE (``models/vae``) files, read with the configs in
``configs/flux``. The transformer file may be in BFL's original layout (``double_blocks``)
or diffusers' layout; both load.
"""
from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

from ....core.deps import require
from ..separate_files import build_on_meta, load_text_model, load_vae, require_companions, strip_prefix, \
    transformer_loader

log = logging.getLogger(__name__)


def load_separate_files(path: Path, config: Path, clip_l, t5, vae, text_skip: tuple[str, ...] = ()):
    """(the transformer's loader, CLIP-L, T5, VAE) from ComfyUI's separate files, shaped by
    ``config`` (``configs/flux`` with its tokenizers) and, for the transformer, by the file
    itself (read when the loader is called: ``Components.load_denoiser``); ``text_skip``: the
    text encoders' layers read as bf16 where their file has fp8 (``load_text_model``)."""
    transformers = require("transformers", "Training FLUX")
    require_companions(path, "FLUX", clip_l=clip_l, t5=t5, vae=vae)
    transformer = transformer_loader(load_transformer_file, path, config / "transformer")
    clip = load_text_model(transformers.CLIPTextModel, transformers.CLIPTextConfig, config / "text_encoder", clip_l,
                           fp8_skip=text_skip)
    t5_model = load_text_model(transformers.T5EncoderModel, transformers.T5Config, config / "text_encoder_2", t5,
                               fp8_skip=text_skip)
    return transformer, clip, t5_model, load_vae(config / "vae", vae)


def load_transformer_file(path: Path, config: Path, keep_fp8: tuple[str, ...] | None = None):
    """The FLUX transformer from one .safetensors file in BFL or diffusers layout
    (``keep_fp8``: see ``build_on_meta``)."""
    diffusers = require("diffusers", "Training FLUX")
    from ...file_weights import convert_keeping_fp8, read_weights
    from .keys import bfl_to_diffusers

    tensors = strip_prefix(read_weights(path, keep_fp8 is not None))
    cfg = json.loads((config / "config.json").read_text())
    if any(k.startswith("double_blocks.") for k in tensors):
        cfg.update(_shape_from_bfl(tensors))
        tensors = convert_keeping_fp8(partial(bfl_to_diffusers, cfg=cfg), tensors)
    else:
        cfg.update(num_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("transformer_blocks.")),
                   num_single_layers=1 + max(int(k.split(".")[1]) for k in tensors
                                             if k.startswith("single_transformer_blocks.")),
                   guidance_embeds=any("guidance_embedder" in k for k in tensors))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    return build_on_meta(diffusers.FluxTransformer2DModel, cfg, tensors, path, "FLUX transformer",
                         keep_fp8=keep_fp8)


def _shape_from_bfl(tensors) -> dict:
    inner, _ = tensors["img_in.weight"].shape
    head = tensors["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    return dict(num_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("double_blocks.")),
                num_single_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("single_blocks.")),
                guidance_embeds="guidance_in.in_layer.weight" in tensors, attention_head_dim=head,
                num_attention_heads=inner // head, in_channels=tensors["img_in.weight"].shape[1],
                joint_attention_dim=tensors["txt_in.weight"].shape[1],
                pooled_projection_dim=tensors["vector_in.in_layer.weight"].shape[1])
