"""FLUX.2 dev: FLUX.2's transformer at full size (8 double- and 48 single-stream blocks, 32 B
parameters) with a guidance embedding, conditioned on three hidden layers of Mistral Small 3.1
(24 B); everything else is FLUX.2 klein's (``..flux2``): the 32-channel VAE and its
batch-norm statistics, 2x2 packing with 4-axis positions, flow matching with FLUX.2's
resolution-dependent shift, BFL's key layout for files and LoRAs.

What dev reads differently, as its samplers read it (ComfyUI's ``Flux2Tokenizer`` and
``Mistral3_24BModel``; diffusers' ``Flux2Pipeline``):

- the caption inside Mistral's system and user turns (``TEMPLATE``), after ``<s>``;
  tokenized by Mistral's own tekken vocabulary, from the ComfyUI file that carries it, a
  diffusers folder's ``tokenizer/``, or a folder named by ``PERSONA_MISTRAL_TOKENIZER``;
- hidden states 10, 20 and 30 (the inputs of those layers), stacked per token
  (``[B, L, 3 x 5120]``);
- the caption's tokens are placed last and the sequence filled with zeros in front up to
  ``llm_max_length`` (512), which is what ComfyUI's FLUX.2 model feeds its transformer
  (diffusers' pipeline fills the same place with the pad token's states instead);
- the transformer embeds a guidance value (``guidance``, 1.0 while training, FLUX.1's
  convention; sampled at 4.0, the pipeline's default) and there is no negative prompt.
"""
from __future__ import annotations

import torch

from ....core.deps import require
from ..flux2 import Flux2

SYSTEM = ("You are an AI that reasons about image descriptions. You give structured responses focusing on object "
          "relationships, object\nattribution and actions without speculation.")
TEMPLATE = "[SYSTEM_PROMPT]" + SYSTEM + "[/SYSTEM_PROMPT][INST]{}[/INST]"
HIDDEN_LAYERS = (10, 20, 30)  # the Mistral hidden states dev reads, stacked per token
SAMPLING_GUIDANCE = 4.0  # Flux2Pipeline's default guidance


def text_layers(text_encoder) -> int:
    config = text_encoder.config
    return getattr(config, "text_config", config).num_hidden_layers


