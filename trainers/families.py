"""What differs between model families during training, behind one small interface.

A family encodes prompts into its conditioning (a dict of tensors, batch first) and, given
clean latents, draws the noise level, noises them, runs the denoiser and returns prediction
and target. The loop, the memory planner and the benchmark only talk to this interface.

- ``sd15``: one CLIP text encoder, DDPM noise (epsilon or v-prediction).
- ``sdxl``: two text encoders (penultimate hidden states concatenated, pooled embedding of
  the second), size/crop conditioning (``time_ids``), DDPM noise.
- ``flux``: CLIP-L pooled + T5-XXL sequence, rectified-flow (flow-matching) objective with a
  shifted timestep distribution, guidance embedding, 2x2-packed latents.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Prediction:
    pred: torch.Tensor
    target: torch.Tensor
    noisy: torch.Tensor  # model input before packing (identity loss)
    timesteps: torch.Tensor
    weight: torch.Tensor | None = None  # per-sample loss weight


class Family:
    name = ""
    lora_targets: list[str] = []
    text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
    supports_prior = True
    supports_identity_loss = True
    supports_text_encoder_training = True
    supports_dreambooth = False
    kohya_version = ""
    architecture = ""

    def encode(self, comps, prompts: list[str], device, cfg=None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, comps, model, latents, cond, gen, cfg, dtype) -> Prediction:
        raise NotImplementedError

    def dummy_condition(self, comps, batch: int, device, dtype) -> dict[str, torch.Tensor]:
        """Zero conditioning of the right shapes (benchmarks and memory simulation)."""
        raise NotImplementedError

    def latent_shape(self, comps, resolution: int) -> tuple[int, int, int]:
        factor = 2 ** (len(comps.vae.config.block_out_channels) - 1)
        return (comps.vae.config.latent_channels, resolution // factor, resolution // factor)


def _tokens(tokenizer, prompts, device, max_length=None):
    return tokenizer(prompts, padding="max_length", truncation=True,
                     max_length=max_length or tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)


def _ddpm_noise(comps, latents, gen, cfg):
    noise = torch.randn(latents.shape, generator=gen)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen)
    noise = noise.to(latents.device)
    T = comps.scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, T, (latents.shape[0],), generator=gen).to(latents.device)
    noisy = comps.scheduler.add_noise(latents, noise, timesteps)
    if comps.scheduler.config.prediction_type == "v_prediction":
        target = comps.scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    weight = None
    if cfg.snr_gamma > 0:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(comps.scheduler, timesteps)
        if comps.scheduler.config.prediction_type == "v_prediction":
            weight = torch.clamp(snr, max=cfg.snr_gamma) / (snr + 1)
        else:
            weight = torch.clamp(snr, max=cfg.snr_gamma) / snr
    return noisy, target, timesteps, weight


class SD15(Family):
    name = "sd15"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    supports_dreambooth = True
    kohya_version = "sd_v1"
    architecture = "stable-diffusion-v1"

    def encode(self, comps, prompts, device, cfg=None):
        return {"encoder_hidden_states": comps.text_encoder(_tokens(comps.tokenizer, prompts, device))[0]}

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        noisy, target, timesteps, weight = _ddpm_noise(comps, latents, gen, cfg)
        pred = model(noisy.to(dtype), timesteps, cond["encoder_hidden_states"].to(dtype)).sample
        return Prediction(pred, target, noisy, timesteps, weight)

    def dummy_condition(self, comps, batch, device, dtype):
        dim = comps.unet.config.cross_attention_dim
        return {"encoder_hidden_states": torch.zeros(batch, 77, dim, device=device, dtype=dtype)}


class SDXL(Family):
    name = "sdxl"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    kohya_version = "sdxl_base_v1-0"
    architecture = "stable-diffusion-xl-v1-base"

    def encode(self, comps, prompts, device, cfg=None):
        hidden = []
        pooled = None
        for tok, te in ((comps.tokenizer, comps.text_encoder), (comps.tokenizer_2, comps.text_encoder_2)):
            out = te(_tokens(tok, prompts, device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            if te is comps.text_encoder_2:
                pooled = out.text_embeds
        return {"encoder_hidden_states": torch.cat(hidden, dim=-1), "text_embeds": pooled}

    @staticmethod
    def time_ids(resolution: int, batch: int, device) -> torch.Tensor:
        """Size/crop conditioning: original size, crop top-left, target size. Training images
        are centre-cropped squares resized to the training resolution."""
        row = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], dtype=torch.float32)
        return row.repeat(batch, 1).to(device)

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        noisy, target, timesteps, weight = _ddpm_noise(comps, latents, gen, cfg)
        added = {"text_embeds": cond["text_embeds"].to(dtype),
                 "time_ids": self.time_ids(cfg.resolution, latents.shape[0], latents.device).to(dtype)}
        pred = model(noisy.to(dtype), timesteps, cond["encoder_hidden_states"].to(dtype),
                     added_cond_kwargs=added).sample
        return Prediction(pred, target, noisy, timesteps, weight)

    def dummy_condition(self, comps, batch, device, dtype):
        cfg = comps.unet.config
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        return {"encoder_hidden_states": torch.zeros(batch, 77, cfg.cross_attention_dim, device=device, dtype=dtype),
                "text_embeds": torch.zeros(batch, pooled, device=device, dtype=dtype)}


class Flux(Family):
    name = "flux"
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    supports_prior = False
    supports_identity_loss = False
    supports_text_encoder_training = False
    kohya_version = "flux1"
    architecture = "flux-1-dev"

    def encode(self, comps, prompts, device, cfg=None):
        max_length = cfg.t5_max_length if cfg is not None else 512
        pooled = comps.text_encoder(_tokens(comps.tokenizer, prompts, device), output_hidden_states=False).pooler_output
        t5 = comps.text_encoder_2(_tokens(comps.tokenizer_2, prompts, device, max_length), output_hidden_states=False)[0]
        return {"encoder_hidden_states": t5, "pooled_projections": pooled}

    @staticmethod
    def sigmas(batch: int, gen, shift: float, seq_len: int) -> torch.Tensor:
        """Noise levels in (0, 1): logit-normal draws (SD3/FLUX training), shifted toward noise.
        ``shift`` 0 uses FLUX's resolution-dependent shift (mu from the image token count)."""
        u = torch.sigmoid(torch.randn(batch, generator=gen))
        if shift > 0:
            return shift * u / (1 + (shift - 1) * u)
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
        img = torch.zeros(h // 2, w // 2, 3)
        img[..., 1] += torch.arange(h // 2)[:, None]
        img[..., 2] += torch.arange(w // 2)[None, :]
        return img.reshape(-1, 3).to(device, dtype), torch.zeros(txt_len, 3, device=device, dtype=dtype)

    def predict(self, comps, model, latents, cond, gen, cfg, dtype):
        b, c, h, w = latents.shape
        if h % 2 or w % 2:
            raise ValueError(f"resolution: FLUX packs 2x2 latent patches; {cfg.resolution} px gives an odd latent size")
        noise = torch.randn(latents.shape, generator=gen).to(latents.device)
        sigma = self.sigmas(b, gen, cfg.timestep_shift, (h // 2) * (w // 2)).to(latents.device)
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

    def dummy_condition(self, comps, batch, device, dtype, t5_length: int = 512):
        cfg = comps.unet.config
        return {"encoder_hidden_states": torch.zeros(batch, t5_length, cfg.joint_attention_dim, device=device, dtype=dtype),
                "pooled_projections": torch.zeros(batch, cfg.pooled_projection_dim, device=device, dtype=dtype)}


FAMILIES: dict[str, Family] = {f.name: f for f in (SD15(), SDXL(), Flux())}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"family: '{name}' is not one of {sorted(FAMILIES)}")
    return FAMILIES[name]
