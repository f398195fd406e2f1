"""Model families behind one interface: load the components a trainer needs.

Stable Diffusion 1.x and SDXL load here (diffusers folders or single-file checkpoints, with
the config JSONs shipped in ``configs/``); FLUX's separate files load in ``flux_files``.
How each family encodes prompts and predicts is in ``families``.
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
    tokenizer_2: Any = None
    text_encoder_2: Any = None

    @property
    def vae_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @property
    def vae_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def denoiser(self):
        """The UNet (SD1.5, SDXL) or the transformer (FLUX)."""
        return self.unet

    @property
    def text_encoders(self) -> list:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]


def model_hash(folder: Path) -> str:
    """A short stable id of a diffusers folder: hash of the UNet weights file's size and
    head and tail bytes (full hashing of GBs is too slow for every run)."""
    digest = hashlib.sha256()
    for sub in ("unet", "transformer", "text_encoder", "text_encoder_2", "vae"):
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


def load_sdxl(base_model: str | Path) -> Components:
    diffusers = require("diffusers", "Training")
    transformers = require("transformers", "Training")
    folder = Path(base_model)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"base_model: '{folder}' is not a diffusers model folder (no model_index.json)")
    if not (folder / "text_encoder_2").is_dir():
        raise ValueError(f"base_model: '{folder}' has no text_encoder_2: not an SDXL model (family 'sdxl')")
    comps = Components(
        "sdxl", transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
        diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
        diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
        diffusers.DDPMScheduler.from_pretrained(folder / "scheduler"), str(folder), model_hash(folder),
        _random_marker(folder),
        tokenizer_2=transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer_2"),
        text_encoder_2=transformers.CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"))
    return comps


def _random_marker(folder: Path) -> bool:
    marker = folder / "persona_model.json"
    return bool(marker.is_file() and json.loads(marker.read_text()).get("random_weights", False))


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def family_config_dir(family: str) -> Path:
    """A complete diffusers config folder for ``family`` (the JSONs shipped in configs/ plus
    the CLIP tokenizer files rebuilt offline), made once in the user cache."""
    import os
    import shutil

    from .tokenizer_files import write_clip_tokenizer

    source = CONFIGS / family
    if not source.is_dir():
        raise ValueError(f"family: no shipped configs for '{family}'")
    cache = Path(os.environ.get("PERSONA_CACHE", Path.home() / ".cache" / "comfyui-persona"))
    target = cache / "configs" / family
    marker = target / ".complete"  # written last: a half-made folder is made again
    if not marker.is_file():
        shutil.copytree(source, target, dirs_exist_ok=True)
        write_clip_tokenizer(target / "tokenizer")
        if (source / "text_encoder_2").is_dir() and family != "flux":  # SDXL's OpenCLIP-G: CLIP BPE, pad "!"
            write_clip_tokenizer(target / "tokenizer_2", pad_token="!")
        marker.write_text(family)
    return target


def load_single_file(path: str | Path, family: str = "sd15", config_dir: str | Path | None = None) -> Components:
    """A single-file checkpoint (what ComfyUI users keep in models/checkpoints), read with
    the config JSONs shipped in the repository: no model hub is contacted."""
    diffusers = require("diffusers", "Loading a single-file checkpoint")
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"base_model: '{path}' is not a .safetensors file; convert pickled "
                         f"checkpoints (.ckpt/.pt) to safetensors first (they can run code when loaded)")
    config = Path(config_dir) if config_dir else family_config_dir(family)
    if family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline.from_single_file(
            str(path), config=str(config), local_files_only=True)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_single_file(
            str(path), config=str(config), local_files_only=True, safety_checker=None,
            requires_safety_checker=False)
    scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
    return Components(family, pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, scheduler,
                      str(path), file_hash(path), file_random_weights(path),
                      tokenizer_2=getattr(pipe, "tokenizer_2", None),
                      text_encoder_2=getattr(pipe, "text_encoder_2", None))


def file_hash(path: Path) -> str:
    """A short stable id of one weights file (size, head and tail bytes)."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as fh:
        digest.update(f"{path.name}:{size}".encode())
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


def file_random_weights(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("persona.random_weights") == "true"


def load_components(family: str, base_model: str | Path, **files) -> Components:
    """The components of ``family`` from a diffusers folder or a single file. FLUX also takes
    its separate files as ``clip_l=``, ``t5=`` and ``vae=`` (ComfyUI's models/ layout)."""
    path = Path(base_model)
    if family == "sd15":
        return load_single_file(path, family) if path.is_file() else load_sd15(path)
    if family == "sdxl":
        return load_single_file(path, family) if path.is_file() else load_sdxl(path)
    if family == "flux":
        from .flux_files import load_flux

        return load_flux(path, **files)
    raise ValueError(f"family: '{family}' is not supported")


def save_single_file(path: str | Path, unet, vae, text_encoder, metadata: dict[str, str] | None = None,
                     dtype=None) -> Path:
    """Write the original (LDM) single-file layout that ComfyUI's CheckpointLoader reads."""
    import torch
    from safetensors.torch import save_file

    from .ldm_keys import components_to_ldm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = components_to_ldm(unet, vae, text_encoder, dtype or torch.float16)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    tmp.replace(path)
    return path