class Flux2Dev(Flux2):
    name = "flux2_dev"
    title = "FLUX.2 dev"
    companion_files = "llm (mistral_3_small_flux2_bf16.safetensors or _fp8) and vae (flux2-vae.safetensors)"
    architecture = "flux-2-dev"
    kohya_version = "flux2_dev"
    pipeline_class = "Flux2Pipeline"
    text_encoder_class = "Mistral3ForConditionalGeneration"  # a diffusers folder's; ComfyUI's file: MistralModel
    text_config_class = "Mistral3Config"
    text_arch = "mistral3"

    @property
    def pipeline_index(self) -> tuple[str, dict]:
        name, parts = super().pipeline_index
        return name, {**parts, "tokenizer": ["transformers", "PreTrainedTokenizerFast"]}

    def published_size(self, path):
        from .files import published_size

        return published_size(path)

    # --- tokenizer ---------------------------------------------------------------------------
    def write_tokenizers(self, folder, real: bool = False) -> None:
        """For random weights a small tekken vocabulary; for real files the tokenizer comes
        with the text encoder (:meth:`file_tokenizer`) or from ``PERSONA_MISTRAL_TOKENIZER``."""
        import os

        from ...mistral_tokenizer import TOKENIZER_ENV, write_mistral_tokenizer

        if not real:
            write_mistral_tokenizer(folder / "tokenizer")
        elif os.environ.get(TOKENIZER_ENV):
            write_mistral_tokenizer(folder / "tokenizer", source=os.environ[TOKENIZER_ENV])

    def load_tokenizers(self, folder):
        from ...mistral_tokenizer import load_mistral_tokenizer

        return load_mistral_tokenizer(folder / "tokenizer"), None

    def file_tokenizer(self, config, llm):
        """Mistral's tokenizer for ComfyUI's separate files: the tekken vocabulary inside the
        text encoder file (ComfyUI's own files carry it), converted once into the cache."""
        import hashlib

        from ....core.paths import cache_root
        from ...mistral_tokenizer import TOKENIZER_ENV, load_mistral_tokenizer, tekken_in_file, \
            write_mistral_tokenizer

        tekken = tekken_in_file(llm)
        if tekken is None:
            if (config / "tokenizer" / "tokenizer.json").is_file():
                return load_mistral_tokenizer(config / "tokenizer")
            raise ValueError(f"llm: '{llm}' carries no Mistral tokenizer ('tekken_model', which ComfyUI's Mistral "
                             f"files hold); set {TOKENIZER_ENV} to a folder with tekken.json or tokenizer.json")
        folder = cache_root() / "tokenizers" / f"mistral-{hashlib.sha256(tekken).hexdigest()[:16]}"
        if not folder.is_dir():  # written beside it, then renamed: a cut-off conversion is never reused
            import shutil

            unfinished = folder.with_name(folder.name + ".partial")
            shutil.rmtree(unfinished, ignore_errors=True)
            write_mistral_tokenizer(unfinished, tekken=tekken)
            unfinished.replace(folder)
        return load_mistral_tokenizer(folder)

    # --- captions ------------------------------------------------------------------------------
    def encode(self, comps, prompts, device, cfg=None):
        """``encoder_hidden_states`` ``[B, L, 3 x width]``: hidden states 10, 20 and 30 of the
        caption's tokens, last, zeros in front up to ``L`` = ``llm_max_length``."""
        return self.read_captions(comps, prompts, device, cfg.llm_max_length if cfg is not None else 512)

    @staticmethod
    def read_captions(comps, prompts, device, max_length: int) -> dict[str, torch.Tensor]:
        tok = comps.tokenizer
        rows = [[tok.bos_token_id, *tok(TEMPLATE.format(p), add_special_tokens=False).input_ids][:max_length]
                for p in prompts]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, r in enumerate(rows):  # left-padded, as ComfyUI's tokenizer pads
            ids[i, longest - len(r):] = torch.tensor(r)
            mask[i, longest - len(r):] = 1
        layers = text_layers(comps.text_encoder)
        if layers < max(HIDDEN_LAYERS):
            raise ValueError(f"llm: FLUX.2 dev reads hidden states {HIDDEN_LAYERS} of its text encoder; this one has "
                             f"{layers} layers")
        ids, mask = ids.to(device), mask.to(device)
        # positions count from the caption's first token, as when it is read alone
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        states = comps.text_encoder(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    output_hidden_states=True, use_cache=False).hidden_states
        out = torch.cat([states[k] for k in HIDDEN_LAYERS], dim=-1) * mask[..., None].to(states[0].dtype)
        if longest < max_length:
            out = torch.nn.functional.pad(out, (0, 0, max_length - longest, 0))
        return {"encoder_hidden_states": out}

    # --- sampling -------------------------------------------------------------------------------
    def sample(self, pipe, comps, prompt, resolution, steps, generator, output_type="pil", cond=None,
               guidance=None):
        """dev's guidance is embedded: one pass per step, no negative prompt."""
        cond, device, dtype = self.sampling_inputs(comps, prompt, pipe.device, cond, False)
        return pipe(prompt_embeds=cond["encoder_hidden_states"][None].to(device, dtype),
                    guidance_scale=SAMPLING_GUIDANCE if guidance is None else guidance, height=resolution,
                    width=resolution, num_inference_steps=steps, generator=generator,
                    output_type=output_type).images[0]

    def generate(self, pipe, prompt, negative, height, width, steps, cfg, generator, output_type="np", **start):
        """``cfg`` is the embedded guidance (dev has no negative prompt; ``negative`` is not read);
        ``start`` as for klein (:meth:`Flux2.img2img`)."""
        return pipe(prompt=prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=cfg,
                    generator=generator, output_type=output_type, **start).images[0]

    def pipeline(self, comps):
        diffusers = require("diffusers", "Sampling")
        pipe = diffusers.Flux2Pipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(comps.scheduler.config),
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, transformer=comps.denoiser)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_diffusers_lora(self, folder, layers, te_layers):
        from diffusers import Flux2Pipeline

        Flux2Pipeline.save_lora_weights(folder, transformer_lora_layers=layers, safe_serialization=True)
