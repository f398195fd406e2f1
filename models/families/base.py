"""The interface every model family implements, and what the UNet families share.

A family owns everything that differs between SD1.x, SDXL and FLUX: which classes make up
the model and how they load (diffusers folder, single file, ComfyUI's separate files), its
tokenizers, how it builds from an architecture table, how it encodes prompts, its training
objective, the memory policy the loop follows, how it samples, and the kohya key layout of
its LoRA files. The loop, the planner, the exporter and the sampler ask the family; none of
them branches on its name.
"""
from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path

import torch

from ...core.deps import require
from ...core.transfer import to_device
from ..components import Components


@dataclass
class Prediction:
    pred: torch.Tensor
    target: torch.Tensor
    noisy: torch.Tensor  # model input before packing (identity loss)
    timesteps: torch.Tensor
    weight: torch.Tensor | None = None  # per-sample loss weight


class Family:
    name = ""
    kohya_version = ""  # ss_base_model_version
    architecture = ""  # modelspec.architecture
    denoiser_folder = "unet"  # its subfolder in a diffusers folder
    lora_targets: list[str] = []
    # layers an fp8 base leaves in full precision (parts of their qualified names): those whose
    # model code casts the input to the layer's own weight dtype, which would round it to fp8
    quantize_skip: tuple[str, ...] = ()
    # the same for the text encoders read from separate files, whose fp8 weights are always read
    # as stored (they are never trained): those layers are read as bf16 instead
    text_quantize_skip: tuple[str, ...] = ()
    text_encoder_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
    # what the trainer offers for this family
    supports_prior = True
    supports_identity_loss = True
    supports_text_encoder_training = True
    supports_dreambooth = False
    supports_dora = True  # DoRA's magnitudes have a place in the family's kohya LoRA file
    # memory policy
    uses_attention_processors = True  # diffusers' attention processors (SDPA / sliced) apply
    keeps_text_encoders = True  # False: deleted once every caption is encoded
    resolution_multiple = 8
    bucket_multiple = 64  # the side step of its aspect-ratio buckets (core.buckets)
    size_conditioning = False  # the denoiser takes each image's original size and crop (SDXL's time ids)
    separate_files: tuple[str, ...] = ()  # extra files a single-file base needs (TrainConfig fields)
    # a single-file base's weights are given to the model as the files store them (8-bit floats
    # as bf16) instead of being built in fp32: what loading them costs in CPU memory
    single_files_as_stored = False
    pipeline_index: tuple[str, dict] = ("", {})  # model_index.json of the folders Persona writes

    # --- loading ---------------------------------------------------------------------------
    def load(self, path: Path, defer_denoiser: bool = False, **files) -> Components:
        """The components of a folder or single file(s). ``defer_denoiser``: a family that
        gives its denoiser a loader (one whose text encoders are dropped once the captions are
        encoded) leaves it unread until ``Components.load_denoiser``; others read it now."""
        comps = self.load_single_file(path, **files) if path.is_file() else self.load_folder(path)
        if not defer_denoiser:
            comps.load_denoiser()
        return comps

    def load_folder(self, folder: Path) -> Components:
        raise NotImplementedError

    def load_single_file(self, path: Path, config_dir: str | Path | None = None, **files) -> Components:
        raise NotImplementedError

    def write_tokenizers(self, folder: Path, real: bool = False) -> None:
        """Write ``tokenizer/`` (and ``tokenizer_2/``) into a diffusers-layout ``folder``;
        ``real``: tokenizers that real weights need (else enough for random weights)."""
        raise NotImplementedError

    def load_tokenizers(self, folder: Path):
        """(tokenizer, tokenizer_2 or None) from a folder written by :meth:`write_tokenizers`."""
        raise NotImplementedError

    # --- building from an architecture table ------------------------------------------------
    def new_scheduler(self):
        raise NotImplementedError

    def build_modules(self, arch: dict, text_encoders: bool = True):
        """(denoiser, vae, text_encoder, text_encoder_2) with random weights, on the current
        default device (the caller sets it; ``meta`` costs no memory)."""
        raise NotImplementedError

    def modules_from_configs(self, folder: Path):
        """The same, shaped by a diffusers folder's own config files (no weights read)."""
        raise NotImplementedError

    # --- training ------------------------------------------------------------------------------
    def check_config(self, cfg) -> None:
        """Config rules of this family; a ValueError that names the field."""
        if cfg.resolution % self.resolution_multiple:
            raise ValueError(f"resolution: family '{self.name}' needs a multiple of {self.resolution_multiple}, "
                             f"got {cfg.resolution}")
        given = [n for n in ("clip_l", "t5", "llm", "vae") if getattr(cfg, n) and n not in self.separate_files]
        if given:
            raise ValueError(f"{'/'.join(given)}: separate text encoder and VAE files are not used by family "
                             f"'{self.name}'")

    def published_size(self, path: Path) -> str:
        """Which published architecture (``models/architectures.py``) a single model file of this
        family is, from its tensors' shapes alone; ``"real"`` for a family of one size."""
        return "real"

    def check_files(self, cfg) -> None:
        """Rules that need the file system (run by ``TrainConfig.check_paths``, before any
        model loads); a ``ConfigError`` that names the field."""

    def encode(self, comps, prompts: list[str], device, cfg=None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def caption_token_lengths(self, cfg) -> dict[str, int]:
        """The token length each text encoder reads a caption at (the memory planner's
        caching phase)."""
        return {"text_encoder": 77, "text_encoder_2": 77}

    def predict(self, comps, model, latents, cond, gen, cfg, dtype) -> Prediction:
        raise NotImplementedError

    def predicted_x0(self, comps, p: Prediction) -> torch.Tensor:
        """The clean latents ``[B, C, h, w]`` the prediction implies (the identity loss decodes
        them); the UNet families' DDPM form: epsilon or v-prediction."""
        alphas = comps.scheduler.alphas_cumprod.to(p.noisy.device)[p.timesteps].float()
        a = alphas.sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas).sqrt().view(-1, 1, 1, 1)
        x_t, out = p.noisy.float(), p.pred.float()
        if comps.scheduler.config.prediction_type == "v_prediction":
            return a * x_t - s * out
        return (x_t - s * out) / a

    def dummy_condition(self, comps, batch: int, device, dtype, cfg=None) -> dict[str, torch.Tensor]:
        """Zero conditioning of the right shapes (benchmarks and memory simulation)."""
        raise NotImplementedError

    def pixel_weight(self, weight: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """A per-latent-pixel weight ``[B, 1, h, w]`` in the layout of the prediction."""
        return to_device(weight, pred.device)

    # --- memory and speed policy ---------------------------------------------------------------
    convolutional = True  # channels-last memory format applies

    def repeated_blocks(self, model) -> list[torch.nn.Module]:
        """The denoiser's repeated blocks, the unit of selective checkpointing, block streaming
        and regional compilation, the ones whose activations are largest first (selective
        checkpointing takes the first N). UNets: every resnet and transformer block, the
        highest-resolution level first (``down_blocks[0]`` and ``up_blocks[-1]``), then the next."""
        from diffusers.models.attention import BasicTransformerBlock
        from diffusers.models.resnet import ResnetBlock2D

        kinds = (BasicTransformerBlock, ResnetBlock2D)
        inner = model.module if hasattr(model, "module") else model
        levels = len(inner.down_blocks)
        found = []
        for name, m in inner.named_modules():
            if not isinstance(m, kinds):
                continue
            parts = name.split(".")
            if parts[0] == "down_blocks":
                level = int(parts[1])
            elif parts[0] == "up_blocks":
                level = levels - 1 - int(parts[1])
            else:
                level = levels  # the mid block, lowest resolution
            found.append((level, len(found), m))
        return [m for _, _, m in sorted(found, key=lambda t: (t[0], t[1]))]

    def encode_pixels(self, vae, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's posterior (mean, std) ``[B, C, h, w]`` of images ``[B, 3, H, W]`` in [-1, 1];
        a family whose VAE reads video frames makes each image one frame."""
        dist = vae.encode(pixels).latent_dist
        return dist.mean, dist.std

    def decode_latents(self, vae, latents: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` of VAE-space latents ``[B, C, h, w]``."""
        return vae.decode(latents).sample

    def latent_shape(self, comps, resolution: int) -> tuple[int, int, int]:
        factor = 2 ** (len(comps.vae.config.block_out_channels) - 1)
        return (comps.vae.config.latent_channels, resolution // factor, resolution // factor)

    # --- sampling ------------------------------------------------------------------------------
    generation_dtype = "float16"  # the half precision the generator samples in on a GPU

    def pipeline(self, comps):
        """A diffusers sampling pipeline over the components being trained."""
        raise NotImplementedError

    def generation_pipeline(self, comps):
        """The pipeline ``persona generate`` and the identity gate sample with (the family's
        own; a family may choose a faster scheduler for it)."""
        return self.pipeline(comps)

    def generate(self, pipe, prompt: str, negative: str, height: int, width: int, steps: int, cfg: float,
                 generator, output_type: str = "np"):
        """One image of ``prompt`` with the generation pipeline (``persona generate``, the
        identity gate), ``negative`` its negative prompt ("" for none)."""
        return pipe(prompt, negative_prompt=negative or None, height=height, width=width,
                    num_inference_steps=steps, guidance_scale=cfg, generator=generator,
                    output_type=output_type).images[0]

    def img2img(self, pipe, image, prompt: str, negative: str, strength: float, steps: int, cfg: float, generator):
        """``image`` (uint8 ``[H, W, 3]``) redrawn from noise level ``strength`` with the weights
        and LoRAs of the generation pipeline ``pipe``, at the image's own size (face refine):
        the family's diffusers img2img pipeline, made from ``pipe``."""
        import inspect

        from diffusers import AutoPipelineForImage2Image
        from PIL import Image

        if not 0 < strength <= 1:
            raise ValueError(f"strength: {strength} is not in (0, 1]")
        img2img = AutoPipelineForImage2Image.from_pipe(pipe)
        img2img.set_progress_bar_config(disable=True)
        takes = inspect.signature(type(img2img).__call__).parameters
        size = {"height": image.shape[0], "width": image.shape[1]} if "height" in takes else {}  # else the image's
        steps = max(steps, math.ceil(1 / strength))  # the pipelines run steps x strength of them: at least one
        return img2img(prompt, image=Image.fromarray(image), negative_prompt=negative or None, strength=strength,
                       num_inference_steps=steps, guidance_scale=cfg, generator=generator, output_type="np",
                       **size).images[0]

    def sample(self, pipe, comps, prompt: str, resolution: int, steps: int, generator, output_type: str = "pil",
               cond: dict[str, torch.Tensor] | None = None, guidance: float | None = None):
        """One image of ``prompt`` (families that drop their text encoders sample from ``cond``)."""
        return pipe(prompt, height=resolution, width=resolution, num_inference_steps=steps, generator=generator,
                    output_type=output_type).images[0]

    # --- LoRA files ----------------------------------------------------------------------------
    def kohya_tensors(self, denoiser_state: dict, te_states: list[dict], alpha: float, model,
                      rank: int | None = None) -> dict[str, torch.Tensor]:
        """The kohya-layout tensors of a LoRA (what ComfyUI, A1111/Forge and kohya load)."""
        raise NotImplementedError

    def save_diffusers_lora(self, folder: Path, layers: dict, te_layers: list[dict]) -> None:
        raise NotImplementedError


# --- shared by the UNet families (SD1.x, SDXL) ---------------------------------------------------

def tokens(tokenizer, prompts, device, max_length=None):
    return tokenizer(prompts, padding="max_length", truncation=True,
                     max_length=max_length or tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)


def ddpm_noise(comps, latents, gen, cfg):
    """DDPM training noise: noised latents, target (epsilon or velocity), timesteps, Min-SNR weight."""
    noise = torch.randn(latents.shape, generator=gen)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen)
    noise = to_device(noise, latents.device)
    T = comps.scheduler.config.num_train_timesteps
    timesteps = to_device(torch.randint(0, T, (latents.shape[0],), generator=gen), latents.device)
    noisy = comps.scheduler.add_noise(latents, noise, timesteps)
    v_pred = comps.scheduler.config.prediction_type == "v_prediction"
    target = comps.scheduler.get_velocity(latents, noise, timesteps) if v_pred else noise
    weight = None
    if cfg.snr_gamma > 0:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(comps.scheduler, timesteps)
        weight = torch.clamp(snr, max=cfg.snr_gamma) / (snr + 1 if v_pred else snr)
    return noisy, target, timesteps, weight


def logit_normal_sigmas(batch: int, gen, shift: float) -> torch.Tensor:
    """Flow-matching noise levels in (0, 1): logit-normal draws (SD3/FLUX training) shifted
    toward noise by ``shift`` (``shift * u / (1 + (shift - 1) * u)``; 1: unshifted)."""
    u = torch.sigmoid(torch.randn(batch, generator=gen))
    return shift * u / (1 + (shift - 1) * u)


def ddpm_scheduler():
    diffusers = require("diffusers", "Building a model from config")
    return diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   num_train_timesteps=1000, clip_sample=False, steps_offset=1)


def clip_config(shape: dict):
    transformers = require("transformers", "Building a model from config")
    return transformers.CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **shape)


def peft_pairs(state: dict[str, torch.Tensor]) -> dict[str, list]:
    """{module path: [lora_A (down), lora_B (up)]} of peft LoRA tensors."""
    from ..keys.kohya import PEFT_KEY

    pairs: dict[str, list] = {}
    for key, tensor in state.items():
        m = PEFT_KEY.match(key)
        if m:
            pairs.setdefault(m.group(1), [None, None])[0 if m.group(2) == "A" else 1] = tensor.detach()
    return pairs
