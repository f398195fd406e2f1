"""FLUX.2 klein (4B and 9B): a FLUX-style double- and single-stream transformer conditioned on
three hidden layers of a Qwen3 text encoder, over the latents of FLUX.2's own 32-channel VAE,
trained with flow matching.

What the family defines, as the model is sampled (diffusers' ``Flux2KleinPipeline``,
ComfyUI's ``Flux2`` model with its klein text encoder):

- the caption is read inside Qwen3's chat turn with thinking switched off, padded to
  ``llm_max_length`` tokens (512, as both samplers pad it); hidden states 9, 18 and 27 are
  stacked per token (``[B, L, 3 x width]``), and the text encoder is dropped once every
  caption is encoded;
- the VAE's latents are patchified 2x2 (128 channels), normalised by the VAE's batch-norm
  running statistics and packed into a sequence with 4-axis position ids ``(t, y, x, l)``
  (text tokens: ``(0, 0, 0, l)``);
- the noised latents are ``(1 - sigma) x0 + sigma * noise``, sigma logit-normal and shifted
  by FLUX.2's resolution-dependent ``mu`` (its empirical formula at 50 sampling steps) or
  by ``timestep_shift``; the transformer reads sigma and predicts the velocity ``noise - x0``;
  klein has no guidance embedding (a model that has one gets ``guidance``).

- ``keys``: BFL's layout for single files and kohya LoRAs;
- ``files``: ComfyUI's separate files (transformer, Qwen3, FLUX.2's VAE).
"""
from __future__ import annotations

import math

import torch

from ....core.deps import require
from ....core.transfer import to_device
from ..base import Prediction, logit_normal_sigmas, peft_pairs
from ..packed_flow import PackedFlow
from ..qwen_captions import QwenCaptionedFamily
from ..flux import Flux

# Qwen3's chat turn with thinking switched off, as klein reads captions (diffusers' pipeline,
# ComfyUI's KleinTokenizer)
TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
HIDDEN_LAYERS = (9, 18, 27)  # the Qwen3 hidden states klein reads, stacked per token
MU_STEPS = 50  # the sampling steps FLUX.2's empirical shift is taken at for training


def empirical_mu(image_seq_len: int, num_steps: int = MU_STEPS) -> float:
    """FLUX.2's time shift ``mu`` for an image of ``image_seq_len`` tokens (its pipelines')."""
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    return compute_empirical_mu(image_seq_len, num_steps)


