"""FLUX.2 from the files ComfyUI users have: the transformer (``models/diffusion_models``, in
BFL's original layout or diffusers' layout; bf16 or fp8), the Qwen3 text encoder
(``models/text_encoders/qwen_3_4b.safetensors`` for klein 4B, ``qwen_3_8b`` for klein 9B) and
FLUX.2's own VAE (``models/vae/flux2-vae.safetensors``, 32 latent channels and the batch-norm
statistics its latents are normalised by), read with the configs in ``configs/flux2``.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ....core.deps import require
from ..separate_files import build_on_meta, load_text_model, model_config, require_companions, strip_prefix, \
    transformer_loader


def load_separate_files(path: Path, config: Path, llm, vae, text_skip: tuple[str, ...] = ()):
    """(the transformer's loader, Qwen3 text encoder, VAE) from ComfyUI's separate files."""
    transformers = require("transformers", "Training FLUX.2")
    require_companions(path, "FLUX.2", llm=llm, vae=vae)
    transformer = transformer_loader(load_transformer_file, path, config / "transformer")
    text_encoder = load_text_model(transformers.Qwen3Model, transformers.Qwen3Config, config / "text_encoder", llm,
                                   qwen3_overrides(llm), fp8_skip=text_skip)
    return transformer, text_encoder, load_vae(config / "vae", vae)


def qwen3_overrides(file) -> dict:
    """Nothing for Qwen3-4B (klein 4B, the shipped config); Qwen3-8B's shape for a file 4096
    wide (klein 9B)."""
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:  # the shape alone: nothing is read
        key = next((k for k in f.keys() if k.endswith("layers.0.input_layernorm.weight")), None)
        width = f.get_slice(key).get_shape()[0] if key else 0
    return dict(QWEN3_8B) if width == QWEN3_8B["hidden_size"] else {}


# Qwen3-8B, klein 9B's text encoder, where the shipped config is Qwen3-4B's
QWEN3_8B = dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                num_key_value_heads=8, head_dim=128, tie_word_embeddings=False)


def load_vae(config: Path, file: str | Path):
    """FLUX.2's VAE from one file in the original layout (``encoder.down.*``, ``bn.*``) or
    diffusers' layout."""
    diffusers = require("diffusers", "Loading a FLUX.2 VAE file")
    import torch

    from ...file_weights import read_weights

    tensors = read_weights(file)
    for prefix in ("first_stage_model.", "vae."):  # a checkpoint's VAE, ComfyUI's saved one
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    conf = diffusers.AutoencoderKLFlux2.load_config(config)
    if any(k.startswith("encoder.down.") for k in tensors):  # original layout
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        stats = {k: v for k, v in tensors.items() if k.startswith("bn.")}
        tensors = {**convert_ldm_vae_checkpoint(tensors, conf), **stats}
    with torch.device("meta"):
        model = diffusers.AutoencoderKLFlux2.from_config(conf)
    tensors.setdefault("bn.num_batches_tracked", torch.tensor(0))
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"vae: '{file}' is not a FLUX.2 VAE (32 latent channels, batch-norm statistics): "
                         f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model


# klein's published sizes by the transformer's width (``models/architectures.py``)
SIZES = {3072: "real", 4096: "klein-9b"}


def transformer_width(path: Path) -> int | None:
    """The width of a FLUX.2 transformer file's input projection (its header alone: nothing is
    read); None for a file that is not .safetensors, 0 where no input projection is found."""
    from safetensors import safe_open

    if Path(path).suffix != ".safetensors":
        return None
    with safe_open(str(path), "pt") as f:
        key = next((k for k in f.keys() if k.endswith(("img_in.weight", "x_embedder.weight"))), None)
        return f.get_slice(key).get_shape()[0] if key else 0


def has_guidance_embedding(path: Path) -> bool:
    """Whether a FLUX.2 transformer file embeds guidance (dev does, klein does not): its header
    alone, BFL's ``guidance_in`` or diffusers' ``guidance_embedder``."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return any("guidance_in." in k or "guidance_embedder." in k for k in f.keys())


def published_size(path: Path) -> str:
    """klein 4B (``"real"``) or klein 9B (``"klein-9b"``), from the transformer file's width."""
    width = transformer_width(path)
    if width is None:
        return "real"
    if width not in SIZES:
        raise ValueError(f"base_model: '{path}' is a FLUX.2 transformer {width} wide; the family flux2 is klein "
                         f"4B (3072) and klein 9B (4096); FLUX.2 dev (6144) is the family flux2_dev")
    return SIZES[width]


def shape_from_bfl(tensors) -> dict:
    """The config entries a BFL-layout file's own shapes fix."""
    inner, channels = tensors["img_in.weight"].shape
    head = tensors["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    return dict(num_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("double_blocks.")),
                num_single_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("single_blocks.")),
                guidance_embeds="guidance_in.in_layer.weight" in tensors, attention_head_dim=head,
                num_attention_heads=inner // head, in_channels=channels,
                joint_attention_dim=tensors["txt_in.weight"].shape[1])


def load_transformer_file(path: Path, config: Path, keep_fp8: tuple[str, ...] | None = None):
    """The FLUX.2 transformer from one .safetensors file in BFL or diffusers layout
    (``keep_fp8``: see ``build_on_meta``)."""
    diffusers = require("diffusers", "Training FLUX.2")
    from ...file_weights import convert_keeping_fp8, read_weights
    from .keys import bfl_to_diffusers

    tensors = strip_prefix(read_weights(path, keep_fp8 is not None))
    cfg = model_config(config)
    try:
        if "double_stream_modulation_img.lin.weight" in tensors:
            cfg.update(shape_from_bfl(tensors))
            tensors = convert_keeping_fp8(partial(bfl_to_diffusers, cfg=cfg), tensors)
        else:
            inner, channels = tensors["x_embedder.weight"].shape
            head = tensors["transformer_blocks.0.attn.norm_q.weight"].shape[0]
            cfg.update(num_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("transformer_blocks.")),
                       num_single_layers=1 + max(int(k.split(".")[1]) for k in tensors
                                                 if k.startswith("single_transformer_blocks.")),
                       guidance_embeds=any("guidance_embedder" in k for k in tensors), attention_head_dim=head,
                       num_attention_heads=inner // head, in_channels=channels,
                       joint_attention_dim=tensors["context_embedder.weight"].shape[1])
    except (KeyError, ValueError) as e:
        raise ValueError(f"base_model: '{path}' is not a FLUX.2 transformer (no {e})") from None
    return build_on_meta(diffusers.Flux2Transformer2DModel, cfg, tensors, path, "FLUX.2 transformer",
                         keep_fp8=keep_fp8)
