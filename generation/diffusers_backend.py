"""The headless generator: a diffusers pipeline from any base model Persona trains on,
with Persona (kohya-format) LoRAs at adjustable strengths: one subject's, or several
subjects' at once (one adapter each, applied together)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

ADAPTER = "persona"


class DiffusersGenerator:
    def __init__(self, base_model: str | Path, lora: str | Path | list[str | Path] | None = None,
                 family: str = "sd15", device: str | None = None):
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        from ..models.loading import load_components

        comps = load_components(family, base_model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.pipe = StableDiffusionPipeline(
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.denoiser,
            scheduler=DPMSolverMultistepScheduler.from_config(comps.scheduler.config),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False).to(self.device, dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.random_weights = comps.random_weights
        self.model = {"name": Path(comps.source).name, "hash": comps.model_hash,
                      "random_weights": comps.random_weights}
        loras = [Path(p) for p in (lora if isinstance(lora, (list, tuple)) else [lora] if lora else [])]
        self.adapters: list[str] = []
        for i, path in enumerate(loras):
            if not path.is_file():
                raise FileNotFoundError(f"lora: '{path}' does not exist")
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
        out = self.pipe(params["prompt"], negative_prompt=params.get("negative") or None,
                        height=int(params["height"]), width=int(params["width"]),
                        num_inference_steps=int(params["steps"]), guidance_scale=float(params["cfg"]),
                        generator=gen, output_type="np").images[0]
        return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)

    def refiner(self, prompt: str, negative: str = "", strength: float = 0.35, steps: int = 20,
                cfg: float = 6.0, seed: int = 0):
        """A ``regenerate(crop) -> crop`` for face refine: img2img at low strength with the
        same model, LoRA and prompt."""
        from diffusers import StableDiffusionImg2ImgPipeline
        from PIL import Image

        img2img = StableDiffusionImg2ImgPipeline(**self.pipe.components)
        img2img.set_progress_bar_config(disable=True)

        def regenerate(crop: np.ndarray) -> np.ndarray:
            gen = torch.Generator("cpu").manual_seed(seed)
            out = img2img(prompt, image=Image.fromarray(crop), negative_prompt=negative or None,
                          strength=strength, num_inference_steps=steps, guidance_scale=cfg,
                          generator=gen, output_type="np").images[0]
            return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)

        return regenerate
