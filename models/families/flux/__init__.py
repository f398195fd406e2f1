"""FLUX.1 (dev / schnell): CLIP-L pooled + T5-XXL sequence conditioning, a rectified-flow
(flow-matching) objective with a shifted noise-level distribution, the guidance embedding,
2x2-packed latents. Its text encoders encode every caption once and are then deleted.

- ``files``: ComfyUI's separate files (transformer in BFL or diffusers layout, ``clip_l``,
  ``t5``, ``vae``) read with ``configs/flux``;
- ``keys``: BFL's names (fused qkv / linear1 layers) for single files and kohya LoRAs.
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch

from ....core.deps import require
from ....core.transfer import to_device
from ...components import Components, file_hash, file_random_weights, folder_random_weights, model_hash, \
    require_diffusers_folder
from ..base import Family, Prediction, clip_config, logit_normal_sigmas, peft_pairs, tokens


class Flux(Family):
    name = "flux"
    denoiser_folder = "transformer"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    supports_text_encoder_training = False
    supports_dora = False  # fused qkv / linear1 layers: one magnitude per fused row, not per part
    uses_attention_processors = False
    text_quantize_skip = ("DenseReluDense.wo",)  # transformers' T5 casts the feed-forward's input to wo's dtype
    keeps_text_encoders = False
    resolution_multiple = 16  # 2x2 patches of 8x latents
    bucket_multiple = 16
    separate_files = ("clip_l", "t5", "vae")
    single_files_as_stored = True  # built on the meta device, the files' tensors assigned
    kohya_version = "flux1"
    architecture = "flux-1-dev"
    pipeline_index = ("FluxPipeline", {
        "transformer": ["diffusers", "FluxTransformer2DModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]})

    # --- loading ---------------------------------------------------------------------------
    def load_folder(self, folder: Path) -> Components:
        diffusers = require("diffusers", "Training FLUX")
        transformers = require("transformers", "Training FLUX")
        require_diffusers_folder(folder, "transformer", self.name)
        tok, tok2 = self.load_tokenizers(folder)
        return Components(
            self.name, tok, transformers.CLIPTextModel.from_pretrained(folder / "text_encoder"),
            diffusers.AutoencoderKL.from_pretrained(folder / "vae"), None,
            diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
            str(folder), model_hash(folder), folder_random_weights(folder), tokenizer_2=tok2,
            text_encoder_2=transformers.T5EncoderModel.from_pretrained(folder / "text_encoder_2"),
            denoiser_loader=partial(diffusers.FluxTransformer2DModel.from_pretrained, folder / "transformer"))

    def load_single_file(self, path: Path, config_dir=None, clip_l="", t5="", vae="", **files) -> Components:
        diffusers = require("diffusers", "Training FLUX")
        from ...single_file import family_config_dir
        from .files import load_separate_files

        config = Path(config_dir) if config_dir else family_config_dir(self, real=True)
        self._real_t5_tokenizer(config / "tokenizer_2")
        transformer, clip, t5_model, vae_model = load_separate_files(path, config, clip_l, t5, vae,
                                                                     self.text_quantize_skip)
        tok, tok2 = self.load_tokenizers(config)
        return Components(
            self.name, tok, clip, vae_model, None,
            diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(config / "scheduler"), str(path),
            file_hash(path), file_random_weights(path), tokenizer_2=tok2, text_encoder_2=t5_model,
            denoiser_loader=transformer)

    def write_tokenizers(self, folder: Path, real: bool = False) -> None:
        """CLIP's tokenizer rebuilt offline; T5's found on disk (``real``) or, for random
        weights, a small byte-level stand-in with T5's special tokens."""
        from ...tokenizers import write_clip_tokenizer, write_t5_tokenizer

        write_clip_tokenizer(folder / "tokenizer")
        if real:
            self._real_t5_tokenizer(folder / "tokenizer_2")
        else:
            write_t5_tokenizer(folder / "tokenizer_2")

    @staticmethod
    def _real_t5_tokenizer(folder: Path) -> None:
        """T5's own tokenizer files in ``folder`` (copied once from where ComfyUI or the user keeps them)."""
        if (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file():
            return
        from ...tokenizers import find_t5_tokenizer, write_t5_tokenizer

        write_t5_tokenizer(folder, find_t5_tokenizer())

    def load_tokenizers(self, folder: Path):
        transformers = require("transformers", "Training FLUX")
        return (transformers.CLIPTokenizer.from_pretrained(folder / "tokenizer"),
                transformers.T5TokenizerFast.from_pretrained(folder / "tokenizer_2"))

    # --- building -------------------------------------------------------------------------
    def new_scheduler(self):
        diffusers = require("diffusers", "Building a model from config")
        return diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                         max_shift=1.15, base_image_seq_len=256,
                                                         max_image_seq_len=4096)

    def build_modules(self, arch: dict, text_encoders: bool = True):
        diffusers = require("diffusers", "Building a model from config")
        transformers = require("transformers", "Building a model from config")
        denoiser = diffusers.FluxTransformer2DModel(**arch["transformer"])
        vae = diffusers.AutoencoderKL(**arch["vae"])
        te = te2 = None
        if text_encoders:
            te = transformers.CLIPTextModel(clip_config(arch["text"]))
            te2 = transformers.T5EncoderModel(transformers.T5Config(**arch["t5"]))
        return denoiser, vae, te, te2

    def modules_from_configs(self, folder: Path):
        diffusers = require("diffusers", "Planning memory")
        transformers = require("transformers", "Planning memory")
        denoiser = diffusers.FluxTransformer2DModel.from_config(
            diffusers.FluxTransformer2DModel.load_config(folder / "transformer"))
        vae = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder / "vae"))
        te = transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(folder / "text_encoder"))
        te2 = transformers.T5EncoderModel(transformers.T5Config.from_pretrained(folder / "text_encoder_2"))
        return denoiser, vae, te, te2

    # --- training -------------------------------------------------------------------------
    def check_files(self, cfg) -> None:
        if Path(cfg.base_model).is_file() and not (cfg.clip_l and cfg.t5 and cfg.vae):
            raise cfg.field_error("base_model", "a single FLUX transformer file needs its text encoders and VAE "
                                  "too: set clip_l, t5 and vae")

    def caption_token_lengths(self, cfg) -> dict[str, int]:
        return {"text_encoder": 77, "text_encoder_2": cfg.t5_max_length}

    def encode(self, comps, prompts, device, cfg=None):
        max_length = cfg.t5_max_length if cfg is not None else 512
        pooled = comps.text_encoder(tokens(comps.tokenizer, prompts, device), output_hidden_states=False).pooler_output
        t5 = comps.text_encoder_2(tokens(comps.tokenizer_2, prompts, device, max_length), output_hidden_states=False)[0]
        return {"encoder_hidden_states": t5, "pooled_projections": pooled}

    @staticmethod
    def sigmas(batch: int, gen, shift: float, seq_len: int) -> torch.Tensor:
        """Noise levels in (0, 1): logit-normal draws (SD3/FLUX training), shifted toward noise.
        ``shift`` 0 uses FLUX's resolution-dependent shift (mu from the image token count)."""
        if shift > 0:
            return logit_normal_sigmas(batch, gen, shift)
        u = torch.sigmoid(torch.randn(batch, generator=gen))
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(seq_len)
        return math.exp(mu) / (math.exp(mu) + (1 / u - 1))

    @staticmethod
    def pack(latents: torch.Tensor) -> torch.Tensor:
        b, c, h, w = latents.shape
        x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def ids(batch, h, w, txt_len, device, dtype):
        img = torch.zeros(h // 2, w // 2, 3, device=device)  # made where it is used: no host copy
        img[..., 1] += torch.arange(h // 2, device=device)[:, None]
        img[..., 2] += torch.arange(w // 2, device=device)[None, :]
        return img.reshape(-1, 3).to(dtype), torch.zeros(txt_len, 3, device=device, dtype=dtype)

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        b, c, h, w = latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"resolution: FLUX packs 2x2 latent patches; {cfg.resolution} px gives an odd latent size")
        noise = to_device(torch.randn(latents.shape, generator=gen), latents.device)
        sigma = to_device(self.sigmas(b, gen, cfg.timestep_shift, (h // 2) * (w // 2)), latents.device)
        s = sigma.view(b, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        target = self.pack(noise - latents)
        enc = cond["encoder_hidden_states"]
        img_ids, txt_ids = self.ids(b, h, w, enc.shape[1], latents.device, dtype)
        inner = model.module if hasattr(model, "module") else model
        guidance = (torch.full((b,), cfg.guidance, device=latents.device, dtype=dtype)
                    if inner.config.guidance_embeds else None)
        pred = model(hidden_states=self.pack(noisy).to(dtype), timestep=sigma.to(dtype), guidance=guidance,
                     pooled_projections=cond["pooled_projections"].to(dtype), encoder_hidden_states=enc.to(dtype),
                     txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return Prediction(pred, target, noisy, sigma * 1000, None)

    @staticmethod
    def unpack(packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of :meth:`pack`: ``[B, (h/2)(w/2), 4C]`` -> ``[B, C, h, w]``."""
        b, _, c4 = packed.shape
        x = packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c4 // 4, h, w)

    def predicted_x0(self, comps, p):
        """Flow matching: ``x_t = (1 - sigma) x0 + sigma * noise`` and the model predicts the
        velocity ``noise - x0``, so ``x0 = x_t - sigma * v``."""
        h, w = p.noisy.shape[-2:]
        sigma = (p.timesteps.float() / 1000).view(-1, 1, 1, 1)
        return p.noisy.float() - sigma * self.unpack(p.pred.float(), h, w)

    def pixel_weight(self, weight, pred):
        """Packed like the latents: each 2x2 patch's four weights, repeated per channel."""
        channels = pred.shape[-1] // 4
        return to_device(self.pack(weight.expand(-1, channels, -1, -1)), pred.device)

    def dummy_condition(self, comps, batch, device, dtype, cfg=None):
        c = comps.denoiser.config
        t5_length = cfg.t5_max_length if cfg is not None else 512
        return {"encoder_hidden_states": torch.zeros(batch, t5_length, c.joint_attention_dim, device=device,
                                                     dtype=dtype),
                "pooled_projections": torch.zeros(batch, c.pooled_projection_dim, device=device, dtype=dtype)}

    convolutional = False

    def repeated_blocks(self, model):
        """The 19 double-stream and 38 single-stream blocks (at FLUX.1's size), in order."""
        inner = model.module if hasattr(model, "module") else model
        return [*inner.transformer_blocks, *inner.single_transformer_blocks]

    # --- sampling -------------------------------------------------------------------------
    generation_dtype = "bfloat16"

    def pipeline(self, comps):
        diffusers = require("diffusers", "Sampling")
        pipe = diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(comps.scheduler.config),
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
            text_encoder_2=comps.text_encoder_2, tokenizer_2=comps.tokenizer_2, transformer=comps.denoiser)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample(self, pipe, comps, prompt, resolution, steps, generator, output_type="pil", cond=None,
               guidance=None):
        if cond is None:  # the text encoders are still loaded (class images, before caching)
            if comps.text_encoder is None or comps.text_encoder_2 is None:
                raise ValueError(f"FLUX samples from cached prompt embeddings once its text encoders are "
                                 f"dropped; none for '{prompt}'")
            with torch.no_grad():
                cond = {k: v[0] for k, v in self.encode(comps, [prompt], pipe.device).items()}
        device = next(comps.denoiser.parameters()).device
        dtype = next(p for p in comps.denoiser.parameters() if p.is_floating_point() and p.dtype.itemsize > 1).dtype
        return pipe(prompt_embeds=cond["encoder_hidden_states"][None].to(device, dtype),
                    pooled_prompt_embeds=cond["pooled_projections"][None].to(device, dtype),
                    guidance_scale=3.5 if guidance is None else guidance, height=resolution, width=resolution,
                    num_inference_steps=steps, generator=generator, output_type=output_type).images[0]

    # --- LoRA files -----------------------------------------------------------------------
    def kohya_tensors(self, denoiser_state, te_states, alpha, model, rank=None):
        """BFL names with fused qkv / linear1 layers (``keys.kohya_flux_lora``)."""
        from .keys import kohya_flux_lora

        pairs = peft_pairs(denoiser_state)
        rows = {n: mod.out_features for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
        rows.update({n.removesuffix(".base_layer"): r for n, r in rows.items()})
        r = rank or next(iter(pairs.values()))[0].shape[0]
        return kohya_flux_lora({k: tuple(v) for k, v in pairs.items()}, rows, dict(model.config), alpha, r)

    def save_diffusers_lora(self, folder, layers, te_layers):
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True)
