"""SDXL: two text encoders (CLIP-L and OpenCLIP-G; penultimate hidden states concatenated,
pooled embedding of the second), size/crop conditioning (``time_ids``), DDPM noise. kohya
LoRA keys use the original block names (``lora_unet_input_blocks_…``) and ``lora_te1_`` /
``lora_te2_``, as kohya's sd-scripts write them."""
from __future__ import annotations

from pathlib import Path

import torch

from ...core.deps import require
from ...core.transfer import to_device
from ..components import Components, require_diffusers_folder
from .base import Prediction, ddpm_noise, tokens
from .sd15 import SD15


class SDXL(SD15):
    name = "sdxl"
    supports_dreambooth = False
    size_conditioning = True
    kohya_version = "sdxl_base_v1-0"
    architecture = "stable-diffusion-xl-v1-base"
    te_prefixes = ["lora_te1", "lora_te2"]
    pipeline_class = "StableDiffusionXLPipeline"
    pipeline_index = ("StableDiffusionXLPipeline", {
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"],
        "force_zeros_for_empty_prompt": True})

    def load_folder(self, folder: Path) -> Components:
        require_diffusers_folder(folder, "text_encoder_2", self.name)
        return super().load_folder(folder)

    def _text_encoder_2(self, transformers, folder: Path):
        return transformers.CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2")

    def _single_file_kwargs(self) -> dict:
        return {}

    def write_tokenizers(self, folder: Path, real: bool = False) -> None:
        from ..tokenizers import write_clip_tokenizer

        write_clip_tokenizer(folder / "tokenizer")
        write_clip_tokenizer(folder / "tokenizer_2", pad_token="!")  # OpenCLIP-G: CLIP BPE padded with "!"

    def load_tokenizers(self, folder: Path):
        transformers = require("transformers", "Training")
        return (transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer_2"))

    def encode(self, comps, prompts, device, cfg=None):
        hidden = []
        pooled = None
        for tok, te in ((comps.tokenizer, comps.text_encoder), (comps.tokenizer_2, comps.text_encoder_2)):
            out = te(tokens(tok, prompts, device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if te is comps.text_encoder_2:
                pooled = out.text_embeds
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}

    @staticmethod
    def time_ids(resolution: int, batch: int, device) -> torch.Tensor:
        """Size/crop conditioning of square images: original size, crop top-left, target size
        (bucketed images carry their own, ``cond['time_ids']``)."""
        row = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)
        return to_device(row.repeat(batch, 1), device)

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        noisy, target, timesteps, weight = ddpm_noise(comps, latents, gen, cfg)
        time_ids = cond.get("time_ids")
        if time_ids is None:
            time_ids = self.time_ids(cfg.resolution, latents.shape[0], latents.device)
        added = {"text_embeds": cond["text_embeds"].to(dtype), "time_ids": time_ids.to(dtype)}
        pred = model(noisy.to(dtype), timesteps, cond["encoder_hidden_states"].to(dtype),
                     added_cond_kwargs=added).sample
        return Prediction(pred, target, noisy, timesteps, weight)

    def dummy_condition(self, comps, batch, device, dtype, cfg=None):
        c = comps.denoiser.config
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        return {"encoder_hidden_states": torch.zeros(batch, 77, c.cross_attention_dim, device=device, dtype=dtype),
                "text_embeds": torch.zeros(batch, pooled, device=device, dtype=dtype)}

    def pipeline(self, comps):
        diffusers = require("diffusers", "Sampling")
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=comps.vae, text_encoder=comps.text_encoder, text_encoder_2=comps.text_encoder_2,
            tokenizer=comps.tokenizer, tokenizer_2=comps.tokenizer_2, unet=comps.denoiser,
            scheduler=diffusers.DDIMScheduler.from_config(comps.scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def kohya_module_name(self, model):
        from ..keys.ldm import ldm_module_name

        return lambda n: ldm_module_name(n, model.config)

    def save_diffusers_lora(self, folder, layers, te_layers):
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline.save_lora_weights(
            folder, unet_lora_layers=layers, text_encoder_lora_layers=te_layers[0] if te_layers else None,
            text_encoder_2_lora_layers=te_layers[1] if len(te_layers) > 1 else None, safe_serialization=True)
