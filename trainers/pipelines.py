"""Sampling pipelines of each family built from the components being trained (class images
for prior preservation, validation grids). FLUX samples from cached prompt embeddings, so
its text encoders need not be loaded."""
from __future__ import annotations

import torch


def build_pipeline(comps):
    import diffusers

    if comps.family == "flux":
        pipe = diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler.from_config(comps.scheduler.config),
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
            text_encoder_2=comps.text_encoder_2, tokenizer_2=comps.tokenizer_2, transformer=comps.unet)
    elif comps.family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=comps.vae, text_encoder=comps.text_encoder, text_encoder_2=comps.text_encoder_2,
            tokenizer=comps.tokenizer, tokenizer_2=comps.tokenizer_2, unet=comps.unet,
            scheduler=diffusers.DDIMScheduler.from_config(comps.scheduler.config))
    else:
        pipe = diffusers.StableDiffusionPipeline(
            vae=comps.vae, text_encoder=comps.text_encoder, tokenizer=comps.tokenizer, unet=comps.unet,
            scheduler=diffusers.DDIMScheduler.from_config(comps.scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, comps, prompt: str, resolution: int, steps: int, generator, output_type: str = "pil",
           cond: dict[str, torch.Tensor] | None = None, guidance: float | None = None):
    """One image of ``prompt`` (FLUX: from ``cond``, its cached conditioning)."""
    common = dict(height=resolution, width=resolution, num_inference_steps=steps, generator=generator,
                  output_type=output_type)
    if comps.family == "flux":
        if cond is None:
            raise ValueError(f"FLUX samples from cached prompt embeddings; none for '{prompt}'")
        device = next(comps.unet.parameters()).device
        dtype = next(p for p in comps.unet.parameters() if p.is_floating_point() and p.dtype.itemsize > 1).dtype
        return pipe(prompt_embeds=cond["encoder_hidden_states"][None].to(device, dtype),
                    pooled_prompt_embeds=cond["pooled_projections"][None].to(device, dtype),
                    guidance_scale=3.5 if guidance is None else guidance, **common).images[0]
    return pipe(prompt, **common).images[0]
