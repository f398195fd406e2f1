"""The headless generator: a diffusers pipeline from any base model Persona trains on (the
family's own pipeline: SD1.x, SDXL, FLUX.1, Z-Image, FLUX.2 klein and dev, Qwen-Image), with Persona LoRAs at adjustable
strengths: one subject's, or several subjects' at once (one adapter each, applied together)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

ADAPTER = "persona"


class DiffusersGenerator:
    def __init__(self, base_model: str | Path, lora: str | Path | list[str | Path] | None = None,
                 family: str | None = None, device: str | None = None):
        """``family`` None: the family the first LoRA was trained on (its metadata), else SD1.x."""
        from ..models.families import get_family
        from ..models.loading import load_components

        loras = [Path(p) for p in (lora if isinstance(lora, (list, tuple)) else [lora] if lora else [])]
        for path in loras:
            if not path.is_file():
                raise FileNotFoundError(f"lora: '{path}' does not exist")
        family = family or (lora_family(loras[0]) if loras else None) or "sd15"
        fam = get_family(family)
        comps = load_components(family, base_model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = getattr(torch, fam.generation_dtype) if self.device.type == "cuda" else torch.float32
        self.pipe = fam.generation_pipeline(comps).to(self.device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.family, self.fam = family, fam
        self.random_weights = comps.random_weights
        self.model = {"name": Path(comps.source).name, "hash": comps.model_hash,
                      "random_weights": comps.random_weights}
        self.adapters: list[str] = []
        for i, path in enumerate(loras):
            name = ADAPTER if i == 0 else f"{ADAPTER}_{i + 1}"
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            self.adapters.append(name)

    @property
    def has_lora(self) -> bool:
        return bool(self.adapters)

    def __call__(self, params: dict) -> np.ndarray:
        """One image. ``lora_strength`` applies to every LoRA; ``lora_strengths`` (one per
        LoRA, in the order given) overrides it."""
        if self.adapters:
            strengths = params.get("lora_strengths") or [params.get("lora_strength", 1.0)] * len(self.adapters)
            if len(strengths) != len(self.adapters):
                raise ValueError(f"lora_strengths: {len(strengths)} values for {len(self.adapters)} LoRAs")
            self.pipe.set_adapters(self.adapters, adapter_weights=[float(v) for v in strengths])
        gen = torch.Generator("cpu").manual_seed(int(params["seed"]))
        out = self.fam.generate(self.pipe, params["prompt"], params.get("negative") or "", int(params["height"]),
                                int(params["width"]), int(params["steps"]), float(params["cfg"]), gen)
        return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)

    def refiner(self, prompt: str, negative: str = "", strength: float = 0.35, steps: int = 20,
                cfg: float = 6.0, seed: int = 0):
        """A ``regenerate(crop) -> crop`` for face refine: img2img at low strength with the
        same model, LoRA and prompt, as the family redraws an image (``Family.img2img``)."""

        def regenerate(crop: np.ndarray) -> np.ndarray:
            gen = torch.Generator("cpu").manual_seed(seed)
            out = self.fam.img2img(self.pipe, crop, prompt, negative, strength, steps, cfg, gen)
            return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)

        return regenerate


def lora_family(path: str | Path) -> str | None:
    """The family a Persona LoRA was trained on, from its metadata (None: not recorded)."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return json.loads(meta.get("persona.config", "{}")).get("family")
    except (ValueError, OSError):
        return None
