"""What the families whose captions an LLM reads share (Z-Image and FLUX.2 klein: Qwen3;
Qwen-Image: Qwen2.5-VL; FLUX.2 dev, through klein's module: Mistral Small 3.1): a transformer,
a VAE and the LLM in a diffusers folder or as ComfyUI's separate files (``llm``, ``vae``), the
LLM's tokenizer from local files (Qwen's here; dev reads Mistral's from its ``llm`` file through
:meth:`QwenCaptionedFamily.file_tokenizer`), and the classes that build them. A family names
its diffusers and transformers classes and reads its own separate files; prompt encoding, the
objective, sampling and the LoRA layout stay in the family's module."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from ...core.deps import require
from ..components import Components, file_hash, file_random_weights, folder_random_weights, model_hash, \
    require_diffusers_folder
from .base import Family


class QwenCaptionedFamily(Family):
    denoiser_folder = "transformer"
    supports_text_encoder_training = False
    uses_attention_processors = False
    keeps_text_encoders = False
    separate_files = ("llm", "vae")
    single_files_as_stored = True  # built on the meta device, the files' tensors assigned
    convolutional = False
    generation_dtype = "bfloat16"
    pipeline_class = ""  # diffusers' class names
    transformer_class = ""
    vae_class = "AutoencoderKL"
    text_encoder_class = "Qwen3Model"  # transformers' class names, and the architecture table's key
    text_config_class = "Qwen3Config"
    text_arch = "qwen3"
    title = ""  # how messages name the family
    companion_files = ""  # what a single transformer file needs beside it (the check_files message)

    @property
    def pipeline_index(self) -> tuple[str, dict]:
        return (self.pipeline_class, {
            "transformer": ["diffusers", self.transformer_class], "vae": ["diffusers", self.vae_class],
            "text_encoder": ["transformers", self.text_encoder_class], "tokenizer": ["transformers", "Qwen2Tokenizer"],
            "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]})

    def _classes(self, why: str):
        diffusers = require("diffusers", why)
        transformers = require("transformers", why)
        return getattr(diffusers, self.transformer_class), getattr(diffusers, self.vae_class), transformers

    def load_separate_files(self, path: Path, config: Path, llm, vae):
        """(the transformer's loader, text encoder, VAE) from ComfyUI's separate files: the
        ``load_separate_files`` of the ``files`` module in the family's folder."""
        from importlib import import_module

        return import_module(f"{type(self).__module__}.files").load_separate_files(path, config, llm, vae,
                                                                                   self.text_quantize_skip)

    # --- loading ---------------------------------------------------------------------------
    def load_folder(self, folder: Path) -> Components:
        transformer_cls, vae_cls, transformers = self._classes(f"Training {self.title}")
        diffusers = require("diffusers", f"Training {self.title}")
        require_diffusers_folder(folder, "transformer", self.name)
        tok, _ = self.load_tokenizers(folder)
        return Components(
            self.name, tok, getattr(transformers, self.text_encoder_class).from_pretrained(folder / "text_encoder"),
            vae_cls.from_pretrained(folder / "vae"), None,
            diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler"),
            str(folder), model_hash(folder), folder_random_weights(folder),
            denoiser_loader=partial(transformer_cls.from_pretrained, folder / "transformer"))

    def load_single_file(self, path: Path, config_dir=None, llm="", vae="", **files) -> Components:
        diffusers = require("diffusers", f"Training {self.title}")
        from ..single_file import family_config_dir

        config = Path(config_dir) if config_dir else family_config_dir(self, real=True)
        transformer, text_encoder, vae_model = self.load_separate_files(path, config, llm, vae)
        tok = self.file_tokenizer(config, llm)
        return Components(
            self.name, tok, text_encoder, vae_model, None,
            diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(config / "scheduler"), str(path),
            file_hash(path), file_random_weights(path), denoiser_loader=transformer)

    def write_tokenizers(self, folder: Path, real: bool = False) -> None:
        """Qwen's tokenizer found on disk (``real``: ComfyUI's or the user's), or for random
        weights a byte-level stand-in with Qwen's special tokens."""
        from ..tokenizers import find_qwen_tokenizer, write_qwen_tokenizer

        if real and (folder / "tokenizer" / "vocab.json").is_file():
            return
        write_qwen_tokenizer(folder / "tokenizer", find_qwen_tokenizer() if real else None)

    def load_tokenizers(self, folder: Path):
        transformers = require("transformers", f"Training {self.title}")
        return transformers.Qwen2Tokenizer.from_pretrained(folder / "tokenizer"), None

    def check_files(self, cfg) -> None:
        if Path(cfg.base_model).is_file() and not (cfg.llm and cfg.vae):
            raise cfg.field_error("base_model", f"a single {self.title} transformer file needs its text encoder and "
                                  f"VAE too: set {self.companion_files}")

    def file_tokenizer(self, config: Path, llm):
        """The tokenizer for ComfyUI's separate files: the config folder's (Qwen's, found on
        disk); a family whose text encoder file carries its own reads it from ``llm``."""
        return self.load_tokenizers(config)[0]

    # --- building -------------------------------------------------------------------------
    def build_modules(self, arch: dict, text_encoders: bool = True):
        transformer_cls, vae_cls, transformers = self._classes("Building a model from config")
        te = None
        if text_encoders:
            te = getattr(transformers, self.text_encoder_class)(
                getattr(transformers, self.text_config_class)(**arch[self.text_arch]))
        return transformer_cls(**arch["transformer"]), vae_cls(**arch["vae"]), te, None

    def modules_from_configs(self, folder: Path):
        transformer_cls, vae_cls, transformers = self._classes("Planning memory")
        denoiser = transformer_cls.from_config(transformer_cls.load_config(folder / "transformer"))
        vae = vae_cls.from_config(vae_cls.load_config(folder / "vae"))
        te = getattr(transformers, self.text_encoder_class)(
            getattr(transformers, self.text_config_class).from_pretrained(folder / "text_encoder"))
        return denoiser, vae, te, None

    # --- sampling -------------------------------------------------------------------------
    def sampling_inputs(self, comps, prompt: str, device, cond: dict | None, cfg: bool):
        """(the prompt's conditioning, the denoiser's device and compute dtype) for sampling:
        ``cond`` when the caller has it cached, else the prompt encoded now; refused with the
        reason once the text encoder is dropped and the prompt (or CFG's negative) needs it."""
        import torch

        if (cond is None or cfg) and comps.text_encoder is None:
            raise ValueError(f"{self.title} samples from cached prompt embeddings once its text encoder is dropped"
                             f"{' (and CFG needs it for the negative prompt)' if cfg else ''}; none for '{prompt}'")
        if cond is None:
            with torch.no_grad():
                cond = {k: v[0] for k, v in self.encode(comps, [prompt], device).items()}
        weight = next(p for p in comps.denoiser.parameters() if p.is_floating_point() and p.dtype.itemsize > 1)
        return cond, weight.device, weight.dtype  # (an fp8 base's compute dtype is its unquantized layers')

    def pipeline(self, comps):
        diffusers = require("diffusers", "Sampling")
        pipe = getattr(diffusers, self.pipeline_class)(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(comps.scheduler.config),
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, transformer=comps.denoiser)
        pipe.set_progress_bar_config(disable=True)
        return pipe
