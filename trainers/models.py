"""Model families behind one interface: load the components a trainer needs.

Only Stable Diffusion 1.x is implemented; SDXL and FLUX add their own ``load_*`` and
``encode_prompt`` here without touching the loop.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..deps import require

log = logging.getLogger(__name__)


@dataclass
class Components:
    family: str
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    scheduler: Any
    source: str
    model_hash: str
    random_weights: bool

    @property
    def vae_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))


def model_hash(folder: Path) -> str:
    """A short stable id of a diffusers folder: hash of the UNet weights file's size and
    head and tail bytes (full hashing of GBs is too slow for every run)."""
    digest = hashlib.sha256()
    for sub in ("unet", "text_encoder", "vae"):
        for f in sorted((folder / sub).glob("*.safetensors")) + sorted((folder / sub).glob("*.bin")):
            size = f.stat().st_size
            digest.update(f"{sub}/{f.name}:{size}".encode())
            with open(f, "rb") as fh:
                digest.update(fh.read(1 << 20))
                fh.seek(max(0, size - (1 << 20)))
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def load_sd15(base_model: str | Path) -> Components:
    diffusers = require("diffusers", "Training")
    transformers = require("transformers", "Training")
    folder = Path(base_model)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"base_model: '{folder}' is not a diffusers model folder (no model_index.json)")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = transformers.CLIPTextModel.from_pretrained(folder / "text_encoder")
    vae = diffusers.AutoencoderKL.from_pretrained(folder / "vae")
    unet = diffusers.UNet2DConditionModel.from_pretrained(folder / "unet")
    scheduler = diffusers.DDPMScheduler.from_pretrained(folder / "scheduler")
    marker = folder / "persona_model.json"
    random_weights = marker.is_file() and json.loads(marker.read_text()).get("random_weights", False)
    return Components("sd15", tokenizer, text_encoder, vae, unet, scheduler, str(folder),
                      model_hash(folder), bool(random_weights))


def load_components(family: str, base_model: str | Path) -> Components:
    if family == "sd15":
        return load_sd15(base_model)
    raise ValueError(f"family: '{family}' is not supported")


def encode_prompts(components: Components, prompts: list[str], device) -> "torch.Tensor":
    """Text-encoder hidden states for ``prompts`` ([B, 77, D])."""
    import torch

    ids = components.tokenizer(prompts, padding="max_length", truncation=True,
                               max_length=components.tokenizer.model_max_length,
                               return_tensors="pt").input_ids.to(device)
    return components.text_encoder(ids)[0]


def tokenize(components: Components, prompts: list[str]):
    return components.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=components.tokenizer.model_max_length,
                                return_tensors="pt").input_ids
