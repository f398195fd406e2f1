"""The parts of a diffusion model that training and sampling use, whatever the family, and
the short stable ids (hashes) that name a base model in caches and LoRA metadata.

Which classes fill the parts, and how they are read from a folder or single files, is the
family's business (``models.families``; ``models.loading`` asks the family).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class Components:
    family: str
    tokenizer: Any
    text_encoder: Any
    vae: Any
    denoiser: Any  # the UNet (SD1.x, SDXL) or the transformer (FLUX)
    scheduler: Any
    source: str
    model_hash: str
    random_weights: bool
    tokenizer_2: Any = None
    text_encoder_2: Any = None
    # a denoiser not read yet (``Family.load(..., defer_denoiser=True)``): read by load_denoiser
    denoiser_loader: Callable[[], Any] | None = None

    def load_denoiser(self, keep_fp8: tuple[str, ...] | None = None):
        """The denoiser, read now if its loading was deferred (so that the text encoders can
        encode every caption and be freed before the largest part of the model loads).
        ``keep_fp8``: a transformer file's fp8 weights are read as stored into Persona's fp8
        layer, but in layers whose names contain one of it (a run that quantizes its base to
        fp8 anyway; ``models/file_weights.py``); other loaders read as they always do."""
        if self.denoiser is None and self.denoiser_loader is not None:
            loader = self.denoiser_loader
            keeps = keep_fp8 is not None and getattr(loader, "keeps_fp8", False)
            self.denoiser, self.denoiser_loader = (loader(keep_fp8=keep_fp8) if keeps else loader()), None
        return self.denoiser

    @property
    def vae_scale(self) -> float:
        """The VAE's latent scale; 1 for a VAE without one (FLUX.2's normalises its latents by
        batch-norm statistics, which its family applies)."""
        return float(getattr(self.vae.config, "scaling_factor", None) or 1.0)

    @property
    def vae_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def text_encoders(self) -> list:
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]


def _head_tail(digest, path: Path, label: str) -> None:
    size = path.stat().st_size
    digest.update(f"{label}:{size}".encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(1 << 20))
        fh.seek(max(0, size - (1 << 20)))
        digest.update(fh.read(1 << 20))


def model_hash(folder: Path) -> str:
    """A short stable id of a diffusers folder: the weights files' sizes and head and tail
    bytes (hashing GBs in full is too slow for every run)."""
    digest = hashlib.sha256()
    for sub in ("unet", "transformer", "text_encoder", "text_encoder_2", "vae"):
        for f in sorted((folder / sub).glob("*.safetensors")) + sorted((folder / sub).glob("*.bin")):
            _head_tail(digest, f, f"{sub}/{f.name}")
    return digest.hexdigest()[:16]


def file_hash(path: Path) -> str:
    """A short stable id of one weights file (size, head and tail bytes)."""
    digest = hashlib.sha256()
    _head_tail(digest, Path(path), Path(path).name)
    return digest.hexdigest()[:16]


MODEL_MARKER = "persona_model.json"


def write_model_marker(folder: Path, **fields) -> None:
    """Record in a model folder Persona built how its weights came to be (``random_weights``,
    ``size``, ``family``, ...)."""
    (Path(folder) / MODEL_MARKER).write_text(json.dumps(fields))


def folder_marker(folder: Path) -> dict:
    """What :func:`write_model_marker` recorded in ``folder`` ({} for any other folder)."""
    marker = Path(folder) / MODEL_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else {}


def folder_random_weights(folder: Path) -> bool:
    """True for a folder written by ``models.build`` (random weights: mechanics, not quality)."""
    return bool(folder_marker(folder).get("random_weights", False))


def file_random_weights(path: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("persona.random_weights") == "true"


def require_diffusers_folder(folder: Path, part: str, family: str) -> None:
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"base_model: '{folder}' is not a diffusers model folder (no model_index.json)")
    if not (folder / part).is_dir():
        raise ValueError(f"base_model: '{folder}' has no {part}/ folder: not a model of family '{family}'")
