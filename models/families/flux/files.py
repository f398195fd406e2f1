"""FLUX from the files ComfyUI users have: the separate transformer
(``models/unet`` / ``models/diffusion_models``), CLIP-L and T5-XXL (``models/clip`` /
``models/text_encoders``) and VAE (``models/vae``) files, read with the configs in
``configs/flux``. The transformer file may be in BFL's original layout (``double_blocks``)
or diffusers' layout; both load.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from ....core.deps import require

log = logging.getLogger(__name__)


def load_separate_files(path: Path, config: Path, clip_l, t5, vae):
    """(transformer, CLIP-L, T5, VAE) from ComfyUI's separate files, shaped by ``config``
    (``configs/flux`` with its tokenizers) and, for the transformer, by the file itself."""
    diffusers = require("diffusers", "Training FLUX")
    transformers = require("transformers", "Training FLUX")
    missing = [n for n, v in (("clip_l", clip_l), ("t5", t5), ("vae", vae)) if not v]
    if missing:
        raise ValueError(f"base_model: '{path}' is a single FLUX transformer file; also give {', '.join(missing)}")
    transformer = load_transformer_file(path, config / "transformer")
    clip = _load_text_model(transformers.CLIPTextModel, transformers.CLIPTextConfig, config / "text_encoder", clip_l)
    t5_model = _load_text_model(transformers.T5EncoderModel, transformers.T5Config, config / "text_encoder_2", t5)
    return transformer, clip, t5_model, _load_vae(diffusers, config / "vae", vae)


def find_t5_tokenizer() -> Path:
    """T5's tokenizer files: $PERSONA_T5_TOKENIZER, then the copy inside a ComfyUI install
    (comfy/text_encoders/t5_tokenizer), then the weights folders."""
    import os

    from ....core.host import comfy_base_dir
    from ....core.paths import weights_dir

    candidates = []
    if os.environ.get("PERSONA_T5_TOKENIZER"):
        candidates.append(Path(os.environ["PERSONA_T5_TOKENIZER"]))
    root = comfy_base_dir()
    if root is not None:
        candidates += [root / "comfy" / "text_encoders" / "t5_tokenizer", root / "comfy" / "t5_tokenizer"]
    candidates.append(weights_dir() / "t5_tokenizer")
    for c in candidates:
        if (c / "tokenizer.json").is_file() or (c / "spiece.model").is_file():
            return c
    raise FileNotFoundError(
        "t5 tokenizer: not found; looked in " + ", ".join(str(c) for c in candidates)
        + ". Set PERSONA_T5_TOKENIZER to a folder holding T5's tokenizer.json (any FLUX diffusers folder's "
          "tokenizer_2/ has one; ComfyUI ships one in comfy/text_encoders/t5_tokenizer)")


def load_transformer_file(path: Path, config: Path):
    """The FLUX transformer from one .safetensors file in BFL or diffusers layout."""
    diffusers = require("diffusers", "Training FLUX")
    from ...file_weights import read_weights
    from .keys import bfl_to_diffusers, strip_prefix

    tensors = strip_prefix(read_weights(path))
    cfg = json.loads((config / "config.json").read_text())
    if any(k.startswith("double_blocks.") for k in tensors):
        cfg.update(_shape_from_bfl(tensors))
        tensors = bfl_to_diffusers(tensors, cfg)
    else:
        cfg.update(num_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("transformer_blocks.")),
                   num_single_layers=1 + max(int(k.split(".")[1]) for k in tensors
                                             if k.startswith("single_transformer_blocks.")),
                   guidance_embeds=any("guidance_embedder" in k for k in tensors))
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    import torch

    with torch.device("meta"):
        model = diffusers.FluxTransformer2DModel(**cfg)
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"base_model: '{path}' does not fit the FLUX transformer: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    return model


def _shape_from_bfl(tensors) -> dict:
    inner, _ = tensors["img_in.weight"].shape
    head = tensors["double_blocks.0.img_attn.norm.query_norm.scale"].shape[0]
    return dict(num_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("double_blocks.")),
                num_single_layers=1 + max(int(k.split(".")[1]) for k in tensors if k.startswith("single_blocks.")),
                guidance_embeds="guidance_in.in_layer.weight" in tensors, attention_head_dim=head,
                num_attention_heads=inner // head, in_channels=tensors["img_in.weight"].shape[1],
                joint_attention_dim=tensors["txt_in.weight"].shape[1],
                pooled_projection_dim=tensors["vector_in.in_layer.weight"].shape[1])


def _load_text_model(cls, config_cls, config: Path, file: str | Path):
    """A text encoder from one file in transformers' layout (what ComfyUI's clip_l.safetensors
    and t5xxl_*.safetensors hold), prefix ``text_model.`` optional."""
    import torch

    from ...file_weights import read_weights

    tensors = read_weights(file)
    conf = config_cls.from_pretrained(config)
    with torch.device("meta"):
        model = cls(conf)
    own = model.state_dict().keys()
    if not any(k in own for k in tensors):  # classic "text_model." names on a model without that level
        tensors = {k.removeprefix("text_model."): v for k, v in tensors.items()}
    if "shared.weight" in tensors and "encoder.embed_tokens.weight" in own and "encoder.embed_tokens.weight" not in tensors:
        tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"]
    if "shared.weight" in own and "shared.weight" not in tensors and "encoder.embed_tokens.weight" in tensors:
        tensors["shared.weight"] = tensors["encoder.embed_tokens.weight"]
    tensors = {k: v for k, v in tensors.items() if k in own}
    missing = [k for k in own if k not in tensors and not k.endswith("position_ids")]
    if missing:
        raise ValueError(f"'{file}' does not fit {cls.__name__} ({config.name}): missing {missing[:3]}")
    model.load_state_dict(tensors, strict=False, assign=True)
    for module in model.modules():  # what no file holds: the position ids, made as the model makes them
        for name, buf in list(module._buffers.items()):
            if buf is not None and buf.is_meta:
                if name != "position_ids":
                    raise ValueError(f"'{file}' does not fit {cls.__name__} ({config.name}): no '{name}'")
                module._buffers[name] = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
    leftover = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise ValueError(f"'{file}' does not fit {cls.__name__} ({config.name}): missing {leftover[:3]}")
    return model


def _load_vae(diffusers, config: Path, file: str | Path):
    import torch

    from ...file_weights import loadable_file, read_weights

    tensors = read_weights(file)
    if any(k.startswith(("encoder.down.", "first_stage_model.")) for k in tensors):  # original layout
        return diffusers.AutoencoderKL.from_single_file(str(loadable_file(file)), config=str(config.parent),
                                                        subfolder="vae", local_files_only=True)
    with torch.device("meta"):
        model = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(config))
    model.load_state_dict(tensors, strict=True, assign=True)
    return model
