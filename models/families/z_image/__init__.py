"""Z-Image (Base and Turbo): a single-stream diffusion transformer conditioned on Qwen3's
second-to-last hidden states, trained with flow matching.

What the family defines, as the model is sampled (diffusers' ``ZImagePipeline``, ComfyUI's
``ZImage`` model):

- the caption is read inside Qwen's chat turn (``<|im_start|>user ... <|im_start|>assistant``),
  the text encoder's second-to-last hidden states at the caption's own tokens are the
  conditioning (padding is not part of it), and the text encoder is dropped once every
  caption is encoded;
- the noised latents are ``(1 - sigma) x0 + sigma * noise`` in the VAE's scaled and shifted
  space (FLUX.1's VAE), sigma drawn logit-normal and shifted by 3.0 (Z-Image's scheduler and
  ComfyUI's sampling both use 3.0);
- the transformer reads time as ``1 - sigma`` and predicts ``x0 - noise`` (the pipeline
  negates it into the scheduler's velocity), one latent per sample as a list, patchified 2x2
  inside the model.

Z-Image Turbo is distilled for few-step sampling; a LoRA trained on it directly slowly undoes
the distillation (samples need more steps and CFG). The field trains on Base, or on Turbo with
a de-distillation adapter merged into the frozen weights while training: ``training_adapter``
(see ``trainers.loop.setup``). Neither changes the exported LoRA's layout.

- ``keys``: the original (ComfyUI) layout for single files and ComfyUI's LoRA names;
- ``files``: ComfyUI's separate files (transformer, Qwen3 text encoder, VAE).
"""
from __future__ import annotations


import torch

from ....core.deps import require
from ....core.transfer import to_device
from ..base import Prediction, logit_normal_sigmas
from ..qwen_captions import QwenCaptionedFamily

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"  # Qwen's chat turn, as Z-Image reads captions
LORA_PREFIX = "diffusion_model."  # ComfyUI's Z-Image LoRA names: diffusers' module paths under it
SHIFT = 3.0  # Z-Image's noise-level shift (its scheduler config; ComfyUI's ZImage sampling)


