"""The headless generator: a diffusers pipeline from any base model Persona trains on,
with a Persona (kohya-format) LoRA at an adjustable strength."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

ADAPTER = "persona"


class DiffusersGenerator:
    def __init__(self, base_model: str | Path, lora: str | Path | None = None, family: str = "sd15",
                 device: str | None = None):
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
        self.has_lora = False
        if lora:
            lora = Path(lora)
            if not lora.is_file():
                raise FileNotFoundError(f"lora: '{lora}' does not exist")
            self.pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name=ADAPTER)
            self.has_lora = True

    def __call__(self, params: dict) -> np.ndarray:
        if self.has_lora:
            self.pipe.set_adapters([ADAPTER], adapter_weights=[float(params.get("lora_strength", 1.0))])
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