class Flux2(PackedFlow, QwenCaptionedFamily):
    name = "flux2"
    title = "FLUX.2"
    companion_files = "llm (qwen_3_4b.safetensors for klein 4B, qwen_3_8b for 9B) and vae (flux2-vae.safetensors)"
    transformer_class = "Flux2Transformer2DModel"
    vae_class = "AutoencoderKLFlux2"
    # the double blocks' attention and the single blocks' fused input projection (``linear1``)
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
                    "to_qkv_mlp_proj"]
    supports_dora = False  # fused qkv layers in the files ComfyUI loads: one magnitude per fused row
    resolution_multiple = 16  # 2x2 patches of 8x latents
    bucket_multiple = 16
    kohya_version = "flux2"
    architecture = "flux-2-klein"
    pipeline_class = "Flux2KleinPipeline"

    def published_size(self, path):
        from .files import published_size

        return published_size(path)

    # --- building -------------------------------------------------------------------------
    def new_scheduler(self):
        diffusers = require("diffusers", "Building a model from config")
        return diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0,
                                                         use_dynamic_shifting=True, time_shift_type="exponential")

    # --- training -------------------------------------------------------------------------
    def caption_token_lengths(self, cfg) -> dict[str, int]:
        return {"text_encoder": cfg.llm_max_length}

    def encode(self, comps, prompts, device, cfg=None):
        """``encoder_hidden_states`` ``[B, L, 3 x width]``: hidden states 9, 18 and 27 of each
        token, ``L`` the configured tokens (padding included, as both samplers read it)."""
        return self.read_captions(comps, prompts, device, cfg.llm_max_length if cfg is not None else 512)

    @staticmethod
    def read_captions(comps, prompts, device, max_length: int) -> dict[str, torch.Tensor]:
        text = comps.tokenizer([TEMPLATE.format(p) for p in prompts], padding="max_length", padding_side="right",
                               max_length=max_length, truncation=True, return_tensors="pt")
        ids, mask = text.input_ids.to(device), text.attention_mask.to(device)
        layers = comps.text_encoder.config.num_hidden_layers
        if layers < max(HIDDEN_LAYERS):
            raise ValueError(f"llm: FLUX.2 reads hidden states {HIDDEN_LAYERS} of its text encoder; this one has "
                             f"{layers} layers")
        states = comps.text_encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        return {"encoder_hidden_states": torch.cat([states[k] for k in HIDDEN_LAYERS], dim=-1)}

    # the VAE's latents in the transformer's space: 2x2 patches (FLUX.1's packing order), then
    # the batch-norm statistics
    @staticmethod
    def _statistics(comps, device):
        bn = comps.vae.bn
        mean = bn.running_mean.float()
        std = torch.sqrt(bn.running_var.float() + comps.vae.config.batch_norm_eps)
        return to_device(mean, device), to_device(std, device)

    def to_model(self, comps, latents: torch.Tensor) -> torch.Tensor:
        """``[B, 32, h, w]`` VAE latents -> ``[B, (h/2)(w/2), 128]`` normalised tokens."""
        mean, std = self._statistics(comps, latents.device)
        return (Flux.pack(latents.float()) - mean) / std

    def from_model(self, comps, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """The inverse of :meth:`to_model`."""
        mean, std = self._statistics(comps, tokens.device)
        return Flux.unpack(tokens.float() * std + mean, h, w)

    @staticmethod
    def ids(h, w, txt_len, device):
        """4-axis positions ``(t, y, x, l)`` of the image tokens (row-major) and text tokens."""
        ys, xs = torch.meshgrid(torch.arange(h // 2, device=device), torch.arange(w // 2, device=device),
                                indexing="ij")
        zero = torch.zeros_like(ys)
        img = torch.stack([zero, ys, xs, zero], dim=-1).reshape(-1, 4)
        txt = torch.zeros(txt_len, 4, dtype=img.dtype, device=device)
        txt[:, 3] = torch.arange(txt_len, device=device)
        return img, txt

    @staticmethod
    def sigmas(batch: int, gen, shift: float, seq_len: int) -> torch.Tensor:
        """Noise levels in (0, 1): logit-normal draws shifted toward noise by ``shift``, or (0)
        by FLUX.2's resolution-dependent ``exp(mu)``."""
        return logit_normal_sigmas(batch, gen, shift if shift > 0 else math.exp(empirical_mu(seq_len)))

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        b, c, h, w = latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"resolution: FLUX.2 patches 2x2 latents; {cfg.resolution} px gives an odd latent size")
        x0 = self.to_model(comps, latents)
        noise = to_device(torch.randn(x0.shape, generator=gen), latents.device)
        sigma = to_device(self.sigmas(b, gen, cfg.timestep_shift, x0.shape[1]), latents.device)
        s = sigma.view(b, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        enc = cond["encoder_hidden_states"]
        img_ids, txt_ids = self.ids(h, w, enc.shape[1], latents.device)
        inner = model.module if hasattr(model, "module") else model
        guidance = (torch.full((b,), cfg.guidance, device=latents.device, dtype=dtype)
                    if inner.config.guidance_embeds else None)
        pred = model(hidden_states=noisy.to(dtype), encoder_hidden_states=enc.to(dtype), timestep=sigma.to(dtype),
                     img_ids=img_ids, txt_ids=txt_ids, guidance=guidance, return_dict=False)[0]
        # the loop keeps the noisy latents in the VAE's space (the identity loss decodes them)
        return Prediction(pred, noise - x0, self.from_model(comps, noisy, h, w), sigma * 1000, None)

    def dummy_condition(self, comps, batch, device, dtype, cfg=None):
        length = cfg.llm_max_length if cfg is not None else 512
        width = comps.denoiser.config.joint_attention_dim
        return {"encoder_hidden_states": torch.zeros(batch, length, width, device=device, dtype=dtype)}

    def repeated_blocks(self, model):
        """The double-stream, then the single-stream blocks (klein 4B: 5 and 20), in order."""
        inner = model.module if hasattr(model, "module") else model
        return [*inner.transformer_blocks, *inner.single_transformer_blocks]

    # --- sampling -------------------------------------------------------------------------
    def sample(self, pipe, comps, prompt, resolution, steps, generator, output_type="pil", cond=None,
               guidance=None):
        """Without CFG by default; ``guidance`` > 1 needs the text encoder for the empty
        negative prompt."""
        guidance = 1.0 if guidance is None else guidance
        cond, device, dtype = self.sampling_inputs(comps, prompt, pipe.device, cond, guidance > 1)
        negative = None
        if guidance > 1:
            length = cond["encoder_hidden_states"].shape[0]
            with torch.no_grad():
                negative = self.read_captions(comps, [""], pipe.device, length)["encoder_hidden_states"]
        positive = cond["encoder_hidden_states"][None].to(device, dtype)
        return pipe(prompt_embeds=positive,
                    negative_prompt_embeds=negative.to(device, dtype) if negative is not None else None,
                    guidance_scale=guidance, height=resolution, width=resolution, num_inference_steps=steps,
                    generator=generator, output_type=output_type).images[0]

    def generate(self, pipe, prompt, negative, height, width, steps, cfg, generator, output_type="np", **start):
        """klein's pipeline takes a negative prompt only as embeddings (its first argument is
        an image to edit, so the prompt goes by name); CFG above 1 without one uses "".
        ``start``: ``latents`` and ``sigmas`` to begin from (:meth:`img2img`)."""
        negative_embeds = None
        if negative and cfg > 1:
            negative_embeds, _ = pipe.encode_prompt(negative, device=pipe._execution_device)
        return pipe(prompt=prompt, negative_prompt_embeds=negative_embeds, height=height, width=width,
                    num_inference_steps=steps, guidance_scale=cfg, generator=generator,
                    output_type=output_type, **start).images[0]

    def img2img(self, pipe, image, prompt, negative, strength, steps, cfg, generator):
        """FLUX.2's pipelines read an image as a reference to edit, not as a start, so the
        image's latents are noised here to ``strength`` (``(1 - s) x0 + s noise`` in the
        transformer's normalised patch space) and the pipeline denoises the rest of FLUX.2's
        schedule: ``round(steps x strength)`` steps whose sigmas, once the pipeline shifts
        them by its empirical ``mu``, begin at ``strength``."""
        import numpy as np

        from types import SimpleNamespace

        if not 0 < strength <= 1:
            raise ValueError(f"strength: {strength} is not in (0, 1]")
        vae = pipe.vae
        h, w = image.shape[:2]
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 127.5 - 1
        with torch.no_grad():
            mean, _ = self.encode_pixels(vae, pixels.to(pipe._execution_device, vae.dtype))
            tokens = self.to_model(SimpleNamespace(vae=vae), mean)
        x0 = tokens.transpose(1, 2).reshape(1, tokens.shape[2], mean.shape[-2] // 2, mean.shape[-1] // 2)
        n = max(1, round(steps * strength))
        mu = empirical_mu(x0.shape[-2] * x0.shape[-1], n)
        first = 1 / (1 + math.exp(mu) * (1 / strength - 1))  # exp(mu) / (exp(mu) + 1/first - 1) = strength
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        return self.generate(pipe, prompt, negative, h, w, n, cfg, generator,
                             latents=(1 - strength) * x0 + strength * noise,
                             sigmas=list(np.linspace(first, first / n, n)))

    # --- LoRA files -----------------------------------------------------------------------
    def kohya_tensors(self, denoiser_state, te_states, alpha, model, rank=None):
        """BFL names with fused qkv layers (``keys.kohya_flux2_lora``)."""
        from .keys import kohya_flux2_lora

        pairs = peft_pairs(denoiser_state)
        rows = {n: mod.out_features for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
        rows.update({n.removesuffix(".base_layer"): r for n, r in rows.items()})
        r = rank or next(iter(pairs.values()))[0].shape[0]
        return kohya_flux2_lora({k: tuple(v) for k, v in pairs.items()}, rows, dict(model.config), alpha, r)

    def save_diffusers_lora(self, folder, layers, te_layers):
        from diffusers import Flux2KleinPipeline

        Flux2KleinPipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True)

