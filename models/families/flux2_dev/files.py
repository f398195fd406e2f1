"""FLUX.2 dev from the files ComfyUI users have: the transformer (``models/diffusion_models``:
``flux2_dev_fp8mixed.safetensors`` or bf16, BFL's layout or diffusers'), Mistral Small 3.1
(``models/text_encoders/mistral_3_small_flux2_bf16.safetensors`` or ``_fp8``: its language
model as ``model.*``, the tokenizer inside as ``tekken_model``; the 30-layer "pruned" file as
well) and FLUX.2's VAE (``models/vae/flux2-vae.safetensors``), read with the configs in
``configs/flux2_dev``.
"""
from __future__ import annotations

from pathlib import Path

from ....core.deps import require
from ..flux2.files import has_guidance_embedding, load_transformer_file, load_vae, transformer_width
from ..separate_files import load_text_model, require_companions, transformer_loader


def load_separate_files(path: Path, config: Path, llm, vae, text_skip: tuple[str, ...] = ()):
    """(the transformer's loader, Mistral's language model, VAE) from ComfyUI's separate files."""
    require_companions(path, "FLUX.2 dev", llm=llm, vae=vae)
    if not has_guidance_embedding(path):
        raise ValueError(f"base_model: '{path}' is a FLUX.2 transformer without a guidance embedding (klein); "
                         f"train it as family flux2")
    transformer = transformer_loader(load_transformer_file, path, config / "transformer")
    return transformer, load_mistral(config / "text_encoder", llm, text_skip), load_vae(config / "vae", vae)


def load_mistral(config: Path, file, fp8_skip: tuple[str, ...] = ()) -> object:
    """Mistral's language model (``MistralModel``) from one file: the whole 40 layers, or the
    30 of ComfyUI's pruned FLUX.2 file, whose last state is read without the final norm (as
    ComfyUI reads it)."""
    import torch
    from safetensors import safe_open

    from . import HIDDEN_LAYERS

    transformers = require("transformers", "Training FLUX.2 dev")
    with safe_open(str(file), "pt") as f:  # the shape alone: nothing is read
        layers = {int(k.split("layers.")[1].split(".")[0]) for k in f.keys() if ".layers." in k}
    if len(layers) < max(HIDDEN_LAYERS):
        raise ValueError(f"llm: '{file}' has {len(layers)} Mistral layers; FLUX.2 dev reads hidden states "
                         f"{HIDDEN_LAYERS}")
    model = load_text_model(transformers.MistralModel, transformers.MistralConfig, config, file,
                            {"num_hidden_layers": len(layers)}, unread=("norm.weight",), fp8_skip=fp8_skip)
    if len(layers) == max(HIDDEN_LAYERS):  # the last state read is the last layer's own output
        model.norm = torch.nn.Identity()
    return model


# FLUX.2 dev's width: its transformer is 6144 wide (klein 4B 3072, 9B 4096)
DEV_WIDTH = 6144


def published_size(path: Path) -> str:
    """``"real"``: FLUX.2 dev has one size; a transformer file of another width is refused."""
    width = transformer_width(path)
    if width is not None and width != DEV_WIDTH:
        raise ValueError(f"base_model: '{path}' is a FLUX.2 transformer {width} wide; FLUX.2 dev is {DEV_WIDTH} "
                         f"(klein 4B/9B: family flux2)")
    return "real"
