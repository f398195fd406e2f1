"""Qwen-Image: a double-stream (MMDiT) transformer conditioned on Qwen2.5-VL's last hidden
states, over the latents of its own causal video VAE (an image is one frame), trained with flow
matching.

What the family defines, as the model is sampled (diffusers' ``QwenImagePipeline``, ComfyUI's
``QwenImage`` model with its Qwen2.5-VL text encoder):

- the caption is read inside a chat with Qwen-Image's system prompt; the last hidden states
  of the tokens after the template's opening (the system turn and ``<|im_start|>user\\n``: 34
  tokens with Qwen's tokenizer, counted from the tokenizer itself) are the conditioning, with a
  mask over the caption's own tokens; they are padded to ``llm_max_length`` (masked out, so
  the transformer reads a caption alike at any padding), and the text encoder is dropped once
  every caption is encoded;
- the VAE encodes each image as one video frame; its latents are normalised per channel by
  the ``latents_mean``/``latents_std`` of its config and packed 2x2 into a sequence (64
  channels), whose shape the transformer reads as ``img_shapes`` for its 3-axis rotary
  positions;
- the noised latents are ``(1 - sigma) x0 + sigma * noise``, sigma logit-normal and shifted
  by ``exp(mu)``, ``mu`` the pipeline's resolution-dependent shift (its scheduler's linear
  rule between 256 and 8192 tokens), or by ``timestep_shift``; the transformer reads sigma and
  predicts the velocity ``noise - x0``.

- ``files``: ComfyUI's separate files (transformer, Qwen2.5-VL, the VAE in Wan's layout).

ComfyUI's Qwen-Image model keeps diffusers' module names, so its single files and LoRA files
(``diffusion_model.<module>``, ``comfy/lora.py``'s QwenImage branch) need no key table; its
attention keeps ``to_q``/``to_k``/``to_v`` apart, so DoRA's magnitudes have a place in them.
"""
from __future__ import annotations

import math

import torch

from ....core.deps import require
from ....core.transfer import to_device
from ..base import Prediction, logit_normal_sigmas
from ..flux import Flux
from ..packed_flow import PackedFlow
from ..qwen_captions import QwenCaptionedFamily

# Qwen-Image's chat with its system prompt (diffusers' pipeline, ComfyUI's QwenImageTokenizer)
TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
            "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
            "<|im_start|>assistant\n")
TEMPLATE_TOKENS = 34  # the template's opening in Qwen's own tokenizer (see template_tokens)
LORA_PREFIX = "diffusion_model."  # ComfyUI's Qwen-Image LoRA names: diffusers' module paths under it
# the scheduler's resolution-dependent shift (Qwen-Image's published scheduler config)
SHIFT_RULE = dict(base_image_seq_len=256, max_image_seq_len=8192, base_shift=0.5, max_shift=0.9)


def template_tokens(tokenizer) -> int:
    """How many tokens open every caption (the system turn and ``<|im_start|>user\\n``): what
    the pipeline drops from the text encoder's states (34 with Qwen's tokenizer)."""
    return len(tokenizer(TEMPLATE.split("{}")[0]).input_ids)


