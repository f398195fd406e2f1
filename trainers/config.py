"""TrainConfig: the one config of a training run, shared by the node, the CLI and tests.

Every check that does not need a model runs here, before any model loads, and names the
field. Presets hold the regimes of the DreamBooth reproduction study (reference 002) and
the LoRA settings of the FLUX/LoRA study (reference 001).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ..core.config import JobConfig, divisible_by_8
from ..models.families import FAMILIES, get_family

FamilyName = Literal[tuple(FAMILIES)]  # every registered family
log = logging.getLogger(__name__)


class TrainConfig(JobConfig):
    version: Literal[1] = Field(1, description="Config format version.")
    # what
    base_model: str = Field(..., min_length=1, description="Base model: a diffusers folder, or a single-file .safetensors checkpoint (FLUX, Z-Image, FLUX.2: the transformer file from models/diffusion_models).")
    family: FamilyName = Field("sd15", description="Model family: sd15 (Stable Diffusion 1.x), sdxl, flux (FLUX.1 dev/schnell), z_image (Z-Image Base/Turbo), flux2 (FLUX.2 klein 4B/9B), flux2_dev (FLUX.2 dev) or qwen_image (Qwen-Image); one module each in models/families.")
    clip_l: str = Field("", description="FLUX single files: the CLIP-L text encoder file (models/text_encoders or models/clip).")
    t5: str = Field("", description="FLUX single files: the T5-XXL text encoder file.")
    training_adapter: str = Field("", description="A LoRA merged into the frozen base for the run and never exported: a de-distillation adapter to train on a distilled model (Z-Image Turbo) without undoing its few-step sampling. diffusers layer names (lora_A/lora_B or lora_down/lora_up).")
    llm: str = Field("", description="Z-Image, FLUX.2 and Qwen-Image single files: the LLM text encoder file in models/text_encoders (qwen_3_4b.safetensors; FLUX.2 klein 9B: qwen_3_8b.safetensors; FLUX.2 dev: mistral_3_small_flux2_bf16.safetensors or _fp8, which carries its tokenizer; Qwen-Image: qwen_2.5_vl_7b.safetensors).")
    vae: str = Field("", description="FLUX, Z-Image, FLUX.2 and Qwen-Image single files: the VAE file (ae.safetensors; FLUX.2: flux2-vae.safetensors; Qwen-Image: qwen_image_vae.safetensors).")
    dataset: str = Field(..., min_length=1, description="Dataset folder (from persona prepare, or images + .txt captions).")
    output_dir: str = Field("runs/train", min_length=1, description="Run directory: config, log, checkpoints, samples, final LoRA.")
    method: Literal["lora", "dreambooth"] = Field(
        "lora", description="'lora': LoRA adapters on the UNet (optionally the text encoder); "
                            "'dreambooth': full fine-tune of the UNet (optionally the text encoder).")
    token: str = Field("sks", min_length=1, description="Rare identifier token of the subject.")
    class_noun: str = Field("person", min_length=1, description="Class noun of the subject.")
    caption_source: Literal["dataset", "instance_prompt"] = Field(
        "dataset", description="Train on each image's caption, or on instance_prompt for every image.")
    instance_prompt: str = Field("a photo of {token} {class}", description="Prompt for every image when caption_source is instance_prompt.")
    caption_dropout: float = Field(0.0, ge=0.0, le=1.0, description="Probability that an image trains on its class caption "
                                                                   "(or none, see caption_dropout_to) at a step: the LoRA "
                                                                   "stays promptable beyond the captions (0.05-0.1 is usual).")
    caption_dropout_to: Literal["class", "empty"] = Field("class", description="What a dropped caption becomes: the class "
                                                                             "prompt, or the empty caption.")
    image_weights: dict[str, float] = Field(default_factory=dict, description="Per-image weight of the loss, by image "
                                                                            "file stem (a photo's stem also weighs its "
                                                                            "wider crops): e.g. 2.0 for the best "
                                                                            "likeness, 0.5 for a weaker photo; others 1.")
    shuffle_tags: bool = Field(False, description="Shuffle the comma-separated tags of each caption at every step, the "
                                                  "first tag (the subject's) kept first; captions are then encoded each step.")
    resolution: int = Field(512, ge=64, le=2048, description="Training resolution in px (divisible by 8).")
    aspect_buckets: bool = Field(True, description="Train images that are not square (wider crops, kohya folders) at "
                                                   "their nearest aspect-ratio bucket of about resolution^2 pixels "
                                                   "(SDXL's buckets at 1024), one bucket per batch; off: every image "
                                                   "is centre-cropped to a square.")
    # LoRA
    rank: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha (scale = alpha / rank).")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=list,
        description="Denoiser module names that get LoRA adapters (empty: the family's attention projections).")
    train_text_encoder: bool = Field(False, description="Also train LoRA adapters on the text encoder.")
    use_dora: bool = Field(False, description="DoRA (weight-decomposed LoRA): a trained magnitude per output row "
                                              "beside the low-rank direction; closer to full fine-tuning at the "
                                              "same rank, ~10-20% slower. Exported with kohya's dora_scale keys.")
    loraplus_lr_ratio: float = Field(1.0, ge=1.0, le=64.0, description="LoRA+: the B (up) matrices learn this many "
                                                                        "times faster than the A (down) matrices "
                                                                        "(1: off; 16 is the paper's value).")
    # optimisation
    steps: int = Field(800, ge=1, le=1_000_000, description="Optimizer steps.")
    batch_size: int = Field(1, ge=1, le=256, description="Images per micro-batch.")
    gradient_accumulation: int = Field(1, ge=1, le=1024, description="Micro-batches per optimizer step.")
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Learning rate of the UNet adapters.")
    text_encoder_lr: float = Field(5e-5, gt=0, le=1.0, description="Learning rate of the text-encoder adapters.")
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field("constant", description="Learning-rate schedule after warm-up.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up steps.")
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = Field("adamw", description="Optimizer.")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0: off).")
    seed: int = Field(0, ge=0, description="Seed of everything random (reproducible runs).")
    ema: bool = Field(False, description="Keep an exponential moving average of the trained weights; validation "
                                         "samples and the export use it (smoother, less overfit late in a run).")
    ema_decay: float = Field(0.995, gt=0.0, lt=1.0, description="EMA: shadow <- decay * shadow + (1 - decay) * "
                                                               "weights at each update (0.99-0.999 for runs of "
                                                               "hundreds to thousands of steps).")
    ema_every: int = Field(1, ge=1, le=10000, description="EMA: update the average every N optimizer steps.")
    ema_on_cpu: bool = Field(False, description="EMA: keep the average in CPU memory (no accelerator memory; "
                                                "slower updates, use with ema_every > 1).")
    ema_export: Literal["instead", "beside"] = Field(
        "instead", description="EMA: the exported LoRA/model holds the EMA weights ('instead'), or the raw weights "
                               "with the EMA ones beside them in lora_ema.safetensors / model_ema ('beside').")
    masked_loss: bool = Field(False, description="Face-weighted loss: the per-pixel loss weighted by the dataset's feathered "
                                                 "face masks (subject boxes for objects), at the latent resolution.")
    background_weight: float = Field(0.2, ge=0.0, le=1.0, description="masked_loss: the weight of pixels outside the "
                                                                       "face (1: an ordinary loss).")
    snr_gamma: float = Field(0.0, ge=0, description="Min-SNR loss weighting gamma (0: off; 5 is usual).")
    noise_offset: float = Field(0.0, ge=0, le=1.0, description="Noise offset (better very dark/bright images).")
    # flow-matching families (FLUX, Z-Image)
    guidance: float = Field(1.0, ge=0, le=30, description="FLUX-dev guidance embedding value during training.")
    timestep_shift: float = Field(0.0, ge=0, le=20, description="Flow-matching noise-level shift (0: the family's own: FLUX's and FLUX.2's resolution-dependent shifts, Z-Image's 3.0; 3.0 is SD3's).")
    t5_max_length: int = Field(512, ge=16, le=512, description="FLUX: T5 tokens per prompt.")
    llm_max_length: int = Field(512, ge=16, le=1024, description="Z-Image: the most LLM tokens a prompt is read at (chat template included; shorter prompts keep their own length). FLUX.2: the tokens every prompt is padded to (512 in its samplers; dev: zeros in front of the caption, as ComfyUI pads it). Qwen-Image: the most caption tokens after its chat template (masked padding).")
    # DreamBooth prior preservation
    prior_preservation: bool = Field(False, description="Prior-preservation loss with class images from the frozen base model.")
    class_prompt: str = Field("a photo of {class}", description="Prompt of the class images.")
    num_class_images: int = Field(100, ge=1, le=10000, description="Class images to generate (cached, reused across runs).")
    prior_loss_weight: float = Field(1.0, ge=0, description="Weight of the prior-preservation term.")
    class_images_steps: int = Field(30, ge=1, le=1000, description="Sampling steps of the class images.")
    cache_dir: str = Field("", description="Cache of class images (empty: <output_dir>/../.class_cache).")
    # identity loss (reference 000, Eq. 1-2)
    identity_loss_weight: float = Field(0.0, ge=0, description="Weight of the identity loss 1 - cos(f(x0_face), f(reference)) (0: off).")
    identity_every: int = Field(1, ge=1, description="Apply the identity loss every k steps.")
    identity_max_timestep: int = Field(400, ge=1, le=1000, description="Identity loss only at timesteps below this (low noise: x0 is a face).")
    identity_weights: Literal["vggface2", "random"] = Field(
        "vggface2", description="FaceNet weights of the identity loss; 'random' only exercises the code path (tests).")
    validation_identity: Literal["off", "dlib", "facenet"] = Field(
        "dlib", description="Embedder of the validation identity score against the dataset photos.")
    # memory techniques
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="Frozen weights and compute in fp16/bf16; trainable weights stay fp32.")
    gradient_checkpointing: bool = Field(False, description="Recompute UNet activations in backward (less memory, ~20% slower).")
    attention: Literal["sdpa", "sliced"] = Field("sdpa", description="Attention kernel: PyTorch SDPA, or sliced attention as fallback.")
    vae_slicing: bool = Field(True, description="Encode/decode one image at a time through the VAE.")
    vae_tiling: bool = Field(False, description="Encode/decode the VAE in tiles (large resolutions).")
    cache_latents: Literal["off", "memory", "disk"] = Field("memory", description="Encode the dataset once; the VAE leaves the device.")
    cache_text_embeddings: bool = Field(True, description="Encode captions once; the text encoder leaves the device (when not trained).")
    encode_on_cpu: list[Literal["vae", "text_encoder", "text_encoder_2"]] = Field(
        default_factory=list, description="Encoders that cache on the CPU (slower, no device memory): the memory "
                                          "plan names those that do not fit the budget (FLUX's T5-XXL at 8 GB).")
    grad_set_to_none: bool = Field(True, description="Free gradients between steps instead of zeroing them.")
    checkpoint_blocks: int = Field(0, ge=0, le=1000, description="Selective checkpointing: with gradient_checkpointing, "
                                   "recompute only the first N of the denoiser's repeated blocks (0: all of them).")
    fused_backward: bool = Field(False, description="Step the optimizer for each trained tensor inside the backward pass "
                                 "and free its gradient at once (no full set of gradients alive); max_grad_norm then "
                                 "clips each tensor's gradient by its own norm.")
    full_bf16: bool = Field(False, description="Keep the trained weights in bf16 (half the memory of fp32 master "
                            "weights) and apply each update with stochastic rounding; needs mixed_precision 'bf16'.")
    stream_blocks: int = Field(0, ge=0, le=1000, description="Keep the frozen weights of the last N of the denoiser's "
                               "repeated blocks in (pinned) CPU memory and stream each to the device one block ahead, "
                               "in the forward and the backward pass (0: off); with quantize_base 'fp8' the 8-bit "
                               "weights are streamed (half the host memory and transfer of bf16).")
    compile: Literal["off", "blocks"] = Field("off", description="'blocks': torch.compile each repeated block of the "
                                              "denoiser (regional compilation: short compile, cache reused across "
                                              "runs); falls back to eager with a log line where unsupported.")
    cuda_graphs: bool = Field(False, description="With compile 'blocks': capture the compiled blocks in CUDA graphs "
                              "(static shapes: cached latents and embeddings; gradient_accumulation 1; with gradient_checkpointing "
                              "only selective checkpoint_blocks); CUDA only, else a log line.")
    fused_optimizer: bool = Field(False, description="AdamW's single-kernel (fused) implementation; a log line where "
                                  "the device has none.")
    channels_last: bool = Field(False, description="Convolutional denoisers (UNets) in channels-last memory format.")
    quantize_base: Literal["off", "fp8", "int8", "nf4"] = Field(
        "off", description="Store the frozen denoiser's linear weights quantized (fp8: e4m3 with per-row scales; "
                           "int8/nf4: bitsandbytes); compute stays in the mixed-precision dtype.")
    memory: Literal["manual", "auto"] = Field(
        "auto", description="'auto' (the default): on a CUDA device the memory planner sets the memory switches "
                            "above to fit vram_budget_gb (0: the device's free memory) at the best predicted "
                            "speed; on the CPU with no budget the switches are used as set. 'manual': always "
                            "use them as given.")
    vram_budget_gb: float = Field(0.0, ge=0, le=1024, description="Accelerator memory budget of the planner in GB (0: the free memory of the device).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Training device.")
    tf32: bool = Field(True, description="Let fp32 matrix products and convolutions use TF32 on CUDA devices "
                                         "that have it (Ampere and newer): several times faster, about 1e-3 "
                                         "relative error per product; off: full fp32.")
    # responsible use
    require_consent: bool = Field(False, description="Refuse a dataset without a consent record (persona prepare --consent); "
                                                     "PERSONA_REQUIRE_CONSENT=1 makes this the rule of a shared server.")
    consent_in_metadata: bool = Field(False, description="Write the consent record's text into the LoRA metadata "
                                                         "(default: only its SHA-256).")
    # run directory
    checkpoint_every: int = Field(200, ge=0, description="Save a resumable checkpoint every N steps (0: only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept (oldest deleted).")
    validate_every: int = Field(0, ge=0, description="Sample validation images every N steps (0: off).")
    validation_prompts: list[str] = Field(default_factory=lambda: ["a photo of {token} {class}"],
                                          description="Fixed validation prompts.")
    validation_seeds: list[int] = Field(default_factory=lambda: [0], description="Fixed validation seeds.")
    validation_steps: int = Field(20, ge=1, le=500, description="Sampling steps of validation images.")
    log_every: int = Field(1, ge=1, description="Write a log.jsonl line every N steps (and the first and last); the "
                           "loss is read from the device only then, so the steps between run without a host sync.")

    _resolution = field_validator("resolution")(classmethod(lambda cls, v: divisible_by_8(v)))

    @model_validator(mode="after")
    def _consistent(self):
        if "{token}" not in self.instance_prompt:
            raise ValueError("instance_prompt: must contain {token}")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps: {self.warmup_steps} is more than steps ({self.steps})")
        fam = get_family(self.family)
        if self.method == "dreambooth" and not fam.supports_dreambooth:
            raise ValueError(f"method: full DreamBooth is not offered for family '{self.family}'; use "
                             f"method 'lora' (with prior_preservation for DreamBooth-LoRA)")
        if self.prior_preservation and not fam.supports_prior:
            raise ValueError(f"prior_preservation: not offered for family '{self.family}'")
        if self.identity_loss_weight > 0 and not fam.supports_identity_loss:
            raise ValueError(f"identity_loss_weight: the identity loss is not offered for family '{self.family}'")
        if self.shuffle_tags and not fam.keeps_text_encoders:
            raise ValueError(f"shuffle_tags: family '{self.family}' encodes each caption once and then drops its "
                             f"text encoders; shuffled captions would need them at every step")
        if self.method != "lora" and (self.use_dora or self.loraplus_lr_ratio != 1.0):
            raise ValueError("use_dora/loraplus_lr_ratio: adapter variants need method 'lora'")
        if self.use_dora and not fam.supports_dora:
            raise ValueError(f"use_dora: DoRA is not offered for family '{self.family}' (its fused LoRA layers "
                             f"have no DoRA form ComfyUI reads); use a plain LoRA")
        if self.use_dora and self.quantize_base == "fp8":
            raise ValueError("use_dora: DoRA reads the base weight, which quantize_base 'fp8' stores as scaled "
                             "rows; use quantize_base 'int8', 'nf4' or 'off'")
        if self.train_text_encoder and not fam.supports_text_encoder_training:
            raise ValueError(f"train_text_encoder: text encoders are cached, not trained, for family '{self.family}'")
        if self.identity_loss_weight > 0 and "vae" in self.encode_on_cpu:
            raise ValueError("encode_on_cpu: the identity loss decodes with the VAE on the device while training; "
                             "keep 'vae' off this list or set identity_loss_weight 0")
        if self.full_bf16 and self.mixed_precision != "bf16":
            raise ValueError("full_bf16: bf16 trained weights need mixed_precision 'bf16'")
        if self.fused_backward and self.mixed_precision == "fp16":
            raise ValueError("fused_backward: fp16 needs a loss scaler, which unscales all gradients before one "
                             "step; use mixed_precision 'bf16' or 'no'")
        if self.cuda_graphs and self.compile == "off":
            raise ValueError("cuda_graphs: the graphs capture the compiled blocks; set compile 'blocks'")
        if self.cuda_graphs and (self.gradient_accumulation > 1 or not self.grad_set_to_none):
            # a gradient made by a captured backward lives in the graphs' memory pool, which the
            # next forward pass (the next micro-step, or sampling) takes back
            raise ValueError("cuda_graphs: gradients made inside CUDA graphs cannot be kept past the step that "
                             "made them; use gradient_accumulation 1 and grad_set_to_none true (or a larger "
                             "batch_size instead of accumulation), or cuda_graphs false")
        if self.checkpoint_blocks and not self.gradient_checkpointing:
            raise ValueError("checkpoint_blocks: selects which blocks gradient checkpointing recomputes; set "
                             "gradient_checkpointing true (or checkpoint_blocks 0)")
        if self.stream_blocks and (self.method != "lora" or self.use_dora):
            raise ValueError("stream_blocks: only frozen weights are streamed: it needs method 'lora' without "
                             "use_dora (DoRA reads the base weight outside the streamed layers)")
        if self.stream_blocks and self.quantize_base not in ("off", "fp8"):
            raise ValueError(f"stream_blocks: full-precision and fp8 weights are streamed, not bitsandbytes' "
                             f"'{self.quantize_base}' layers; use quantize_base 'off' or 'fp8', or stream_blocks 0")
        bad = {k: v for k, v in self.image_weights.items() if not (0.0 <= v <= 100.0)}
        if bad:
            raise ValueError(f"image_weights: weights must be between 0 and 100, got {bad}")
        fam.check_config(self)
        return self

    @property
    def caches_captions(self) -> bool:
        """Whether every caption is encoded once and its embeddings cached: the text encoders
        are neither trained nor asked to read reshuffled tags at each step."""
        return self.cache_text_embeddings and not self.train_text_encoder and not self.shuffle_tags

    @property
    def lora_targets(self) -> list[str]:
        return list(self.target_modules) or list(get_family(self.family).lora_targets)

    def fill(self, text: str) -> str:
        return text.replace("{token}", self.token).replace("{class}", self.class_noun)

    def class_cache_dir(self) -> Path:
        """Where class images are cached (shared by every run beside this one)."""
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir).parent / ".class_cache"

    def check_paths(self) -> None:
        """Checks that need the file system, still before any model loads."""
        from ..faces.dataset import read_dataset

        model = Path(self.base_model)
        if not model.exists():
            raise self.field_error("base_model", f"'{model}' does not exist")
        for name in ("base_model", "clip_l", "t5", "llm", "vae", "training_adapter"):
            value = getattr(self, name)
            if value and Path(value).suffix.lower() == ".gguf":
                raise self.field_error(name, f"'{Path(value).name}' is a GGUF file (block-quantized for sampling with "
                                             f"ComfyUI-GGUF): its weights cannot be trained through. Use the same "
                                             f"model's .safetensors in bf16, fp16 or fp8 (models/diffusion_models, "
                                             f"models/text_encoders, models/vae); quantize_base fp8 or nf4 keeps the "
                                             f"frozen base as small while training")
        if model.is_file() and model.suffix.lower() != ".safetensors":
            raise self.field_error("base_model", f"'{model}' is not a .safetensors checkpoint or a diffusers folder")
        for name in ("clip_l", "t5", "llm", "vae", "training_adapter"):
            value = getattr(self, name)
            if value and not Path(value).is_file():
                raise self.field_error(name, f"'{value}' is not a file")
        if self.training_adapter and Path(self.training_adapter).suffix.lower() != ".safetensors":
            raise self.field_error("training_adapter", f"'{Path(self.training_adapter).name}' is not a .safetensors "
                                                       f"file (pickled files can run code when loaded)")
        get_family(self.family).check_files(self)
        if model.is_dir() and not (model / "model_index.json").is_file() and not (model / "unet").is_dir():
            raise self.field_error("base_model", f"'{model}' is not a diffusers model folder (no model_index.json)")
        try:
            items = read_dataset(self.dataset)
        except (FileNotFoundError, ValueError) as exc:
            raise self.field_error("dataset", str(exc)) from None
        if not items:
            raise self.field_error("dataset", f"'{self.dataset}' holds no accepted image")
        stems = {it.image.stem for it in items}
        unknown = sorted(k for k in self.image_weights if k not in stems)
        if unknown:
            raise self.field_error("image_weights", f"no image of dataset '{self.dataset}' has the stem "
                                                    f"{', '.join(map(repr, unknown[:5]))}")
        self.check_consent()

    def dataset_consent(self) -> dict | None:
        from ..faces.dataset import read_manifest

        return (read_manifest(self.dataset) or {}).get("consent")

    def check_consent(self) -> None:
        """A dataset without a consent record: a warning, or (required) a refusal."""
        from ..faces.consent import REQUIRE_ENV, consent_required

        if self.dataset_consent():
            return
        text = (f"dataset '{self.dataset}' has no consent record of its subject; record it with "
                f"persona prepare --consent consent.yaml (or the Build Dataset node's consent_file)")
        if consent_required(self.require_consent):
            raise self.field_error("require_consent", text + f" (required by "
                                   f"{'require_consent' if self.require_consent else REQUIRE_ENV})")
        log.warning("%s", text)


# Regimes of reference 002 (DreamBooth reproduction) and the LoRA settings of reference 001.
PRESETS: dict[str, dict] = {
    "balanced": dict(learning_rate=1e-4, steps=800, rank=16, alpha=16, prior_preservation=True,
                     prior_loss_weight=1.0, lr_scheduler="constant"),
    "identity-strong": dict(learning_rate=2e-4, steps=1200, rank=32, alpha=32, prior_preservation=True,
                            prior_loss_weight=0.5, lr_scheduler="constant", masked_loss=True,
                            background_weight=0.3),
    "prompt-strong": dict(learning_rate=5e-5, steps=400, rank=8, alpha=8, prior_preservation=True,
                          prior_loss_weight=1.0, lr_scheduler="cosine", warmup_steps=40),
    "underfit": dict(learning_rate=1e-5, steps=200, rank=8, alpha=8),
    "overfit": dict(learning_rate=5e-4, steps=2000, rank=32, alpha=32, prior_preservation=False),
    "lora-paper-default": dict(learning_rate=1e-4, rank=16, alpha=16, steps=1000, lr_scheduler="cosine"),
}


def with_preset(base: dict, preset: str | None, overrides: dict | None = None) -> dict:
    """Config fields: ``base`` (a file, node widgets), then the preset's fields over it, then
    ``overrides`` (``--set``) over both. ``preset`` None or 'custom' adds nothing."""
    fields = dict(base)
    if preset and preset != "custom":
        if preset not in PRESETS:
            raise TrainConfig.field_error("preset", f"unknown '{preset}', one of {', '.join(sorted(PRESETS))}")
        fields.update(PRESETS[preset])
    fields.update(overrides or {})
    return fields
