"""Model folders built from config with random weights (shapes in ``architectures``).

No model hub is needed: the tests and the demo train on these. ``tiny`` is seconds-fast
on a CPU; the SD1.5 ``real`` size is what ComfyUI detects as SD1.5, for tests that run
ComfyUI's own loaders and samplers. CLIP tokenizers are the real ones, rebuilt offline.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from ..core.deps import require

Size = Literal["tiny", "sd15"]


def build_model(folder: str | Path, size: Size = "tiny", seed: int = 0) -> Path:
    """Write a diffusers-format SD1.x model with random weights to ``folder`` (``sd15``: the
    published SD1.5 architecture, which ComfyUI detects as SD1.5)."""
    return build_family_model(folder, "sd15", "tiny" if size == "tiny" else "real", seed)


def classic_clip_keys(path: Path) -> None:
    """Rewrite a CLIP text model file with the classic ``text_model.`` key prefix.

    Recent transformers save ``CLIPTextModel`` without it; every SD checkpoint, ComfyUI's
    loaders and older transformers expect it, and recent transformers load both.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    if all(k.startswith("text_model.") for k in tensors):
        return
    save_file({(k if k.startswith("text_model.") else f"text_model.{k}"): v for k, v in tensors.items()},
              str(path), metadata={"format": "pt"})


def save_text_encoder(model, folder: Path) -> None:
    """``save_pretrained``, with CLIP's classic key prefix (see :func:`classic_clip_keys`)."""
    model.save_pretrained(folder)
    if type(model).__name__.startswith("CLIPText"):
        classic_clip_keys(folder / "model.safetensors")


def build_family_model(folder: str | Path, family: str, size: str = "tiny", seed: int = 0) -> Path:
    """Write a diffusers folder of ``family`` at ``size`` with random weights (see architectures)."""
    diffusers = require("diffusers", "Building a model from config")
    from .architectures import instantiate
    from .components import write_model_marker
    from .families import get_family

    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        return folder
    fam = get_family(family)
    comps = instantiate(family, size, seed=seed, tokenizers=False)
    tmp = folder.with_name(folder.name + ".partial")
    comps.denoiser.save_pretrained(tmp / fam.denoiser_folder)
    comps.vae.save_pretrained(tmp / "vae")
    save_text_encoder(comps.text_encoder, tmp / "text_encoder")
    if comps.text_encoder_2 is not None:
        save_text_encoder(comps.text_encoder_2, tmp / "text_encoder_2")
    fam.write_tokenizers(tmp, real=False)
    comps.scheduler.save_pretrained(tmp / "scheduler")
    name, parts = fam.pipeline_index
    (tmp / "model_index.json").write_text(json.dumps(
        {"_class_name": name, "_diffusers_version": diffusers.__version__, **parts}, indent=2))
    write_model_marker(tmp, random_weights=True, size=size, seed=seed, family=family)
    tmp.rename(folder)
    return folder