def dynamic_mu(image_seq_len: int) -> float:
    """The pipeline's time shift ``mu`` for an image of ``image_seq_len`` tokens (its own rule,
    with Qwen-Image's scheduler settings)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    r = SHIFT_RULE
    return calculate_shift(image_seq_len, r["base_image_seq_len"], r["max_image_seq_len"], r["base_shift"],
                           r["max_shift"])


class QwenImage(PackedFlow, QwenCaptionedFamily):
    name = "qwen_image"
    title = "Qwen-Image"
    companion_files = "llm (qwen_2.5_vl_7b.safetensors) and vae (qwen_image_vae.safetensors)"
    transformer_class = "QwenImageTransformer2DModel"
    vae_class = "AutoencoderKLQwenImage"
    text_encoder_class = "Qwen2_5_VLForConditionalGeneration"
    text_config_class = "Qwen2_5_VLConfig"
    text_arch = "qwen25_vl"
    # every projection of the joint attention (image and text streams)
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    resolution_multiple = 16  # 2x2 patches of 8x latents
    bucket_multiple = 16
    kohya_version = "qwen_image"
    architecture = "qwen-image"
    pipeline_class = "QwenImagePipeline"

    # --- building -------------------------------------------------------------------------
    def new_scheduler(self):
        diffusers = require("diffusers", "Building a model from config")
        return diffusers.FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, shift_terminal=0.02,
            time_shift_type="exponential", **SHIFT_RULE)

    # --- the VAE: each image one frame ------------------------------------------------------
    def encode_pixels(self, vae, pixels):
        dist = vae.encode(pixels.unsqueeze(2)).latent_dist
        return dist.mean[:, :, 0], dist.std[:, :, 0]

    def decode_latents(self, vae, latents):
        return vae.decode(latents.unsqueeze(2)).sample[:, :, 0]

    def latent_shape(self, comps, resolution):
        factor = 2 ** len(comps.vae.config.temperal_downsample)
        return (comps.vae.config.z_dim, resolution // factor, resolution // factor)

    # --- training -------------------------------------------------------------------------
    def caption_token_lengths(self, cfg) -> dict[str, int]:
        return {"text_encoder": cfg.llm_max_length + TEMPLATE_TOKENS}

    def encode(self, comps, prompts, device, cfg=None):
        """``encoder_hidden_states`` ``[B, L, D]`` (zero past each caption's end) and
        ``encoder_hidden_states_mask`` ``[B, L]``, ``L`` = ``llm_max_length``: fixed shapes, so
        cached captions stack into batches. The encoder reads only as far as the longest
        caption (a causal LM's states before the padding do not depend on it)."""
        return self.read_captions(comps, prompts, device, cfg.llm_max_length if cfg is not None else 512)

    @staticmethod
    def read_captions(comps, prompts, device, max_length: int) -> dict[str, torch.Tensor]:
        drop = template_tokens(comps.tokenizer)
        text = comps.tokenizer([TEMPLATE.format(p) for p in prompts], padding="longest", padding_side="right",
                               max_length=max_length + drop, truncation=True, return_tensors="pt")
        ids, mask = text.input_ids.to(device), text.attention_mask.to(device)
        hidden = comps.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        hidden, mask = hidden[:, drop:], mask[:, drop:].to(hidden.dtype)
        pad = max_length - hidden.shape[1]
        return {"encoder_hidden_states": torch.nn.functional.pad(hidden * mask[..., None], (0, 0, 0, pad)),
                "encoder_hidden_states_mask": torch.nn.functional.pad(mask, (0, pad))}

    # the VAE's latents in the transformer's space: normalised per channel, then 2x2 patches
    @staticmethod
    def _statistics(comps, device):
        config = comps.vae.config
        mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(config.latents_std, dtype=torch.float32).view(1, -1, 1, 1)
        return to_device(mean, device), to_device(std, device)

    def to_model(self, comps, latents: torch.Tensor) -> torch.Tensor:
        """``[B, 16, h, w]`` VAE latents -> ``[B, (h/2)(w/2), 64]`` normalised tokens."""
        mean, std = self._statistics(comps, latents.device)
        return Flux.pack((latents.float() - mean) / std)

    def from_model(self, comps, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of :meth:`to_model`."""
        mean, std = self._statistics(comps, tokens.device)
        return Flux.unpack(tokens.float(), h, w) * std + mean

    @staticmethod
    def sigmas(batch: int, gen, shift: float, seq_len: int) -> torch.Tensor:
        """Noise levels in (0, 1): logit-normal draws shifted toward noise by ``shift``, or (0)
        by the pipeline's resolution-dependent ``exp(mu)``."""
        return logit_normal_sigmas(batch, gen, shift if shift > 0 else math.exp(dynamic_mu(seq_len)))

    @staticmethod
    def captions(cond: dict, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return cond["encoder_hidden_states"].to(dtype), cond["encoder_hidden_states_mask"]

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        b, c, h, w = latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"resolution: Qwen-Image patches 2x2 latents; {cfg.resolution} px gives an odd latent "
                             f"size")
        x0 = self.to_model(comps, latents)
        noise = to_device(torch.randn(x0.shape, generator=gen), latents.device)
        sigma = to_device(self.sigmas(b, gen, cfg.timestep_shift, x0.shape[1]), latents.device)
        s = sigma.view(b, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        enc, mask = self.captions(cond, dtype)
        pred = model(hidden_states=noisy.to(dtype), encoder_hidden_states=enc,
                     encoder_hidden_states_mask=to_device(mask, latents.device), timestep=sigma.to(dtype),
                     img_shapes=[[(1, h // 2, w // 2)]] * b, return_dict=False)[0]
        # the loop keeps the noisy latents in the VAE's space (the identity loss decodes them)
        return Prediction(pred, noise - x0, self.from_model(comps, noisy, h, w), sigma * 1000, None)

    def dummy_condition(self, comps, batch, device, dtype, cfg=None):
        length = cfg.llm_max_length if cfg is not None else 512
        width = comps.denoiser.config.joint_attention_dim
        return {"encoder_hidden_states": torch.zeros(batch, length, width, device=device, dtype=dtype),
                "encoder_hidden_states_mask": torch.ones(batch, length, device=device, dtype=dtype)}

    def repeated_blocks(self, model):
        """The transformer blocks (60 at Qwen-Image's size), in order."""
        inner = model.module if hasattr(model, "module") else model
        return list(inner.transformer_blocks)

    # --- sampling -------------------------------------------------------------------------
    def pipeline(self, comps):
        """diffusers' pipeline, told how many template tokens this tokenizer opens a caption
        with (34 for Qwen's own; the test-size stand-in differs)."""
        pipe = super().pipeline(comps)
        pipe.prompt_template_encode_start_idx = template_tokens(comps.tokenizer)
        return pipe

    def sample(self, pipe, comps, prompt, resolution, steps, generator, output_type="pil", cond=None,
               guidance=None):
        """Without CFG by default; ``guidance`` > 1 (the pipeline's true CFG) needs the text
        encoder for the empty negative prompt."""
        guidance = 1.0 if guidance is None else guidance
        cond, device, dtype = self.sampling_inputs(comps, prompt, pipe.device, cond, guidance > 1)
        negative = None
        if guidance > 1:
            with torch.no_grad():
                negative = self.encode(comps, [" "], pipe.device)
        embeds, mask = self.captions({k: v[None] for k, v in cond.items()}, dtype)
        keep = int(mask[0].sum())  # the pipeline's own form: the caption's tokens, unpadded
        kwargs = {}
        if negative is not None:
            n_embeds, n_mask = self.captions(negative, dtype)
            n_keep = int(n_mask[0].sum())
            kwargs = dict(negative_prompt_embeds=n_embeds[:, :n_keep].to(device),
                          negative_prompt_embeds_mask=n_mask[:, :n_keep].to(device, torch.long))
        return pipe(prompt_embeds=embeds[:, :keep].to(device), prompt_embeds_mask=mask[:, :keep].to(device, torch.long),
                    true_cfg_scale=guidance, height=resolution, width=resolution, num_inference_steps=steps,
                    generator=generator, output_type=output_type, **kwargs).images[0]

    def generate(self, pipe, prompt, negative, height, width, steps, cfg, generator, output_type="np"):
        """The pipeline's true CFG: ``cfg`` > 1 with a negative prompt (" " when none is given,
        as Qwen-Image's examples)."""
        return pipe(prompt=prompt, negative_prompt=(negative or " ") if cfg > 1 else None, true_cfg_scale=cfg,
                    height=height, width=width, num_inference_steps=steps, generator=generator,
                    output_type=output_type).images[0]

    # --- LoRA files -----------------------------------------------------------------------
    def kohya_tensors(self, denoiser_state, te_states, alpha, model, rank=None):
        """diffusers' module names under ``diffusion_model.``, DoRA scales included."""
        from ...keys.kohya import peft_to_dotted

        return peft_to_dotted(denoiser_state, LORA_PREFIX, alpha)

    def save_diffusers_lora(self, folder, layers, te_layers):
        from diffusers import QwenImagePipeline

        QwenImagePipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True)
