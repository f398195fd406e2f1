"""The memory of prior preservation's class-image phase, and where its models run.

With ``prior_preservation`` the frozen base samples the class images before the latents and
captions are cached (``trainers/loop/prior.py``): the denoiser, the VAE and the text encoders
at the run's compute precision (cast on the CPU before they move; a text encoder read from
ComfyUI's separate fp8 file keeps its fp8 matrices, as in the caching phase), one prediction at a
classifier-free-guidance batch of 2, then one VAE decode, without gradients. Measured on the
``meta`` device at the model's own size in bf16 (a denoiser that trains whole, DreamBooth,
keeps its fp32 weights and samples under autocast): SD1.5 @512 2.4 GiB; SDXL @1024 8.0 GiB, 6.4
with both text encoders on the CPU; FLUX.1 @1024 32.9 GiB, 24.1 with T5-XXL on the CPU (its
transformer alone is 22.2 GiB).

:func:`plan_class_images` keeps the phase within the usable budget, trying in turn: every
model on the device; the text encoders on the CPU (the largest first: they encode one prompt);
where the run quantizes the frozen base to fp8 anyway (``quantize_base: fp8``), the denoiser
quantized before it samples (training then uses it as it is; a run without a plan does this
whenever it quantizes so); last, the fewest of the denoiser's repeated blocks streamed from
CPU memory (as ``stream_blocks`` streams them while training; the streamer is closed before
training sets up its own). A text encoder the phase puts on the CPU joins ``encode_on_cpu``, so it encodes the
captions there too. A phase that none of these fits is refused with its figure by the planner:
prior preservation off, or a larger GPU.
"""
from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

_MiB = 2 ** 20
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def class_images_bytes(cfg, base_model: str | None, size: str, text_on_cpu: tuple[str, ...] = (),
                       quantize: str = "off", stream_blocks: int = 0) -> int:
    """Peak bytes of sampling one class image of ``cfg`` on a GPU (the phase's models placed
    and cast, the last ``stream_blocks`` of the denoiser's blocks streamed from CPU memory, one
    guided prediction, one decode): a ``meta``-device run with the live-tensor meter. The
    prompt's encoding (a few MiB) is left out. A text encoder on the device that is read from a
    separate file counts as the device holds it, where that is less than at the compute
    precision (its fp8 matrices stay fp8: ``host_memory.text_weight_bytes``)."""
    from ...models.families import get_family
    from .blocks import stream_last
    from .caching import module_bytes
    from .host_memory import text_weight_bytes
    from .quantize import quantize_linears
    from .simulate import FusedAttentionOnMeta, LiveTensorMeter, MetaAutocast, architecture, sample_once
    from .techniques import freeze, place_frozen, weight_dtype

    fam = get_family(cfg.family)
    dtype = weight_dtype(cfg.mixed_precision, torch.device("cuda"))
    comps = copy.deepcopy(architecture(cfg.family, base_model, size))
    with torch.inference_mode(False), torch.no_grad():
        freeze(comps.denoiser)
        if quantize != "off":
            quantize_linears(comps.denoiser, quantize, dtype, skip=fam.quantize_skip)
        encoders = [comps.vae] + [getattr(comps, n) for n in TEXT_ENCODERS if getattr(comps, n, None) is not None
                                  and n not in text_on_cpu]
        place_frozen(encoders, "meta", dtype)
        # a denoiser that trains whole (DreamBooth) keeps its load precision (fp32): its weights are
        # what the run trains and exports, so they are never rounded for sampling
        place_frozen([comps.denoiser], "meta", dtype if cfg.method == "lora" else torch.float32)
        modules = [comps.denoiser, *encoders]
        streamer = stream_last(fam.repeated_blocks(comps.denoiser), stream_blocks, "meta", comps.denoiser)
        meter = LiveTensorMeter()  # streamed weights are placeholders now: their host copies are not counted
        for m in modules:
            meter.add_module(m)
        meter.reset_peak()
        shape = fam.latent_shape(comps, cfg.resolution)
        autocast = MetaAutocast(dtype) if dtype != torch.float32 else nullcontext()
        with meter, FusedAttentionOnMeta(), autocast:
            sample_once(comps, cfg, fam, torch.device("meta"), dtype, shape)
        if streamer is not None:
            streamer.close()
        stored = text_weight_bytes(cfg)  # a text encoder's weights are live throughout the phase
        unheld = sum(max(0, module_bytes(getattr(comps, n), dtype) - stored[n]) for n in TEXT_ENCODERS
                     if n in stored and getattr(comps, n, None) is not None and n not in text_on_cpu)
        return meter.peak - unheld


def plan_class_images(cfg, base_model: str | None, size: str, usable_mb: float, calibrate) -> dict:
    """Where the class-image phase of ``cfg`` (its switches set) runs, and its predicted peak:
    ``{"peak_mb", "text_on_cpu": [...], "quantize": "off" | "fp8", "stream_blocks": n, "fits"}``
    (``calibrate``: simulated MiB -> predicted MiB on the target)."""
    from .caching import run_encoder_memory
    from .simulate import architecture

    from ...models.families import get_family

    fam = get_family(cfg.family)
    weights = run_encoder_memory(cfg, base_model, size)
    largest_first = sorted((n for n in TEXT_ENCODERS if n in weights), key=lambda n: -weights[n][0])

    def attempt(on_cpu, quantize="off", stream=0):
        peak = calibrate(class_images_bytes(cfg, base_model, size, tuple(on_cpu), quantize, stream) / _MiB)
        return {"peak_mb": round(peak, 1), "text_on_cpu": list(on_cpu), "quantize": quantize,
                "stream_blocks": stream, "fits": peak <= usable_mb}

    tried = None
    for quantize in ["off"] + (["fp8"] if cfg.quantize_base == "fp8" else []):
        for k in range(len(largest_first) + 1):
            tried = attempt(largest_first[:k], quantize)
            if tried["fits"]:
                return tried
    # the fewest streamed blocks that fit (the peak falls as more blocks stream), encoders on the CPU
    blocks = len(fam.repeated_blocks(architecture(cfg.family, base_model, size).denoiser))
    most = attempt(largest_first, "off", blocks)
    if not most["fits"]:
        return min(tried, most, key=lambda t: t["peak_mb"])
    lo, hi = 0, blocks  # lo does not fit, hi does
    found = most
    while hi - lo > 1:
        mid = (lo + hi) // 2
        t = attempt(largest_first, "off", mid)
        if t["fits"]:
            hi, found = mid, t
        else:
            lo = mid
    return found
