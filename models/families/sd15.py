"""Stable Diffusion 1.x: one CLIP-L text encoder, a UNet, DDPM noise (epsilon or
v-prediction). kohya LoRA keys use diffusers' module paths (``lora_unet_down_blocks_…``,
``lora_te_…``); single files use the original (LDM) layout with ``configs/sd15``."""
from __future__ import annotations

from pathlib import Path

import torch

from ...core.deps import require
from ..components import Components, file_hash, file_random_weights, folder_random_weights, model_hash, \
    require_diffusers_folder
from ..keys.kohya import peft_to_kohya, text_encoder_tensors
from .base import Family, Prediction, clip_config, ddpm_noise, ddpm_scheduler, tokens


class SD15(Family):
    name = "sd15"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    supports_dreambooth = True
    kohya_version = "sd_v1"
    architecture = "stable-diffusion-v1"
    te_prefixes = ["lora_te"]
    pipeline_class = "StableDiffusionPipeline"
    pipeline_index = ("StableDiffusionPipeline", {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"], "feature_extractor": [None, None],
        "safety_checker": [None, None], "requires_safety_checker": False})

    # --- loading ---------------------------------------------------------------------------
    def load_folder(self, folder: Path) -> Components:
        diffusers = require("diffusers", "Training")
        transformers = require("transformers", "Training")
        require_diffusers_folder(folder, "unet", self.name)
        tok, tok2 = self.load_tokenizers(folder)
        te2 = self._text_encoder_2(transformers, folder)
        return Components(self.name, tok, transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
                          diffusers.AutoencoderKL.from_pretrained(folder / "vae"),
                          diffusers.UNet2DConditionModel.from_pretrained(folder / "unet"),
                          diffusers.DDPMScheduler.from_pretrained(folder / "scheduler"), str(folder),
                          model_hash(folder), folder_random_weights(folder), tokenizer_2=tok2, text_encoder_2=te2)

    def _text_encoder_2(self, transformers, folder: Path):
        return None

    def load_single_file(self, path: Path, config_dir=None, **files) -> Components:
        diffusers = require("diffusers", "Loading a single-file checkpoint")
        from ..single_file import family_config_dir, refuse_pickle

        from ..file_weights import loadable_file

        refuse_pickle(path)
        config = Path(config_dir) if config_dir else family_config_dir(self)
        pipe = getattr(diffusers, self.pipeline_class).from_single_file(
            str(loadable_file(path)), config=str(config), local_files_only=True, **self._single_file_kwargs())
        scheduler = diffusers.DDPMScheduler.from_config(pipe.scheduler.config)
        return Components(self.name, pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet, scheduler,
                          str(path), file_hash(path), file_random_weights(path),
                          tokenizer_2=getattr(pipe, "tokenizer_2", None),
                          text_encoder_2=getattr(pipe, "text_encoder_2", None))

    def _single_file_kwargs(self) -> dict:
        return {"safety_checker": None, "requires_safety_checker": False}

    def write_tokenizers(self, folder: Path, real: bool = False) -> None:
        from ..tokenizers import write_clip_tokenizer

        write_clip_tokenizer(folder / "tokenizer")

    def load_tokenizers(self, folder: Path):
        transformers = require("transformers", "Training")
        return transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"), None

    # --- building -------------------------------------------------------------------------
    def new_scheduler(self):
        return ddpm_scheduler()

    def build_modules(self, arch: dict, text_encoders: bool = True):
        diffusers = require("diffusers", "Building a model from config")
        transformers = require("transformers", "Building a model from config")
        unet, vae = diffusers.UNet2DConditionModel(**arch["unet"]), diffusers.AutoencoderKL(**arch["vae"])
        te = te2 = None
        if text_encoders:
            te = transformers.CLIPTextModel(clip_config(arch["text"]))
            if "text_2" in arch:
                te2 = transformers.CLIPTextModelWithProjection(clip_config(arch["text_2"]))
        return unet, vae, te, te2

    def modules_from_configs(self, folder: Path):
        diffusers = require("diffusers", "Planning memory")
        transformers = require("transformers", "Planning memory")
        unet = diffusers.UNet2DConditionModel.from_config(diffusers.UNet2DConditionModel.load_config(folder / "unet"))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder / "vae"))
        te = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        te2 = None
        if (folder / "text_encoder_2").is_dir():
            te2 = transformers.CLIPTextModelWithProjection(
                transformers.CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
        return unet, vae, te, te2

    # --- training -------------------------------------------------------------------------
    def encode(self, comps, prompts, device, cfg=None):
        return {"encoder_hidden_states": comps.text_encoder(tokens(comps.tokenizer, prompts, device))[0]}

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        noisy, target, timesteps, weight = ddpm_noise(comps, latents, gen, cfg)
        pred = model(noisy.to(dtype), timesteps, cond["encoder_hidden_states"].to(dtype)).sample
        return Prediction(pred, target, noisy, timesteps, weight)

    def dummy_condition(self, comps, batch, device, dtype, cfg=None):
        dim = comps.denoiser.config.cross_attention_dim
        return {"encoder_hidden_states": torch.zeros(batch, 77, dim, device=device, dtype=dtype)}

    # --- sampling -------------------------------------------------------------------------
    def pipeline(self, comps):
        diffusers = require("diffusers", "Sampling")
        pipe = diffusers.StableDiffusionPipeline(
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.denoiser,
            scheduler=diffusers.DDIMScheduler.from_config(comps.scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def generation_pipeline(self, comps):
        """DPM-Solver++ for generation (good images in 20-30 steps)."""
        diffusers = require("diffusers", "Sampling")
        pipe = self.pipeline(comps)
        pipe.scheduler = diffusers.DPMSolverMultistepScheduler.from_config(comps.scheduler.config)
        return pipe

    # --- LoRA files -----------------------------------------------------------------------
    def kohya_tensors(self, denoiser_state, te_states, alpha, model, rank=None):
        tensors = peft_to_kohya(denoiser_state, "lora_unet", alpha, rename=self.kohya_module_name(model))
        tensors.update(text_encoder_tensors(self.te_prefixes, te_states, alpha))
        return tensors

    def kohya_module_name(self, model):
        """How a denoiser module path is spelled in kohya keys (None: as in diffusers)."""
        return None

    def save_diffusers_lora(self, folder, layers, te_layers):
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers,
                                                  text_encoder_lora_layers=te_layers[0] if te_layers else None,
                                                  safe_serialization=True)