class ZImage(QwenCaptionedFamily):
    name = "z_image"
    title = "Z-Image"
    companion_files = "llm (qwen_3_4b.safetensors) and vae (ae.safetensors)"
    transformer_class = "ZImageTransformer2DModel"
    vae_class = "AutoencoderKL"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    quantize_skip = ("t_embedder",)  # diffusers casts the timestep's sinusoids to mlp[0].weight.dtype
    supports_dora = False  # ComfyUI's model fuses to_q/to_k/to_v into one qkv layer: one magnitude per fused row
    resolution_multiple = 16  # 2x2 patches of 8x latents
    bucket_multiple = 16
    kohya_version = "z_image"
    architecture = "z-image"
    pipeline_class = "ZImagePipeline"

    # --- building -------------------------------------------------------------------------
    def new_scheduler(self):
        diffusers = require("diffusers", "Building a model from config")
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT,
                                                         use_dynamic_shifting=False)

    # --- training -------------------------------------------------------------------------
    def caption_token_lengths(self, cfg) -> dict[str, int]:
        return {"text_encoder": cfg.llm_max_length}

    def encode(self, comps, prompts, device, cfg=None):
        """``cap_feats`` ``[B, L, D]`` (zero past each caption's end) and ``cap_mask``
        ``[B, L]``, ``L`` the configured most tokens: fixed shapes, so cached captions stack
        into batches. The encoder reads only as far as the longest caption (padding after a
        caption cannot change a causal LM's states before it), which is most of the cost of a
        4B encoder on the CPU."""
        max_length = cfg.llm_max_length if cfg is not None else 512
        text = comps.tokenizer([TEMPLATE.format(p) for p in prompts], padding="longest", padding_side="right",
                               max_length=max_length, truncation=True, return_tensors="pt")
        ids, mask = text.input_ids.to(device), text.attention_mask.to(device)
        hidden = comps.text_encoder(input_ids=ids, attention_mask=mask.bool(), output_hidden_states=True).hidden_states[-2]
        mask = mask.to(hidden.dtype)
        pad = max_length - hidden.shape[1]
        return {"cap_feats": torch.nn.functional.pad(hidden * mask[..., None], (0, 0, 0, pad)),
                "cap_mask": torch.nn.functional.pad(mask, (0, pad))}

    @staticmethod
    def captions(cond: dict, dtype) -> list[torch.Tensor]:
        """Each sample's caption features at its own length (what the transformer reads); on
        the ``meta`` device (memory and FLOP counts, whose masks are all ones) at full length."""
        return [(f if f.is_meta else f[m > 0.5]).to(dtype) for f, m in zip(cond["cap_feats"], cond["cap_mask"])]

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        b, c, h, w = latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"resolution: Z-Image patches 2x2 latents; {cfg.resolution} px gives an odd latent size")
        noise = to_device(torch.randn(latents.shape, generator=gen), latents.device)
        sigma = to_device(logit_normal_sigmas(b, gen, cfg.timestep_shift or SHIFT), latents.device)
        s = sigma.view(b, 1, 1, 1)
        noisy = (1 - s) * latents + s * noise
        x = list(noisy.to(dtype).unsqueeze(2).unbind(0))  # [C, 1, h, w] each: one frame
        out = model(x, (1 - sigma).to(dtype), self.captions(cond, dtype), return_dict=False)[0]
        pred = torch.stack(out).squeeze(2)
        return Prediction(pred, latents - noise, noisy, sigma * 1000, None)

    def predicted_x0(self, comps, p):
        """``x_t = (1 - sigma) x0 + sigma * noise`` and the model predicts ``x0 - noise``, so
        ``x0 = x_t + sigma * pred``."""
        sigma = (p.timesteps.float() / 1000).view(-1, 1, 1, 1)
        return p.noisy.float() + sigma * p.pred.float()

    def dummy_condition(self, comps, batch, device, dtype, cfg=None):
        length = cfg.llm_max_length if cfg is not None else 512
        width = comps.denoiser.config.cap_feat_dim
        return {"cap_feats": torch.zeros(batch, length, width, device=device, dtype=dtype),
                "cap_mask": torch.ones(batch, length, device=device, dtype=dtype)}

    def repeated_blocks(self, model):
        """The noise and context refiners, then the main layers (30 at Z-Image's size), in the
        order they run."""
        inner = model.module if hasattr(model, "module") else model
        return [*inner.noise_refiner, *inner.context_refiner, *inner.layers]

    # --- sampling -------------------------------------------------------------------------
    def sample(self, pipe, comps, prompt, resolution, steps, generator, output_type="pil", cond=None,
               guidance=None):
        """Without CFG by default (Z-Image Turbo's setting); ``guidance`` > 0 needs the text
        encoder for the empty negative prompt."""
        guidance = 0.0 if guidance is None else guidance
        cond, device, dtype = self.sampling_inputs(comps, prompt, pipe.device, cond, guidance > 0)
        negative = None
        if guidance > 0:
            with torch.no_grad():
                negative = self.captions(self.encode(comps, [""], pipe.device), dtype)
        positive = self.captions({k: v[None] for k, v in cond.items()}, dtype)
        return pipe(prompt_embeds=[p.to(device) for p in positive],
                    negative_prompt_embeds=[n.to(device) for n in negative] if negative else None,
                    guidance_scale=guidance, height=resolution, width=resolution, num_inference_steps=steps,
                    generator=generator, output_type=output_type).images[0]

    # --- LoRA files -----------------------------------------------------------------------
    def kohya_tensors(self, denoiser_state, te_states, alpha, model, rank=None):
        """diffusers' module names under ``diffusion_model.`` (see ``keys``)."""
        from ...keys.kohya import peft_to_dotted

        return peft_to_dotted(denoiser_state, LORA_PREFIX, alpha)

    def save_diffusers_lora(self, folder, layers, te_layers):
        from diffusers import ZImagePipeline

        ZImagePipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True)
